"""Reductions over axes: Sum, Mean, Max, Min, Variance, ArgMax, ArgMin."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mithril_core.logical import types as ty
from mithril_core.logical.connection import IOKey
from mithril_core.logical.model import Primitive
from mithril_core.primitives import _rules as r

Axis = int | tuple[int, ...] | None


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
    rules = (r.reduce_shape, r.same_type())


class Mean(_Reduce):
    """Mean over ``axis``."""

    op_name = "mean"
    rules = (r.reduce_shape, r.kind_type(ty.FLOAT))


class Max(_Reduce):
    """Maximum over ``axis``."""

    op_name = "max"
    rules = (r.reduce_shape, r.same_type())


class Min(_Reduce):
    """Minimum over ``axis``."""

    op_name = "min"
    rules = (r.reduce_shape, r.same_type())


class ArgMax(_Reduce):
    """Index of the maximum over ``axis`` (int64; ``axis=None`` flattens)."""

    op_name = "arg_max"
    rules = (r.reduce_shape, r.kind_type(ty.INT))


class ArgMin(_Reduce):
    """Index of the minimum over ``axis`` (int64; ``axis=None`` flattens)."""

    op_name = "arg_min"
    rules = (r.reduce_shape, r.kind_type(ty.INT))


class Variance(_Reduce):
    """``sum((x - mean)**2) / (N - correction)`` over ``axis``."""

    op_name = "variance"
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
