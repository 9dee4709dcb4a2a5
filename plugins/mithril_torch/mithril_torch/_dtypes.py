from __future__ import annotations

import torch

from mithril_core.dtypes import Dtype, as_dtype

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def torch_dtype(dtype: Dtype | str) -> torch.dtype:
    return TORCH_DTYPES[as_dtype(dtype).name]


DTYPE_NAMES: dict[torch.dtype, str] = {
    dtype: name for name, dtype in TORCH_DTYPES.items()
}


def dtype_name(dtype: torch.dtype) -> str:
    name = DTYPE_NAMES.get(dtype)
    return name if name is not None else str(dtype).removeprefix("torch.")
