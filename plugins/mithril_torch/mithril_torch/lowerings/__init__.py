"""PyTorch lowerings of every core primitive: the shared array-API forwards
(``array_api.lowerings`` over torch's NumPy-named adapter ``_xp``), overridden by the
family tables where torch's meaning differs, plus the ops the shared table lacks. A
name lowered by two family tables is refused."""

from __future__ import annotations

from mithril_core.backends import array_api
from mithril_core.primitives.lowering import Lowering, merge_lowerings
from mithril_torch.lowerings import (
    _xp,
    elementwise,
    linalg,
    loss,
    nn,
    reduction,
    shape,
)

SHARED: dict[str, Lowering] = array_api.lowerings(_xp)
FAMILIES = {
    module.__name__: module.LOWERINGS
    for module in (elementwise, reduction, shape, linalg, nn, loss)
}
# Shared forwards torch replaces (tests/backends/test_torch_shared_table.py keeps this
# list honest, so no family table shadows a shared forward by accident).
OVERRIDES = frozenset(
    {"floor_divide", "relu", "sigmoid", "softplus", "silu"}
    | {"variance", "arg_max", "arg_min"}
)

LOWERINGS: dict[str, Lowering] = merge_lowerings("torch", FAMILIES, shared=SHARED)

__all__ = ["LOWERINGS"]
