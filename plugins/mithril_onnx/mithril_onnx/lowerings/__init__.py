"""ONNX lowerings of every core primitive: ``LOWERINGS = {op_name: fn(g, *inputs)}``
(the form is documented in :mod:`mithril_onnx.export`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mithril_onnx.lowerings import elementwise, linalg, loss, nn, reduction, shape

LOWERINGS: dict[str, Callable[..., Any]] = {
    **elementwise.LOWERINGS,
    **reduction.LOWERINGS,
    **shape.LOWERINGS,
    **linalg.LOWERINGS,
    **nn.LOWERINGS,
    **loss.LOWERINGS,
}

__all__ = ["LOWERINGS"]
