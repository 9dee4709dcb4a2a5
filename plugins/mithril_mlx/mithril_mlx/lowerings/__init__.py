"""MLX lowerings of every core primitive: the shared array-API table instantiated
with ``mlx.core``, and MLX's own in the family tables where it differs."""

from __future__ import annotations

import mlx.core as mx

from mithril_core.backends import array_api
from mithril_core.primitives.lowering import Lowering, merge_lowerings
from mithril_mlx.lowerings import elementwise, linalg, loss, nn, reduction, shape

LOWERINGS: dict[str, Lowering] = merge_lowerings(
    "mlx",
    {
        module.__name__: module.LOWERINGS
        for module in (elementwise, reduction, shape, linalg, nn, loss)
    },
    shared=array_api.lowerings(mx),
)

__all__ = ["LOWERINGS"]
