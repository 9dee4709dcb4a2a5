"""PyTorch lowerings of every core primitive, merged from the family tables (a name
lowered twice is refused)."""

from __future__ import annotations

from mithril_core.primitives.lowering import Lowering, merge_lowerings
from mithril_torch.lowerings import elementwise, linalg, loss, nn, reduction, shape

LOWERINGS: dict[str, Lowering] = merge_lowerings(
    "torch",
    {
        module.__name__: module.LOWERINGS
        for module in (elementwise, reduction, shape, linalg, nn, loss)
    },
)

__all__ = ["LOWERINGS"]
