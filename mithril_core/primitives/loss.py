"""Loss primitives. Each returns unreduced losses (per element or per sample);
reducing them is the caller's job."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mithril_core.logical import shapes as sh
from mithril_core.logical import types as ty
from mithril_core.logical.connection import IOKey
from mithril_core.logical.model import Primitive
from mithril_core.primitives import _rules as r

_FLOAT_TENSOR = frozenset({ty.TENSOR_FLOAT})
INPUT_TYPES = ("logits", "probs", "log_probs")


# Gradient rules (see ``elementwise.py``); the caller sums broadcast axes back.
def _squared_error_input(xp: Any, g: Any, y: Any, input: Any, target: Any) -> Any:  # noqa: A002
    return 2 * g * (input - target)


def _absolute_error_input(xp: Any, g: Any, y: Any, input: Any, target: Any) -> Any:  # noqa: A002
    return g * xp.sign(input - target)


class SquaredError(Primitive):
    """``(input - target) ** 2`` element-wise, broadcasting."""

    op_name = "squared_error"
    grad_rules = {
        "input": _squared_error_input,
        "target": lambda xp, g, y, input, target: (
            -_squared_error_input(xp, g, y, input, target)
        ),
    }
    rules = (r.broadcast("input", "target"), r.kind_type(ty.FLOAT))
    flops_per_element = 2  # subtract, square (absolute_error: subtract, abs)

    def __init__(self, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=_FLOAT_TENSOR),
            target=IOKey(type=ty.TENSORS),
            output=IOKey(type=_FLOAT_TENSOR),
        )


class AbsoluteError(SquaredError):
    """``|input - target|`` element-wise, broadcasting."""

    op_name = "absolute_error"
    grad_rules = {
        "input": _absolute_error_input,
        "target": lambda xp, g, y, input, target: (
            -_absolute_error_input(xp, g, y, input, target)
        ),
    }


def _class_axis_shape(rule: sh.Rule) -> bool:
    """``output`` is ``input`` without ``axis``; a categorical ``target`` is shaped as
    ``output``, a soft one as ``input``."""
    axis = rule.conn("axis").value
    inp, target, out = rule.conn("input"), rule.conn("target"), rule.conn("output")
    categorical = rule.owner.categorical
    if categorical:
        sh.unify(target.shape_node, out.shape_node)
    else:
        sh.unify(target.shape_node, inp.shape_node)
    dims = inp.shape_node.dims()
    if dims is None:
        odims = out.shape_node.dims()
        if odims is None:
            return False
        rank = len(odims) + 1
        ax = r.normalize_axes(axis, rank)[0]
        sh.unify_with_dims(inp.shape_node, [*odims[:ax], None, *odims[ax:]])
        return True
    if not dims:
        r._fail("cross_entropy input needs a class axis (rank >= 1)")
    ax = r.normalize_axes(axis, len(dims))[0]
    sh.unify_with_dims(out.shape_node, [*dims[:ax], *dims[ax + 1 :]])
    return True


class CrossEntropy(Primitive):
    """Per-sample cross entropy over the class ``axis`` (default 1, PyTorch's class
    dim), unreduced, as ``torch.nn.functional.cross_entropy(reduction="none")``.

    ``input [N, C, ...]`` holds ``input_type`` ``"logits"`` (default), ``"probs"`` or
    ``"log_probs"``. With ``categorical=True`` (default) ``target`` holds int class
    indices ``[N, ...]`` (op ``cross_entropy``); with ``categorical=False`` it holds
    class probabilities shaped as ``input`` (op ``cross_entropy_soft``, class
    :class:`SoftCrossEntropy`, gradients for both input and target).
    ``output [N, ...]``.
    """

    op_name = "cross_entropy"
    rules = (_class_axis_shape,)
    categorical = True

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        categorical = kwargs.get("categorical", args[2] if len(args) > 2 else True)
        return super().__new__(cls if categorical else SoftCrossEntropy)

    def __init__(
        self,
        input_type: str = "logits",
        axis: int = 1,
        categorical: bool = True,
        name: str | None = None,
    ) -> None:
        if input_type not in INPUT_TYPES:
            msg = (
                f"CrossEntropy: input_type={input_type!r}; expected one of "
                f"{', '.join(INPUT_TYPES)}."
            )
            raise ValueError(msg)
        super().__init__(
            name=name,
            input=IOKey(type=_FLOAT_TENSOR),
            target=IOKey(type=ty.Tensor[int] if self.categorical else _FLOAT_TENSOR),
            axis=axis,
            input_type=input_type,
            output=IOKey(type=_FLOAT_TENSOR),
        )

    def flops(
        self,
        input_shapes: Mapping[str, tuple[int, ...] | None],
        output_shape: tuple[int, ...] | None,
    ) -> int | None:
        shape = input_shapes["input"]
        if shape is None or output_shape is None:
            return None
        classes, samples = math.prod(shape), math.prod(output_shape)
        # Per class element: log_softmax of logits (5), log of probs (1); soft
        # targets add a multiply and a sum. Per sample: negate.
        per_class = _LOG_COST[self.attributes["input_type"]] + 2 * (
            not self.categorical
        )
        return per_class * classes + samples


_LOG_COST = {"logits": 5, "probs": 1, "log_probs": 0}


class SoftCrossEntropy(CrossEntropy):
    """:class:`CrossEntropy` with probability targets shaped as ``input``
    (``CrossEntropy(categorical=False)`` builds one): ``-sum(target * log q, axis)``."""

    op_name = "cross_entropy_soft"
    categorical = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return Primitive.__new__(cls)

    def __init__(
        self,
        input_type: str = "logits",
        axis: int = 1,
        categorical: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(input_type=input_type, axis=axis, name=name)


class BinaryCrossEntropy(Primitive):
    """Element-wise ``-(target * log p + (1 - target) * log(1 - p))`` with float
    targets, unreduced. ``input_type`` ``"probs"`` (default; logs clamped at -100 as
    PyTorch's ``binary_cross_entropy``) or ``"logits"`` (computed stably, as
    ``binary_cross_entropy_with_logits``). Gradients for input and target."""

    op_name = "binary_cross_entropy"
    rules = (r.same_shape("input", "target", "output"),)
    # -(t * log(p) + (1 - t) * log(1 - p)); the stable logits form costs about the same
    flops_per_element = 8

    def __init__(self, input_type: str = "probs", name: str | None = None) -> None:
        if input_type not in ("probs", "logits"):
            msg = (
                f"BinaryCrossEntropy: input_type={input_type!r}; expected 'probs' or "
                "'logits'."
            )
            raise ValueError(msg)
        super().__init__(
            name=name,
            input=IOKey(type=_FLOAT_TENSOR),
            target=IOKey(type=_FLOAT_TENSOR),
            input_type=input_type,
            output=IOKey(type=_FLOAT_TENSOR),
        )
