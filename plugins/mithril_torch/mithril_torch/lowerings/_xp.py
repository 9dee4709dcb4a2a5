"""torch under the NumPy names the shared array-API table (``backends/array_api``)
calls: ``array_api.lowerings(_xp)`` is torch's forward of those ops.

Only the API is adapted here (names, ``dim=``/``keepdim=``, Python scalars where torch
wants tensors); an op whose *meaning* differs on torch is overridden in its family
table instead. Python operators keep torch's own promotion of Python scalars (a float
scalar does not widen a float32 tensor) and accept scalars on either side. Everything
is a plain function or operator, so ``torch.compile`` traces it without graph breaks.
"""

from __future__ import annotations

import operator

import torch
from torch import (
    abs,
    cos,
    exp,
    log,
    matmul,
    sin,
    sqrt,
    tanh,
)

from mithril_core.backends.array_api import Axis

Value = torch.Tensor | int | float | bool

# Arithmetic and comparisons: operators, as torch users write them (scalars welcome).
add = operator.add
subtract = operator.sub
multiply = operator.mul
divide = operator.truediv  # true division, ints included, as NumPy's
floor_divide = operator.floordiv
power = operator.pow
negative = operator.neg
greater = operator.gt
greater_equal = operator.ge
less = operator.lt
less_equal = operator.le
equal = operator.eq
not_equal = operator.ne


def _tensor(value: Value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def minimum(left: Value, right: Value) -> torch.Tensor:
    return torch.minimum(_tensor(left), _tensor(right))


def maximum(left: Value, right: Value) -> torch.Tensor:
    return torch.maximum(_tensor(left), _tensor(right))


def logical_and(left: Value, right: Value) -> torch.Tensor:
    return torch.logical_and(_tensor(left), _tensor(right))


def logical_or(left: Value, right: Value) -> torch.Tensor:
    return torch.logical_or(_tensor(left), _tensor(right))


def logical_xor(left: Value, right: Value) -> torch.Tensor:
    return torch.logical_xor(_tensor(left), _tensor(right))


def logical_not(input: Value) -> torch.Tensor:  # noqa: A002
    return torch.logical_not(_tensor(input))


def where(condition: Value, input1: Value, input2: Value) -> torch.Tensor:
    return torch.where(_tensor(condition), input1, input2)


def _dims(axis: Axis) -> int | tuple[int, ...]:
    # amax/amin reduce every axis for an empty dim tuple.
    return () if axis is None else axis


def sum(x: torch.Tensor, axis: Axis = None, keepdims: bool = False) -> torch.Tensor:  # noqa: A001
    return torch.sum(x, dim=axis, keepdim=keepdims)


def mean(x: torch.Tensor, axis: Axis = None, keepdims: bool = False) -> torch.Tensor:
    if not x.is_floating_point():  # torch.mean refuses ints; promote as int / int
        x = x.to(torch.get_default_dtype())
    return torch.mean(x, dim=axis, keepdim=keepdims)


def max(x: torch.Tensor, axis: Axis = None, keepdims: bool = False) -> torch.Tensor:  # noqa: A001
    return torch.amax(x, dim=_dims(axis), keepdim=keepdims)


def min(x: torch.Tensor, axis: Axis = None, keepdims: bool = False) -> torch.Tensor:  # noqa: A001
    return torch.amin(x, dim=_dims(axis), keepdim=keepdims)


__all__ = [
    "abs",
    "add",
    "cos",
    "divide",
    "equal",
    "exp",
    "floor_divide",
    "greater",
    "greater_equal",
    "less",
    "less_equal",
    "log",
    "logical_and",
    "logical_not",
    "logical_or",
    "logical_xor",
    "matmul",
    "max",
    "maximum",
    "mean",
    "min",
    "minimum",
    "multiply",
    "negative",
    "not_equal",
    "power",
    "sin",
    "sqrt",
    "subtract",
    "sum",
    "tanh",
    "where",
]
