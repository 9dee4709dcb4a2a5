"""MLX lowerings of every core primitive: ``LOWERINGS = {op_name: forward}``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mithril_mlx.lowerings import elementwise, linalg, loss, nn, reduction, shape

LOWERINGS: dict[str, Callable[..., Any]] = {
    **elementwise.LOWERINGS,
    **reduction.LOWERINGS,
    **shape.LOWERINGS,
    **linalg.LOWERINGS,
    **nn.LOWERINGS,
    **loss.LOWERINGS,
}

__all__ = ["LOWERINGS"]
