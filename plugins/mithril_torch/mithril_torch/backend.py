"""PyTorch backend: arrays are ``torch.Tensor``; gradients come from ``torch.autograd``.

torch is imported on construction, not when this module is imported, so listing backends
stays cheap.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mithril_core.backends.base import Backend, Evaluator, Program
from mithril_core.dtypes import ALL_DTYPES, Dtype
from mithril_core.errors import CompileError

if TYPE_CHECKING:
    import torch

Forward = Callable[[Mapping[str, Any]], dict[str, Any]]


class TorchBackend(Backend):
    """Runs compiled models with PyTorch on the CPU or a CUDA device.

    :param device: ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
    :param dtype: Default float dtype of the arrays this backend creates.

    ``jit=True`` compiles the generated forward with ``torch.compile``; if torch cannot
    compile it, a ``RuntimeWarning`` names the reason and the model runs eagerly.
    """

    name = "torch"
    has_autograd = True
    supports_jit = True
    supported_dtypes = frozenset(ALL_DTYPES)
    devices = ("cpu", "cuda")

    def __init__(self, device: str = "cpu", dtype: Dtype | str = "float32") -> None:
        import torch

        supported = f"TorchBackend supports devices cpu, cuda[:index], not {device!r}."
        try:
            torch_device = torch.device(device)
        except RuntimeError as exc:
            raise CompileError(supported) from exc
        if torch_device.type not in self.devices:
            raise CompileError(supported)
        if torch_device.type == "cuda" and not torch.cuda.is_available():
            msg = (
                f"TorchBackend(device={device!r}): CUDA is not available in this torch "
                f"build ({torch.__version__}); use device='cpu' or a CUDA build."
            )
            raise CompileError(msg)
        super().__init__(device=str(torch_device), dtype=dtype)
        self._torch_device = torch_device

    # -- array API ---------------------------------------------------------------------
    def array(self, data: Any, dtype: Dtype | str | None = None) -> torch.Tensor:
        import torch

        from mithril_torch._dtypes import torch_dtype

        if isinstance(data, torch.Tensor):
            tensor = data.detach().clone()
        else:
            values = np.array(data)
            if values.dtype.name == "bfloat16":  # ml_dtypes, e.g. from a JAX array
                values = values.astype(np.float32)
            tensor = torch.from_numpy(values)
        if dtype is not None:
            target = torch_dtype(self._check_dtype(dtype))
        elif tensor.is_floating_point():
            target = torch_dtype(self.dtype)
        elif tensor.dtype == torch.bool:
            target = torch.bool
        else:
            target = torch.int64
        return tensor.to(device=self._torch_device, dtype=target)

    def to_numpy(self, array: Any) -> np.ndarray:
        import torch

        if not isinstance(array, torch.Tensor):
            return np.asarray(array)
        tensor = array.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.to(torch.float32)
        return tensor.numpy()

    def array_info(self, value: Any) -> tuple[tuple[int, ...], str] | None:
        import torch

        from mithril_torch._dtypes import dtype_name

        if isinstance(value, torch.Tensor):
            return tuple(value.shape), dtype_name(value.dtype)
        return None

    # -- compile-time API --------------------------------------------------------------
    def build_evaluator(self, program: Program, *, jit: bool) -> Evaluator:
        import torch

        forward: Forward = _CompiledForward(program.forward) if jit else program.forward
        grad_keys = program.grad_keys

        def evaluate(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
            if output_gradients is None:
                return forward(inputs), None
            # Differentiate fresh leaves that share storage with the user's tensors, so
            # the caller's tensors keep their requires_grad flags.
            leaves = {
                key: inputs[key].detach().requires_grad_(True)
                for key in grad_keys
                if inputs[key].is_floating_point()
            }
            outputs = forward({**inputs, **leaves})
            pairs = [
                (outputs[key], _as_cotangent(cotangent, outputs[key]))
                for key, cotangent in output_gradients.items()
                if cotangent is not None
                and isinstance(outputs[key], torch.Tensor)
                and outputs[key].requires_grad
            ]
            found: tuple[torch.Tensor | None, ...] = ()
            if pairs and leaves:
                found = torch.autograd.grad(
                    [out for out, _ in pairs],
                    list(leaves.values()),
                    grad_outputs=[cot for _, cot in pairs],
                    allow_unused=True,
                )
            by_key = dict(zip(leaves, found, strict=False))
            gradients = {}
            for key in grad_keys:
                grad = by_key.get(key)
                gradients[key] = torch.zeros_like(inputs[key]) if grad is None else grad
            return _detached(outputs), gradients

        return evaluate


class _CompiledForward:
    """``torch.compile``-d forward; warns and runs eagerly if torch cannot compile."""

    def __init__(self, forward: Forward) -> None:
        import torch

        self._eager = forward
        self._compiled: Forward | None = torch.compile(forward)

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from torch._dynamo.exc import TorchDynamoException

        if self._compiled is None:
            return self._eager(inputs)
        try:
            return self._compiled(inputs)
        except TorchDynamoException as exc:
            # An error of the model itself raises here too, from eager code; only a
            # model that runs eagerly is a compile failure worth falling back from.
            outputs = self._eager(inputs)
            msg = (
                f"torch.compile could not compile the generated model "
                f"({_reason(exc)}); running it eagerly instead. "
                f"Compile with jit=False to silence this warning."
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            self._compiled = None
            return outputs


def _reason(exc: BaseException) -> str:
    # Dynamo's messages are a paragraph of facts, then advice about debug variables.
    paragraph = str(exc).strip().split("\n\n")[0]
    text = " ".join(line.strip() for line in paragraph.splitlines())
    return f"{type(exc).__name__}: {text[:500]}"


def _as_cotangent(cotangent: Any, output: torch.Tensor) -> torch.Tensor:
    import torch

    if isinstance(cotangent, torch.Tensor):
        return cotangent
    return torch.as_tensor(cotangent, dtype=output.dtype, device=output.device)


def _detached(outputs: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    return {
        key: value.detach() if isinstance(value, torch.Tensor) else value
        for key, value in outputs.items()
    }
