"""NumPy backend: arrays are ``numpy.ndarray``; gradients come from generated VJP
code."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mithril_core.backends.base import Backend, Evaluator, Program
from mithril_core.dtypes import Dtype
from mithril_core.errors import CompileError

# dtype.name is slow (~3 us); evaluate checks every input on every call.
_DTYPE_NAMES = {
    np.dtype(name): name
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64")
    + ("uint8", "bool")
}


class NumpyBackend(Backend):
    """Runs compiled models with NumPy on the CPU."""

    name = "numpy"
    has_autograd = False
    supports_jit = False
    supported_dtypes = frozenset(
        {
            "float16",
            "float32",
            "float64",
            "int8",
            "int16",
            "int32",
            "int64",
            "uint8",
            "bool",
        }
    )

    def __init__(self, device: str = "cpu", dtype: Dtype | str = "float32") -> None:
        if device != "cpu":
            msg = f"NumpyBackend runs on 'cpu' only, not {device!r}."
            raise CompileError(msg)
        super().__init__(device=device, dtype=dtype)

    def array(self, data: Any, dtype: Dtype | str | None = None) -> np.ndarray:
        if hasattr(data, "detach"):  # a torch tensor handed over directly
            data = data.detach().cpu().numpy()
        result = np.array(data)
        if dtype is not None:
            return result.astype(self._check_dtype(dtype).name)
        if result.dtype.kind == "f":
            return result.astype(self.dtype.name)
        if result.dtype.kind in "iu" and result.dtype != np.int64:
            return result.astype(np.int64)
        return result

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def array_info(self, value: Any) -> tuple[tuple[int, ...], str] | None:
        # NumPy returns scalars (np.float32 ...) from full reductions: they are 0-d.
        if isinstance(value, np.ndarray | np.generic):
            dtype = value.dtype
            name = _DTYPE_NAMES.get(dtype)
            return value.shape, name if name is not None else dtype.name
        return None

    def index_range(self, array: Any) -> tuple[int, int]:
        return int(array.min()), int(array.max())

    def build_evaluator(self, program: Program, *, jit: bool) -> Evaluator:
        forward = program.forward
        forward_backward = program.forward_backward

        def evaluate(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
            if output_gradients is None:
                return forward(inputs), None
            assert forward_backward is not None
            return forward_backward(inputs, output_gradients)

        return evaluate
