from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from mithril_core.dtypes import Dtype, as_dtype

JAX_DTYPES: dict[str, Any] = {
    "float16": jnp.float16,
    "bfloat16": jnp.bfloat16,
    "float32": jnp.float32,
    "float64": jnp.float64,
    "int8": jnp.int8,
    "int16": jnp.int16,
    "int32": jnp.int32,
    "int64": jnp.int64,
    "uint8": jnp.uint8,
    "bool": jnp.bool_,
}


def jax_dtype(dtype: Dtype | str) -> Any:
    return JAX_DTYPES[as_dtype(dtype).name]
