from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Axis = int | tuple[int, ...] | None


def _dims(axis: Axis) -> int | tuple[int, ...]:
    # amax/amin reduce every axis for an empty dim tuple.
    return () if axis is None else axis


def sum(input: torch.Tensor, axis: Axis, keepdim: bool) -> torch.Tensor:
    return torch.sum(input, dim=axis, keepdim=keepdim)


def mean(input: torch.Tensor, axis: Axis, keepdim: bool) -> torch.Tensor:
    if not input.is_floating_point():  # torch.mean refuses ints; promote as int / int
        input = input.to(torch.get_default_dtype())
    return torch.mean(input, dim=axis, keepdim=keepdim)


def max(input: torch.Tensor, axis: Axis, keepdim: bool) -> torch.Tensor:
    return torch.amax(input, dim=_dims(axis), keepdim=keepdim)


def min(input: torch.Tensor, axis: Axis, keepdim: bool) -> torch.Tensor:
    return torch.amin(input, dim=_dims(axis), keepdim=keepdim)


def variance(
    input: torch.Tensor, axis: Axis, keepdim: bool, correction: int
) -> torch.Tensor:
    if _count(input, axis) > correction:
        return torch.var(input, dim=axis, correction=correction, keepdim=keepdim)
    # No degrees of freedom: torch.var's NaN, without its UserWarning.
    centered = input - torch.mean(input, dim=axis, keepdim=True)
    return torch.sum(centered * centered, dim=axis, keepdim=keepdim) / 0


def _count(input: torch.Tensor, axis: Axis) -> int:
    if axis is None:
        return input.numel()
    axes = axis if isinstance(axis, tuple | list) else (axis,)
    return math.prod(input.shape[a] for a in axes)


def arg_max(input: torch.Tensor, axis: int | None, keepdim: bool) -> torch.Tensor:
    return torch.argmax(input, dim=axis, keepdim=keepdim)


def arg_min(input: torch.Tensor, axis: int | None, keepdim: bool) -> torch.Tensor:
    return torch.argmin(input, dim=axis, keepdim=keepdim)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "sum": sum,
    "mean": mean,
    "max": max,
    "min": min,
    "variance": variance,
    "arg_max": arg_max,
    "arg_min": arg_min,
}
