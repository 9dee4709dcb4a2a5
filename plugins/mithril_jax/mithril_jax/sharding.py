"""Device meshes and shardings of :class:`mithril_jax.backend.JaxBackend`.

A sharding spec gives one entry per dim of an array: a mesh-axis name (the dim is split
over that mesh axis), ``None`` (not split) or a tuple of names (split over several
axes). ``("data", None)`` splits the rows of a matrix over the ``"data"`` axis and keeps
every column; ``()`` or ``None`` replicates the array on every device of the mesh.

Inputs of a sharded evaluation are put on the mesh before the jitted function runs:
keys of ``compile(shardings=...)`` with their sharding, other arrays keep theirs if they
already live on the mesh and are replicated otherwise. XLA's GSPMD partitioner then
splits the computation by the inputs' shardings (inserting the all-reduces, e.g. of
the gradients of replicated parameters under data parallelism); outputs and gradients
of keys in ``shardings`` are pinned with ``jax.lax.with_sharding_constraint``, others
come back as XLA lays them out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mithril_core.backends.base import mesh_layout
from mithril_core.errors import CompileError

if TYPE_CHECKING:
    import jax
    from jax.sharding import Mesh, NamedSharding

__all__ = ["Layout", "make_mesh", "named_sharding"]

Spec = Sequence[str | tuple[str, ...] | None]


def make_mesh(
    devices: Sequence[jax.Device],
    shape: Sequence[int],
    axis_names: Sequence[str] | None,
    device: str = "cpu",
) -> Mesh:
    """A mesh of the first ``prod(shape)`` of ``devices``, laid out row-major."""
    from jax.sharding import Mesh

    dims, names = mesh_layout("JaxBackend", shape, axis_names)
    needed = math.prod(dims)
    if needed > len(devices):
        platform = device.partition(":")[0]
        hint = (
            " On the CPU, set XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{needed} before jax is imported to get {needed} host devices."
            if platform == "cpu"
            else ""
        )
        msg = (
            f"JaxBackend: device_mesh {dims} needs {needed} devices, but {platform!r} "
            f"has {len(devices)}.{hint}"
        )
        raise CompileError(msg)
    grid = np.empty(needed, dtype=object)
    for index, found in enumerate(devices[:needed]):
        grid[index] = found
    return Mesh(grid.reshape(dims), names)


def named_sharding(mesh: Mesh, spec: Spec | None) -> NamedSharding:
    """``NamedSharding(mesh, PartitionSpec(*spec))`` after checking the axis names."""
    from jax.sharding import NamedSharding, PartitionSpec

    entries = tuple(spec) if spec is not None else ()
    used: list[str] = []
    for entry in entries:
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        for name in names:
            if name not in mesh.axis_names:
                msg = (
                    f"sharding {entries}: unknown mesh axis {name!r}; the mesh has "
                    f"axes {tuple(mesh.axis_names)}."
                )
                raise CompileError(msg)
            if name in used:
                msg = f"sharding {entries}: mesh axis {name!r} splits two dims."
                raise CompileError(msg)
            used.append(name)
    return NamedSharding(mesh, PartitionSpec(*entries))


class Layout:
    """Where the inputs, outputs and gradients of one compiled model live."""

    def __init__(self, mesh: Mesh, shardings: Mapping[str, Spec]) -> None:
        self.mesh = mesh
        self.named = {
            key: named_sharding(mesh, spec) for key, spec in shardings.items()
        }
        self.replicated = named_sharding(mesh, None)
        self._devices = frozenset(mesh.devices.flat)

    def place(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Put every array of ``values`` on the mesh: keys with a sharding as it says,
        arrays already on the mesh as they are, the others replicated."""
        import jax

        placed: dict[str, Any] = {}
        for key, value in values.items():
            if not isinstance(value, jax.Array | np.ndarray | np.generic):
                placed[key] = value
                continue
            target = self.named.get(key)
            current = getattr(value, "sharding", None)
            if target is not None:
                if current != target:
                    value = jax.device_put(value, target)
            elif current is None or current.device_set != self._devices:
                value = jax.device_put(value, self.replicated)
            placed[key] = value
        return placed

    def constrain(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Pin the values of keys with a sharding to it (inside or outside jit)."""
        import jax

        return {
            key: (
                jax.lax.with_sharding_constraint(value, self.named[key])
                if key in self.named and isinstance(value, jax.Array)
                else value
            )
            for key, value in values.items()
        }
