from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

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


# np.dtype(...).name builds a new string each time (microseconds); a lookup does not.
DTYPE_NAMES: dict[np.dtype[Any], str] = {
    np.dtype(dtype): name for name, dtype in JAX_DTYPES.items()
}


def dtype_name(dtype: np.dtype[Any]) -> str:
    name = DTYPE_NAMES.get(dtype)
    return name if name is not None else dtype.name


def jax_dtype(dtype: Dtype | str) -> Any:
    return JAX_DTYPES[as_dtype(dtype).name]
