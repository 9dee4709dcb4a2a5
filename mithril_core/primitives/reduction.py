"""Reductions over axes: Sum, Mean, Max, Min, Variance, ArgMax, ArgMin."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mithril_core.logical import types as ty
from mithril_core.logical.connection import IOKey
from mithril_core.logical.model import Primitive
from mithril_core.primitives import _rules as r
from mithril_core.primitives.lowering import GradRule

Axis = int | tuple[int, ...] | None


# Gradient rules (see ``elementwise.py``): ``axis``, ``keepdim`` and ``correction`` are
# constants, so a rule may branch on them in Python; ``g`` is put back to the input's
# rank (``_expand``) and broadcast over the reduced axes.
def _expand(xp: Any, g: Any, axis: Axis, keepdim: bool) -> Any:
    return g if keepdim or axis is None else xp.expand_dims(g, axis)


def _count(shape: tuple[int, ...], axis: Axis) -> int:
    if axis is None:
        return math.prod(shape)
    return math.prod(shape[a] for a in (axis if isinstance(axis, tuple) else (axis,)))


def _sum_grad(xp: Any, g: Any, y: Any, input: Any, axis: Axis, keepdim: bool) -> Any:  # noqa: A002
    return xp.broadcast_to(_expand(xp, g, axis, keepdim), input.shape)


def _mean_grad(xp: Any, g: Any, y: Any, input: Any, axis: Axis, keepdim: bool) -> Any:  # noqa: A002
    scaled = _expand(xp, g, axis, keepdim) / _count(input.shape, axis)
    return xp.broadcast_to(scaled, input.shape)


def _extreme_grad(
    xp: Any,
    g: Any,
    y: Any,
    input: Any,  # noqa: A002
    axis: Axis,
    keepdim: bool,
) -> Any:
    # Ties share the gradient evenly (as JAX and PyTorch's amax/amin do).
    hit = xp.astype(input == _expand(xp, y, axis, keepdim), g.dtype)
    ties = xp.sum(hit, axis=axis, keepdims=True)
    return hit * (_expand(xp, g, axis, keepdim) / ties)


def _variance_grad(
    xp: Any,
    g: Any,
    y: Any,
    input: Any,  # noqa: A002
    axis: Axis,
    keepdim: bool,
    correction: float,
) -> Any:
    centered = input - xp.mean(input, axis=axis, keepdims=True)
    dof = _count(input.shape, axis) - correction
    # N == correction: 0 * (2 / 0), NaN, as PyTorch's.
    scale = 2.0 / dof if dof != 0 else math.inf
    return centered * (_expand(xp, g, axis, keepdim) * scale)


_NO_GRAD: Mapping[str, GradRule] = {}


class _Reduce(Primitive):
    """Reduce ``input`` over ``axis`` (None: all axes), keeping reduced axes as size 1
    when ``keepdim``. Costs ``flops_per_element`` per *input* element."""

    def __init__(
        self,
        axis: Axis = None,
        keepdim: bool = False,
        name: str | None = None,
        **extra: Any,
    ) -> None:
        axis = r.check_axis(type(self).__name__, axis)
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS),
            axis=axis,
            keepdim=keepdim,
            **extra,
            output=IOKey(type=ty.TENSORS),
        )

    def flops(
        self,
        input_shapes: Mapping[str, tuple[int, ...] | None],
        output_shape: tuple[int, ...] | None,
    ) -> int | None:
        shape = input_shapes["input"]
        return None if shape is None else self.flops_per_element * math.prod(shape)


class Sum(_Reduce):
    """Sum over ``axis``."""

    op_name = "sum"
    grad_rules = {"input": _sum_grad}
    rules = (r.reduce_shape, r.same_type())


class Mean(_Reduce):
    """Mean over ``axis``."""

    op_name = "mean"
    grad_rules = {"input": _mean_grad}
    rules = (r.reduce_shape, r.kind_type(ty.FLOAT))


class Max(_Reduce):
    """Maximum over ``axis``."""

    op_name = "max"
    grad_rules = {"input": _extreme_grad}
    rules = (r.reduce_shape, r.same_type())


class Min(_Reduce):
    """Minimum over ``axis``."""

    op_name = "min"
    grad_rules = {"input": _extreme_grad}
    rules = (r.reduce_shape, r.same_type())


class ArgMax(_Reduce):
    """Index of the maximum over ``axis`` (int64; ``axis=None`` flattens)."""

    op_name = "arg_max"
    grad_rules = _NO_GRAD
    rules = (r.reduce_shape, r.kind_type(ty.INT))


class ArgMin(_Reduce):
    """Index of the minimum over ``axis`` (int64; ``axis=None`` flattens)."""

    op_name = "arg_min"
    grad_rules = _NO_GRAD
    rules = (r.reduce_shape, r.kind_type(ty.INT))


class Variance(_Reduce):
    """``sum((x - mean)**2) / (N - correction)`` over ``axis``."""

    op_name = "variance"
    grad_rules = {"input": _variance_grad}
    flops_per_element = 4  # mean, subtract, square, sum
    rules = (r.reduce_shape, r.kind_type(ty.FLOAT))

    def __init__(
        self,
        axis: Axis = None,
        keepdim: bool = False,
        correction: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(axis=axis, keepdim=keepdim, name=name, correction=correction)
