from __future__ import annotations

import mlx.core as mx

from mithril_core.dtypes import Dtype, as_dtype

MLX_DTYPES: dict[str, mx.Dtype] = {
    "float16": mx.float16,
    "bfloat16": mx.bfloat16,
    "float32": mx.float32,
    "float64": mx.float64,
    "int8": mx.int8,
    "int16": mx.int16,
    "int32": mx.int32,
    "int64": mx.int64,
    "uint8": mx.uint8,
    "bool": mx.bool_,
}


def mlx_dtype(dtype: Dtype | str) -> mx.Dtype:
    return MLX_DTYPES[as_dtype(dtype).name]


DTYPE_NAMES: dict[mx.Dtype, str] = {dtype: name for name, dtype in MLX_DTYPES.items()}


def dtype_name(dtype: mx.Dtype) -> str:
    name = DTYPE_NAMES.get(dtype)
    return name if name is not None else str(dtype).rsplit(".", 1)[-1]
