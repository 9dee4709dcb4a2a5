from __future__ import annotations

from dataclasses import replace

from mithril_core.backends.numpy.lowerings import (
    elementwise,
    linalg,
    loss,
    nn,
    reduction,
    shape,
)
from mithril_core.backends.numpy.lowerings._utils import SHARED, vjp_from_rules
from mithril_core.primitives import CORE_PRIMITIVES
from mithril_core.primitives.lowering import Lowering, merge_lowerings

# Shared forwards whose primitive declares its gradient get the VJP generated from it;
# a family table overrides one where NumPy needs its own forward or a fused VJP.
_RULES = {cls.op_name: getattr(cls, "grad_rules", None) for cls in CORE_PRIMITIVES}
_DECLARED = {
    op: replace(forward, vjp=vjp_from_rules(rules))
    for op, forward in SHARED.items()
    if (rules := _RULES.get(op)) is not None
}

LOWERINGS: dict[str, Lowering] = merge_lowerings(
    "numpy",
    {
        module.__name__: module.LOWERINGS
        for module in (elementwise, reduction, shape, linalg, nn, loss)
    },
    shared={**SHARED, **_DECLARED},
)

__all__ = ["LOWERINGS"]
