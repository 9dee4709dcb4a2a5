"""Distributed evaluation of :class:`mithril_torch.backend.TorchBackend` models:
``torch.distributed`` device meshes and DTensors.

``TorchBackend(device_mesh=(n,))`` needs a default process group of ``n`` processes:
launch the script with ``torchrun --nproc-per-node=n script.py`` (gloo on the CPU, nccl
with one GPU per process), or, on one machine, run a function on ``n`` spawned
processes with :func:`run_parallel`. Every process runs the same program (SPMD).

What a sharded evaluation does:

* Inputs become :class:`~torch.distributed.tensor.DTensor` s: keys of
  ``compile(shardings=...)`` are redistributed to their layout, other DTensors keep
  theirs, and plain tensors are taken as the full value, the same on every rank, and
  replicated (each rank keeps its own slice; nothing is broadcast).
* The generated code runs eagerly (``jit`` is ignored) on the DTensors, under
  ``implicit_replication`` so that constants of the model act as replicated. DTensor's
  sharding propagation picks each op's layout and inserts the collectives.
* Outputs are DTensors: in their ``shardings`` layout if given, else as computed with
  any pending reduction (``Partial``) resolved to ``Replicate``.
* Gradients come from torch autograd on DTensors and are DTensors with the layout of
  their input: the gradient of a replicated parameter is all-reduced (summed over the
  ranks, which is the gradient of the whole global batch, exactly as without
  sharding); that of a sharded parameter stays sharded. ``dtensor.to_local()`` is this
  rank's slice; ``dtensor.full_tensor()`` and ``backend.to_numpy(dtensor)`` gather the
  whole value (a collective: every rank must call them).

Data parallelism is ``shardings={"input": ("data", None), "target": ("data", None)}``
(parameters replicated); tensor parallelism shards the weights, e.g. a column- then
row-parallel MLP: ``{"linear_0_weight": ("model", None), "linear_0_bias": ("model",),
"linear_1_weight": (None, "model")}``. Both are tested with gloo on the CPU for
Linear/ReLU/elementwise/reduction models; ops without a DTensor sharding rule fail
with DTensor's own error.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mithril_core.backends.base import Evaluator, Program, mesh_layout
from mithril_core.errors import CompileError

if TYPE_CHECKING:
    import torch
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Placement

__all__ = [
    "as_dtensor",
    "build_distributed_evaluator",
    "free_port",
    "make_device_mesh",
    "placements",
    "run_parallel",
]

Spec = Sequence[str | tuple[str, ...] | None]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_parallel(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    backend: str = "gloo",
    timeout_s: float = 300.0,
) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` spawned local processes and return their
    results, ordered by rank.

    Each process gets ``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, ``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE`` and ``LOCAL_WORLD_SIZE`` (as ``torchrun`` sets them),
    joins the default process group (``backend``: ``"gloo"`` on CPU, ``"nccl"`` for one
    GPU per process) before ``fn`` runs and leaves it afterwards. Inside ``fn``,
    ``torch.distributed.get_rank()`` tells the rank and ``TorchBackend(device_mesh=
    (world_size,))`` uses the group.

    ``fn``, ``args`` and the results are pickled (the processes are spawned, not
    forked): ``fn`` must be a module-level function of an importable module, or of the
    ``__main__`` script guarded by ``if __name__ == "__main__":``. An exception in any
    process is raised here (``torch.multiprocessing.ProcessRaisedException``, with the
    remote traceback).
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        msg = f"run_parallel: world_size must be >= 1, got {world_size}."
        raise ValueError(msg)
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    port = free_port()
    processes = mp.start_processes(
        _worker,
        args=(fn, world_size, port, backend, timeout_s, results, args),
        nprocs=world_size,
        join=False,
        start_method="spawn",
    )
    by_rank: dict[int, Any] = {}
    done = False
    while not done:
        # Drain the results while waiting, so a large result cannot block its sender.
        done = processes.join(timeout=0.05)
        while not results.empty():
            rank, value = results.get()
            by_rank[rank] = value
    return [by_rank.get(rank) for rank in range(world_size)]


def _worker(
    rank: int,
    fn: Callable[..., Any],
    world_size: int,
    port: int,
    backend: str,
    timeout_s: float,
    results: Any,
    args: tuple[Any, ...],
) -> None:
    import datetime

    import torch.distributed as dist

    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
        }
    )
    if backend == "nccl":
        import torch

        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        value = fn(*args)
        results.put((rank, value))
        dist.barrier()
    finally:
        dist.destroy_process_group()


# -- meshes and placements ------------------------------------------------------------
def make_device_mesh(
    device: torch.device, shape: Sequence[int], axis_names: Sequence[str] | None
) -> tuple[DeviceMesh, torch.device]:
    """The device mesh of ``TorchBackend(device_mesh=shape)`` over the default process
    group (started here from ``torchrun``'s environment if needed), and this rank's
    device (``cuda:LOCAL_RANK`` on CUDA)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dims, names = mesh_layout("TorchBackend", shape, axis_names)
    if not dist.is_available():
        msg = (
            "TorchBackend(device_mesh=...): this torch build has no torch.distributed."
        )
        raise CompileError(msg)
    if not dist.is_initialized() and not {"RANK", "WORLD_SIZE"} <= set(os.environ):
        msg = (
            f"TorchBackend(device_mesh={dims}) needs {math.prod(dims)} processes in a "
            "torch.distributed process group: launch the script with `torchrun "
            f"--nproc-per-node={math.prod(dims)} script.py`, or run a function with "
            "mithril_torch.distributed.run_parallel(fn, world_size)."
        )
        raise CompileError(msg)
    world = (
        dist.get_world_size()
        if dist.is_initialized()
        else int(os.environ["WORLD_SIZE"])
    )
    if math.prod(dims) != world:
        msg = (
            f"TorchBackend: device_mesh {dims} has {math.prod(dims)} devices, but the "
            f"process group has {world} processes."
        )
        raise CompileError(msg)
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    mesh = init_device_mesh(device.type, dims, mesh_dim_names=names)
    return mesh, device


def placements(mesh: DeviceMesh, spec: Spec | None) -> tuple[Placement, ...]:
    """DTensor placements (one per mesh axis) of a sharding spec (one mesh-axis name,
    tuple of names or ``None`` per tensor dim)."""
    from torch.distributed.tensor import Replicate, Shard

    names = tuple(mesh.mesh_dim_names or ())
    result: list[Placement] = [Replicate() for _ in range(mesh.ndim)]
    entries = tuple(spec) if spec is not None else ()
    used: set[str] = set()
    for dim, entry in enumerate(entries):
        for name in (entry,) if isinstance(entry, str) else tuple(entry or ()):
            if name not in names:
                msg = (
                    f"sharding {entries}: unknown mesh axis {name!r}; the mesh has "
                    f"axes {names}."
                )
                raise CompileError(msg)
            if name in used:
                msg = f"sharding {entries}: mesh axis {name!r} splits two dims."
                raise CompileError(msg)
            used.add(name)
            result[names.index(name)] = Shard(dim)
    return tuple(result)


def as_dtensor(
    tensor: torch.Tensor, mesh: DeviceMesh, target: Sequence[Placement]
) -> torch.Tensor:
    """``tensor`` as a DTensor laid out as ``target``: a DTensor is redistributed (if
    its layout differs), a plain tensor is taken as the full value, the same on every
    rank, and this rank keeps its slice (no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    target = tuple(target)
    if isinstance(tensor, DTensor):
        if tuple(tensor.placements) != target:
            return tensor.redistribute(mesh, target)
        return tensor
    return distribute_tensor(tensor, mesh, target, src_data_rank=None)


# -- evaluation -----------------------------------------------------------------------
def build_distributed_evaluator(program: Program, mesh: DeviceMesh) -> Evaluator:
    """``evaluate(inputs, output_gradients)`` of ``program`` on DTensors over ``mesh``
    (see the module docstring)."""
    import torch
    from torch.distributed.tensor import DTensor, Replicate
    from torch.distributed.tensor.experimental import implicit_replication

    forward = program.forward
    grad_keys = program.grad_keys
    targets = {key: placements(mesh, spec) for key, spec in program.shardings.items()}
    replicated = placements(mesh, None)

    def place(inputs: Mapping[str, Any]) -> dict[str, Any]:
        placed: dict[str, Any] = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor):
                target = targets.get(key)
                if target is None:
                    target = (
                        value.placements if isinstance(value, DTensor) else replicated
                    )
                value = as_dtensor(value, mesh, target)
            placed[key] = value
        return placed

    def settle(outputs: Mapping[str, Any]) -> dict[str, Any]:
        settled: dict[str, Any] = {}
        for key, value in outputs.items():
            if isinstance(value, DTensor):
                target = targets.get(key) or tuple(
                    Replicate() if p.is_partial() else p for p in value.placements
                )
                value = as_dtensor(value, mesh, target)
            settled[key] = value
        return settled

    def evaluate(
        inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        inputs = place(inputs)
        with implicit_replication():
            if output_gradients is None:
                return _detached(settle(forward(inputs))), None
            leaves = {
                key: inputs[key].detach().requires_grad_(True)
                for key in grad_keys
                if inputs[key].is_floating_point()
            }
            outputs = settle(forward({**inputs, **leaves}))
            pairs = []
            for key, cotangent in output_gradients.items():
                output = outputs[key]
                if (
                    cotangent is None
                    or not isinstance(output, DTensor)
                    or not output.requires_grad
                ):
                    continue
                if not isinstance(cotangent, torch.Tensor):
                    cotangent = torch.as_tensor(
                        cotangent, dtype=output.dtype, device=output.to_local().device
                    )
                pairs.append((output, as_dtensor(cotangent, mesh, output.placements)))
            found: tuple[torch.Tensor | None, ...] = ()
            if pairs and leaves:
                found = torch.autograd.grad(
                    [out for out, _ in pairs],
                    list(leaves.values()),
                    grad_outputs=[cot for _, cot in pairs],
                    allow_unused=True,
                )
            by_key = dict(zip(leaves, found, strict=False))
            gradients: dict[str, Any] = {}
            for key in grad_keys:
                grad = by_key.get(key)
                value = inputs[key]
                if grad is None:
                    gradients[key] = torch.zeros_like(value)
                else:
                    # Partial (pending sum) -> the input's layout: the all-reduce of
                    # data parallelism, or a reduce-scatter for a sharded input.
                    gradients[key] = as_dtensor(grad, mesh, value.placements)
        return _detached(outputs), gradients

    return evaluate


def _detached(outputs: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    return {
        key: value.detach() if isinstance(value, torch.Tensor) else value
        for key, value in outputs.items()
    }
