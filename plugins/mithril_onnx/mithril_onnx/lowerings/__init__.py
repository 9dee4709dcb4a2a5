"""ONNX lowerings of every core primitive: ``LOWERINGS = {op_name: fn(g, *inputs)}``
(the form is documented in :mod:`mithril_onnx.export`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mithril_onnx.export import OnnxLowering
from mithril_onnx.lowerings import elementwise, linalg, loss, nn, reduction, shape

BUILDERS: dict[str, Callable[..., Any]] = {
    **elementwise.LOWERINGS,
    **reduction.LOWERINGS,
    **shape.LOWERINGS,
    **linalg.LOWERINGS,
    **nn.LOWERINGS,
    **loss.LOWERINGS,
}
# ``(OnnxLowering, None)``: a forward that is not an array function, and no VJP.
LOWERINGS: dict[str, tuple[OnnxLowering, None]] = {
    op: (OnnxLowering(build), None) for op, build in BUILDERS.items()
}

__all__ = ["BUILDERS", "LOWERINGS"]
