from __future__ import annotations

from mithril_core.backends.numpy.lowerings import (
    elementwise,
    linalg,
    loss,
    nn,
    reduction,
    shape,
)
from mithril_core.backends.numpy.lowerings._utils import Lowering
from mithril_core.errors import PluginError


def _merge(*tables: dict[str, Lowering]) -> dict[str, Lowering]:
    merged: dict[str, Lowering] = {}
    for table in tables:
        for name, lowering in table.items():
            if name in merged:
                msg = (
                    f"numpy backend: primitive {name!r} is lowered by two family "
                    "tables in mithril_core.backends.numpy.lowerings; keep one."
                )
                raise PluginError(msg)
            merged[name] = lowering
    return merged


LOWERINGS = _merge(
    elementwise.LOWERINGS,
    reduction.LOWERINGS,
    shape.LOWERINGS,
    linalg.LOWERINGS,
    nn.LOWERINGS,
    loss.LOWERINGS,
)

__all__ = ["LOWERINGS"]
