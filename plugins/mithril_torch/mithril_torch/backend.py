"""PyTorch backend: arrays are ``torch.Tensor``; gradients come from ``torch.autograd``.

torch is imported on construction, not when this module is imported, so listing backends
stays cheap.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mithril_core.backends.base import Backend, Evaluator, Program
from mithril_core.dtypes import ALL_DTYPES, Dtype
from mithril_core.errors import CompileError

if TYPE_CHECKING:
    import torch
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Placement

Forward = Callable[[Mapping[str, Any]], dict[str, Any]]
# One mesh-axis name (or None: not split) per dim of a tensor.
ShardingSpec = Sequence[str | None]


class TorchBackend(Backend):
    """Runs compiled models with PyTorch on the CPU or a CUDA device.

    :param device: ``"cpu"``, ``"cuda"`` or ``"cuda:<index>"``.
    :param dtype: Default float dtype of the arrays this backend creates.
    :param allow_tf32: On CUDA, let float32 convolutions and matrix products use
        TF32 tensor cores (faster, ~1e-3 relative error). Off by default: a call runs
        with ``torch.backends.cudnn.allow_tf32`` and
        ``torch.backends.cuda.matmul.allow_tf32`` off (cuDNN's default is on: a
        float32 ResNet-18 came out 4e-3 off float64 on an H200, measured), and
        restores them after.

    ``jit=True`` compiles the generated forward with ``torch.compile``; if torch cannot
    compile it, a ``RuntimeWarning`` names the reason and the model runs eagerly.

    **Distributed.** ``device_mesh=(n,)`` (or ``(d0, d1)`` with ``mesh_axis_names``,
    default ``("data",)`` / ``("data", "model")``) builds a
    :class:`torch.distributed.device_mesh.DeviceMesh` over the processes of the default
    process group (started by ``torchrun`` or
    :func:`mithril_torch.distributed.run_parallel`; gloo on the CPU, nccl on CUDA with
    one GPU per process, ``cuda:LOCAL_RANK``). Every array the backend creates is then
    a :class:`torch.distributed.tensor.DTensor`: replicated, or split as ``sharding``
    (one mesh-axis name or ``None`` per dim) says. Models run eagerly on DTensors
    (``jit`` is ignored) and are differentiated by torch autograd on DTensors; see
    :mod:`mithril_torch.distributed`.
    """

    name = "torch"
    has_autograd = True
    supports_jit = True
    supported_dtypes = frozenset(ALL_DTYPES)
    devices = ("cpu", "cuda")

    supports_sharding = True

    def __init__(
        self,
        device: str = "cpu",
        dtype: Dtype | str = "float32",
        *,
        device_mesh: Sequence[int] | None = None,
        mesh_axis_names: Sequence[str] | None = None,
        allow_tf32: bool = False,
    ) -> None:
        import torch

        self.allow_tf32 = allow_tf32
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
        self._mesh: DeviceMesh | None = None
        if device_mesh is not None:
            from mithril_torch.distributed import make_device_mesh

            self._mesh, torch_device = make_device_mesh(
                torch_device, device_mesh, mesh_axis_names
            )
        elif mesh_axis_names is not None:
            msg = "TorchBackend: mesh_axis_names needs a device_mesh."
            raise CompileError(msg)
        super().__init__(device=str(torch_device), dtype=dtype)
        self._torch_device = torch_device
        from mithril_torch._dtypes import dtype_name

        self._tensor_type = torch.Tensor
        self._dtype_name = dtype_name

    @property
    def mesh(self) -> DeviceMesh | None:
        """The :class:`~torch.distributed.device_mesh.DeviceMesh`, or ``None``."""
        return self._mesh

    @property
    def device_mesh(self) -> tuple[int, ...] | None:
        """Shape of the device mesh, or ``None`` without one."""
        return None if self._mesh is None else tuple(self._mesh.shape)

    @property
    def mesh_axis_names(self) -> tuple[str, ...] | None:
        """Names of the mesh axes, or ``None`` without a mesh."""
        if self._mesh is None:
            return None
        return tuple(self._mesh.mesh_dim_names or ())

    def __repr__(self) -> str:
        if self._mesh is None:
            return super().__repr__()
        return (
            f"{type(self).__name__}(device={self.device!r}, dtype={self.dtype!r}, "
            f"device_mesh={self.device_mesh}, mesh_axis_names={self.mesh_axis_names})"
        )

    def placements(self, spec: ShardingSpec | None) -> tuple[Placement, ...]:
        """DTensor placements (one per mesh axis) of ``spec`` (one mesh-axis name or
        ``None`` per tensor dim; ``None`` or ``()`` replicates)."""
        from mithril_torch.distributed import placements

        if self._mesh is None:
            msg = (
                "TorchBackend: this backend has no device mesh; create it with "
                "TorchBackend(device_mesh=(n,)) to shard tensors."
            )
            raise CompileError(msg)
        return placements(self._mesh, spec)

    # -- array API ---------------------------------------------------------------------
    def array(
        self,
        data: Any,
        dtype: Dtype | str | None = None,
        *,
        sharding: ShardingSpec | None = None,
    ) -> torch.Tensor:
        """As :meth:`Backend.array`; with a device mesh a DTensor, replicated or split
        as ``sharding`` says, e.g. ``("data", None)``. Every rank must pass the same
        full ``data`` (nothing is broadcast): each keeps its own slice."""
        import torch

        from mithril_torch._dtypes import torch_dtype

        if sharding is not None and self._mesh is None:
            self.placements(sharding)  # raises: no mesh
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
        tensor = tensor.to(device=self._torch_device, dtype=target)
        if self._mesh is None:
            return tensor
        from mithril_torch.distributed import as_dtensor

        return as_dtensor(tensor, self._mesh, self.placements(sharding))

    def to_numpy(self, array: Any) -> np.ndarray:
        import torch

        if not isinstance(array, torch.Tensor):
            return np.asarray(array)
        tensor = array.detach()
        if self._mesh is not None:
            from torch.distributed.tensor import DTensor

            if isinstance(tensor, DTensor):  # a collective: every rank must call it
                tensor = tensor.full_tensor()
        tensor = tensor.cpu()
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.to(torch.float32)
        return tensor.numpy()

    def array_info(self, value: Any) -> tuple[tuple[int, ...], str] | None:
        # evaluate calls this for every input on every call: no imports here.
        if isinstance(value, self._tensor_type):
            return tuple(value.shape), self._dtype_name(value.dtype)
        return None

    def index_range(self, array: Any) -> tuple[int, int]:
        import torch

        low, high = torch.aminmax(array)
        return int(low), int(high)

    # -- compile-time API --------------------------------------------------------------
    def build_evaluator(self, program: Program, *, jit: bool) -> Evaluator:
        import torch

        if program.shardings and self._mesh is None:
            msg = (
                f"compile(shardings=...) needs a TorchBackend with a device mesh, e.g. "
                f"TorchBackend(device_mesh=(n,)); got {self!r}."
            )
            raise CompileError(msg)
        if self._mesh is not None:
            from mithril_torch.distributed import build_distributed_evaluator

            return build_distributed_evaluator(program, self._mesh)
        forward: Forward = _CompiledForward(program.forward) if jit else program.forward
        grad_keys = program.grad_keys
        tensor = torch.Tensor

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
                and isinstance(outputs[key], tensor)
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
            detached = {
                key: value.detach() if isinstance(value, tensor) else value
                for key, value in outputs.items()
            }
            return detached, gradients

        if self._torch_device.type != "cuda" or self.allow_tf32:
            return evaluate

        def evaluate_without_tf32(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
            with _NO_TF32:
                return evaluate(inputs, output_gradients)

        return evaluate_without_tf32


class _NoTF32:
    """Turns torch's process-wide TF32 switches off while any call is inside, and
    back to what they were when the last one leaves (calls may overlap in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._saved: tuple[bool, bool] = (False, False)

    def __enter__(self) -> None:
        import torch

        with self._lock:
            if self._inside == 0:
                cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
                self._saved = (cudnn.allow_tf32, matmul.allow_tf32)
                cudnn.allow_tf32 = matmul.allow_tf32 = False
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        import torch

        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                torch.backends.cudnn.allow_tf32 = self._saved[0]
                torch.backends.cuda.matmul.allow_tf32 = self._saved[1]


_NO_TF32 = _NoTF32()


class _CompiledForward:
    """``torch.compile``-d forward; warns and runs eagerly if torch cannot compile."""

    def __init__(self, forward: Forward) -> None:
        import torch
        from torch._dynamo.exc import TorchDynamoException

        self._eager = forward
        self._compiled: Forward | None = torch.compile(forward)
        self._failure = TorchDynamoException

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        if self._compiled is None:
            return self._eager(inputs)
        try:
            return self._compiled(inputs)
        except self._failure as exc:
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
