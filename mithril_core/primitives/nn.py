"""Neural-network primitives that are not element-wise: softmax and friends."""

from __future__ import annotations

from mithril_core.logical import types as ty
from mithril_core.logical.connection import IOKey
from mithril_core.logical.model import Primitive
from mithril_core.primitives import _rules as r


def _check_axis(rule: r.sh.Rule) -> bool:
    dims = rule.conn("input").shape_node.dims()
    axis = rule.conn("axis").value
    if dims is None:
        return False
    r.normalize_axes(axis, len(dims))
    return True


class Softmax(Primitive):
    """``exp(x) / sum(exp(x))`` along ``axis``."""

    op_name = "softmax"
    rules = (r.kind_type(ty.FLOAT), _check_axis)

    def __init__(self, axis: int = -1, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)], type=ty.TENSORS),
            axis=axis,
            output=IOKey(shape=[("V", ...)], type=ty.TENSORS),
        )


class LogSoftmax(Softmax):
    """``log(softmax(x))`` along ``axis``, computed stably."""

    op_name = "log_softmax"
