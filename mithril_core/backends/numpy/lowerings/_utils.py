from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
Operand = NDArray[Any] | np.generic | int | float | bool
Grad = NDArray[Any] | None
Needs = Sequence[bool] | None
Axis = int | tuple[int, ...] | None


def _needs(needs: Needs, i: int) -> bool:
    return needs is None or bool(needs[i])


def is_float(value: object) -> bool:
    return isinstance(value, np.ndarray | np.generic) and value.dtype.kind == "f"


def wants(needs: Needs, i: int, value: object) -> bool:
    return _needs(needs, i) and is_float(value)


def unbroadcast(grad: Array, shape: tuple[int, ...]) -> Array:
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    kept = (
        i + lead for i, n in enumerate(shape) if n == 1 and grad.shape[i + lead] != 1
    )
    axes = (*range(lead), *kept)
    return np.sum(grad, axis=axes).reshape(shape) if axes else grad.reshape(shape)


def reduce_to(grad: Array, value: Operand) -> Array:
    return unbroadcast(grad, np.shape(value))
