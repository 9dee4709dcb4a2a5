from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
Operand = NDArray[Any] | np.number[Any] | np.bool_ | int | float | bool
Grad = NDArray[Any] | None
Needs = Sequence[bool] | None
Axis = int | tuple[int, ...] | None
# A forward and its VJP, one gradient (or None) per input.
Lowering = tuple[Callable[..., Any], Callable[..., tuple[Any, ...]]]


def _needs(needs: Needs, i: int) -> bool:
    return needs is None or bool(needs[i])


_ARRAYS = (np.ndarray, np.generic)  # a tuple: isinstance is fastest with one


def is_float(value: object) -> bool:
    return isinstance(value, _ARRAYS) and value.dtype.kind == "f"


def wants(needs: Needs, i: int, value: object) -> bool:
    """Whether input ``i`` needs a gradient: asked for, and a float array. (Called for
    every input of every VJP: kept to plain checks.)"""
    return (
        (needs is None or bool(needs[i]))
        and isinstance(value, _ARRAYS)
        and value.dtype.kind == "f"
    )


def unbroadcast(grad: Array, shape: tuple[int, ...]) -> Array:
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    kept = (
        i + lead for i, n in enumerate(shape) if n == 1 and grad.shape[i + lead] != 1
    )
    axes = (*range(lead), *kept)
    return grad.sum(axis=axes).reshape(shape) if axes else grad.reshape(shape)


def reduce_to(grad: Array, value: Operand) -> Array:
    shape = value.shape if isinstance(value, _ARRAYS) else np.shape(value)
    return unbroadcast(grad, shape)
