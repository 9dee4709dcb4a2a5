"""C backend: arrays are NumPy arrays; each compiled model is generated C (cffi).

Runtime contract (documented for users):

- Inputs must match the compiled shapes and the backend dtype exactly (checked in
  Python before any C runs). Non-contiguous or misaligned arrays are copied to a
  contiguous array first; contiguous ones are passed to C without copying.
- Outputs and gradients are fresh NumPy arrays (copies out of the model's workspace,
  which is allocated once per compiled model and reused by every call). A compiled
  model is therefore not re-entrant: do not evaluate one from several threads at once.
- Missing output gradients count as zeros.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mithril_core.backends.base import Backend, Evaluator, Program
from mithril_core.dtypes import Dtype
from mithril_core.errors import CompileError, DtypeError

_DTYPE_NAMES = {
    np.dtype(name): name
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64")
    + ("uint8", "bool")
}
_REAL = {"float32": "float", "float64": "double"}


class CBackend(Backend):
    """Runs compiled models as generated C (cffi, OpenBLAS) on the CPU.

    :param dtype: ``float32`` or ``float64``: the element type of every tensor the
        compiled C touches.
    :param extra_cflags: additional compiler flags (e.g. sanitizers); part of the cache
        key. ``extra_ldflags`` likewise for the link.
    """

    name = "c"
    has_autograd = False
    supports_jit = False
    supported_dtypes = frozenset(
        {"float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
    )

    def __init__(
        self,
        device: str = "cpu",
        dtype: Dtype | str = "float32",
        *,
        extra_cflags: tuple[str, ...] = (),
        extra_ldflags: tuple[str, ...] = (),
    ) -> None:
        if device != "cpu":
            msg = f"CBackend runs on 'cpu' only, not {device!r}."
            raise CompileError(msg)
        super().__init__(device=device, dtype=dtype)
        if self.dtype.name not in _REAL:
            msg = (
                f"CBackend computes in float32 or float64, not {self.dtype.name!r}; "
                "pass dtype=ml.float32 or ml.float64."
            )
            raise DtypeError(msg)
        self.extra_cflags = tuple(extra_cflags)
        self.extra_ldflags = tuple(extra_ldflags)

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
        if isinstance(value, np.ndarray):
            dtype = value.dtype
            name = _DTYPE_NAMES.get(dtype)
            return value.shape, name if name is not None else dtype.name
        return None

    def build_program(
        self,
        graph: Any,
        lowerings: Mapping[str, Any],
        *,
        grad_keys: tuple[str, ...],
        differentiable_outputs: tuple[str, ...],
        inference: bool,
        file_path: str | None,
    ) -> Program:
        from mithril_c._build import build
        from mithril_c._codegen import generate
        from mithril_c._runtime import Runtime

        real = _REAL[self.dtype.name]
        plan = generate(
            graph,
            dict(lowerings),
            real=real,
            grad_keys=grad_keys,
            differentiable_outputs=differentiable_outputs,
            inference=inference,
        )
        if file_path is not None:
            _write(file_path, plan.source)
        module, _ = build(
            plan.source,
            real=real,
            functions=plan.functions,
            extra_cflags=self.extra_cflags,
            extra_ldflags=self.extra_ldflags,
        )
        runtime = Runtime(module, plan, np.dtype(self.dtype.name))
        return Program(
            forward=runtime.forward,
            forward_backward=None if inference else runtime.forward_backward,
            input_keys=tuple(graph.inputs),
            output_keys=tuple(graph.outputs),
            grad_keys=grad_keys,
            differentiable_outputs=differentiable_outputs,
            source=plan.source,
        )

    def build_evaluator(self, program: Program, *, jit: bool) -> Evaluator:
        forward = program.forward
        forward_backward = program.forward_backward

        def evaluate(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
            if output_gradients is None:
                return forward(inputs), None
            if forward_backward is None:
                msg = (
                    "This model was compiled with inference=True: it has no gradients."
                )
                raise ValueError(msg)
            return forward_backward(inputs, output_gradients)

        return evaluate


def _write(file_path: str, source: str) -> None:
    import os

    directory = os.path.dirname(os.path.abspath(file_path))
    os.makedirs(directory, exist_ok=True)
    with open(file_path, "w", encoding="utf-8") as handle:
        handle.write(source)


__all__ = ["CBackend"]
