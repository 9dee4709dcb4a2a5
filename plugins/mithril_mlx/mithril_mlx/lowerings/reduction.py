from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx

Axis = int | tuple[int, ...] | None


def sum(input: mx.array, axis: Axis, keepdim: bool) -> mx.array:
    return mx.sum(input, axis=axis, keepdims=keepdim)


def mean(input: mx.array, axis: Axis, keepdim: bool) -> mx.array:
    return mx.mean(input, axis=axis, keepdims=keepdim)


def max(input: mx.array, axis: Axis, keepdim: bool) -> mx.array:
    return mx.max(input, axis=axis, keepdims=keepdim)


def min(input: mx.array, axis: Axis, keepdim: bool) -> mx.array:
    return mx.min(input, axis=axis, keepdims=keepdim)


def variance(input: mx.array, axis: Axis, keepdim: bool, correction: int) -> mx.array:
    return mx.var(input, axis=axis, keepdims=keepdim, ddof=correction)


def arg_max(input: mx.array, axis: int | None, keepdim: bool) -> mx.array:
    return mx.argmax(input, axis=axis, keepdims=keepdim).astype(mx.int64)


def arg_min(input: mx.array, axis: int | None, keepdim: bool) -> mx.array:
    return mx.argmin(input, axis=axis, keepdims=keepdim).astype(mx.int64)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "sum": sum,
    "mean": mean,
    "max": max,
    "min": min,
    "variance": variance,
    "arg_max": arg_max,
    "arg_min": arg_min,
}
