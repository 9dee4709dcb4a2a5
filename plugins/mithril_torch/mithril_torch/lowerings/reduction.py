"""Torch overrides of the shared reductions: variance without degrees of freedom
(NaN, not torch.var's warning) and arg_max/arg_min (already int64 on torch)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

Axis = int | tuple[int, ...] | None


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
    "variance": variance,
    "arg_max": arg_max,
    "arg_min": arg_min,
}
