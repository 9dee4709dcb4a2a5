"""Primitives that depend on the compile mode or constrain shapes from values."""

from __future__ import annotations

from typing import Any

from mithril_core.logical import shapes as sh
from mithril_core.logical import types as ty
from mithril_core.logical.connection import NOVALUE, IOKey
from mithril_core.logical.model import Primitive
from mithril_core.primitives import _rules as r


class ModeSwitch(Primitive):
    """``training`` when compiled for training, ``inference_value`` when compiled with
    ``inference=True``. Compile removes it (the output reads the chosen input)."""

    op_name = "mode_switch"
    flops_per_element = 0
    rules = (
        r.same_shape("training", "inference_value", "output"),
        r.same_type("training"),
    )

    def __init__(self, name: str | None = None) -> None:
        super().__init__(
            name=name,
            training=IOKey(),
            inference_value=IOKey(),
            inference=IOKey(type=bool),
            output=IOKey(),
        )

    def forwarded_input(self, constants: dict[str, Any]) -> str | None:
        flag = constants.get("inference", NOVALUE)
        if flag is NOVALUE:
            return None
        return "inference_value" if flag else "training"


def _dim_from_value(rule: sh.Rule) -> bool:
    value = rule.conn("value").value
    dims = rule.conn("input").shape_node.dims()
    if value is NOVALUE or dims is None:
        return False
    axis = r.normalize_axes(rule.conn("axis").value, len(dims))[0]
    sh.set_dim(dims[axis], int(value))
    return True


class DimFromValue(Primitive):
    """Constrain ``input.shape[axis] == value`` once ``value`` (a symbolic int, e.g. a
    constructor argument computed from another shape) is known. Has no runtime effect:
    compile prunes it."""

    op_name = "dim_from_value"
    flops_per_element = 0
    rules = (_dim_from_value,)

    def __init__(self, axis: int, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS),
            value=IOKey(type=int),
            axis=axis,
            output=IOKey(type=None),
        )
