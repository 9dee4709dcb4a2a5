"""MLX backend: arrays are ``mlx.core.array``; gradients come from ``mx.vjp``.

mlx is imported on construction, not when this module is imported, so listing backends
stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mithril_core.backends.base import Backend, Evaluator, Program
from mithril_core.dtypes import ALL_DTYPES, Dtype
from mithril_core.errors import CompileError, DtypeError

if TYPE_CHECKING:
    import mlx.core as mx

Outputs = dict[str, Any]
Gradients = dict[str, Any]


class MlxBackend(Backend):
    """Runs compiled models with MLX: on the CPU (Linux, ``mlx[cpu]``) or Metal (macOS).

    :param device: ``"cpu"`` or ``"gpu"`` (Metal).
    :param dtype: Default float dtype of the arrays this backend creates.

    float64 exists on the CPU only (Metal has no float64); MLX computes transcendental
    functions (exp, erf, sin ...) of float64 arrays to about float32 accuracy (relative
    error ~1e-7). Integer matrix products are not supported by MLX. ``jit=True`` wraps
    the whole evaluation, gradients included, in ``mx.compile``. Outputs are evaluated
    (``mx.eval``) before they are returned. ``evaluate`` checks index inputs
    (embedding ids, class targets) before dispatch; an index computed inside the
    model that is out of range gives NaN, never another row (MLX kernels do not
    check indices).
    """

    name = "mlx"
    has_autograd = True
    supports_jit = True
    supported_dtypes = frozenset(ALL_DTYPES)
    devices = ("cpu", "gpu")

    def __init__(self, device: str = "cpu", dtype: Dtype | str = "float32") -> None:
        import mlx.core as mx

        if device not in self.devices:
            supported = ", ".join(self.devices)
            msg = f"MlxBackend supports devices {supported}, not {device!r}."
            raise CompileError(msg)
        mx_device = mx.gpu if device == "gpu" else mx.cpu
        if not mx.is_available(mx_device):
            msg = (
                f"MlxBackend(device={device!r}): MLX has no {device} here (Metal needs "
                f"macOS on Apple silicon); use device='cpu'."
            )
            raise CompileError(msg)
        self._device = device  # _check_dtype needs it: float64 depends on the device
        super().__init__(device=device, dtype=dtype)
        self._mx_device = mx_device
        from mithril_mlx._dtypes import dtype_name

        self._array_type = mx.array
        self._dtype_name = dtype_name

    def _check_dtype(self, dtype: Dtype | str | None) -> Dtype:
        resolved = super()._check_dtype(dtype)
        if resolved.name == "float64" and self._device != "cpu":
            msg = (
                f"MlxBackend(device={self._device!r}) does not support float64: MLX "
                f"computes float64 on the CPU only. Use device='cpu' or float32."
            )
            raise DtypeError(msg)
        return resolved

    # -- array API ---------------------------------------------------------------------
    def array(self, data: Any, dtype: Dtype | str | None = None) -> mx.array:
        import mlx.core as mx

        from mithril_mlx._dtypes import mlx_dtype

        if isinstance(data, mx.array):
            kind = _kind(data.dtype)
        else:
            data = np.array(data)
            if data.dtype.name == "bfloat16":  # ml_dtypes, e.g. from a JAX array
                data = data.astype(np.float32)
            kinds = {"f": "float", "b": "bool", "i": "int", "u": "int"}
            kind = kinds.get(data.dtype.kind, "other")
        if dtype is not None:
            target = mlx_dtype(self._check_dtype(dtype))
        elif kind == "float":
            target = mlx_dtype(self.dtype)
        elif kind == "bool":
            target = mx.bool_
        elif kind == "int":
            target = mx.int64
        else:
            msg = f"MlxBackend.array: unsupported data of dtype {data.dtype}."
            raise TypeError(msg)
        if isinstance(data, mx.array):
            return data.astype(target)
        return mx.array(data, dtype=target)

    def to_numpy(self, array: Any) -> np.ndarray:
        import mlx.core as mx

        if not isinstance(array, mx.array):
            return np.asarray(array)
        if array.dtype == mx.bfloat16:  # NumPy has no bfloat16
            array = array.astype(mx.float32)
        return np.array(array)

    def array_info(self, value: Any) -> tuple[tuple[int, ...], str] | None:
        # evaluate calls this for every input on every call: no imports here.
        if isinstance(value, self._array_type):
            return tuple(value.shape), self._dtype_name(value.dtype)
        return None

    def index_range(self, array: Any) -> tuple[int, int]:
        # Unified memory: a NumPy view reduces in ~2 us, mx.min/mx.max take ~20.
        values = np.asarray(array)
        return int(values.min()), int(values.max())

    # -- compile-time API --------------------------------------------------------------
    def build_evaluator(self, program: Program, *, jit: bool) -> Evaluator:
        import mlx.core as mx

        forward = program.forward
        grad_keys = program.grad_keys

        def forward_backward(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
        ) -> tuple[Outputs, Gradients]:
            keys = [key for key in grad_keys if _is_float(inputs[key])]
            rest = {key: value for key, value in inputs.items() if key not in keys}
            chosen = [key for key, cot in output_gradients.items() if cot is not None]
            outputs: Outputs = {}

            def differentiable(*leaves: mx.array) -> list[Any]:
                # mx.vjp has no auxiliary outputs: keep every output of this one trace.
                outputs.update(
                    forward({**rest, **dict(zip(keys, leaves, strict=True))})
                )
                # An int/bool output gets a constant stand-in, so it passes no gradient.
                return [
                    outputs[key]
                    if _is_float(outputs[key])
                    else mx.zeros_like(output_gradients[key])
                    for key in chosen
                ]

            found: list[Any] = []
            if keys and chosen:
                _, found = mx.vjp(
                    differentiable,
                    [inputs[key] for key in keys],
                    [output_gradients[key] for key in chosen],
                )
            else:
                outputs.update(forward(inputs))
            by_key = dict(zip(keys, found, strict=False))
            gradients = {
                key: by_key[key] if key in by_key else mx.zeros_like(inputs[key])
                for key in grad_keys
            }
            return outputs, gradients

        run_forward: Callable[..., Any] = mx.compile(forward) if jit else forward
        run_forward_backward: Callable[..., Any] = (
            mx.compile(forward_backward) if jit else forward_backward
        )
        device = self._mx_device

        def evaluate(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
        ) -> tuple[Outputs, Gradients | None]:
            if type(inputs) is not dict:  # mx.compile takes dicts, not Mappings
                inputs = dict(inputs)
            with mx.stream(device):
                if output_gradients is None:
                    outputs = run_forward(inputs)
                    mx.eval(_arrays(outputs, mx.array))
                    return outputs, None
                outputs, gradients = run_forward_backward(
                    inputs, dict(output_gradients)
                )
                mx.eval(_arrays(outputs, mx.array), _arrays(gradients, mx.array))
            return outputs, gradients

        return evaluate


def _kind(dtype: Any) -> str:
    import mlx.core as mx

    if dtype == mx.bool_:
        return "bool"
    if mx.issubdtype(dtype, mx.floating):
        return "float"
    return "int" if mx.issubdtype(dtype, mx.integer) else "other"


def _is_float(value: Any) -> bool:
    import mlx.core as mx

    return isinstance(value, mx.array) and _kind(value.dtype) == "float"


def _arrays(values: Mapping[str, Any], array: type) -> list[Any]:
    found: list[Any] = []
    for value in values.values():
        if isinstance(value, array):
            found.append(value)
        elif isinstance(value, list | tuple):
            found.extend(item for item in value if isinstance(item, array))
    return found
