"""The C lowering table: element-wise C templates and emitters per family (see
:mod:`mithril_c.lowerings._types` for the form)."""

from __future__ import annotations

from mithril_c.lowerings import elementwise, linalg, loss, nn, reduction, shape
from mithril_c.lowerings._symbolic import from_rules
from mithril_c.lowerings._types import CLowering


def _merge(*tables: dict[str, CLowering]) -> dict[str, CLowering]:
    merged: dict[str, CLowering] = {}
    for table in tables:
        for name, entry in table.items():
            if name in merged:
                msg = f"C lowering {name!r} is defined twice."
                raise ValueError(msg)
            merged[name] = entry
    return merged


# VJPs marked FROM_RULES are generated from the primitives' grad_rules.
LOWERINGS = from_rules(
    _merge(
        elementwise.LOWERINGS,
        reduction.LOWERINGS,
        shape.LOWERINGS,
        linalg.LOWERINGS,
        nn.LOWERINGS,
        loss.LOWERINGS,
    )
)

__all__ = ["LOWERINGS"]
