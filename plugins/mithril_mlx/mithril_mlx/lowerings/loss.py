from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx


def squared_error(input: mx.array, target: mx.array) -> mx.array:
    return mx.square(input - target)


def absolute_error(input: mx.array, target: mx.array) -> mx.array:
    return mx.abs(input - target)


def _log_q(input: mx.array, axis: int, input_type: str) -> mx.array:
    if input_type == "logits":
        return input - mx.logsumexp(input, axis=axis, keepdims=True)
    return mx.log(input) if input_type == "probs" else input


def cross_entropy(
    input: mx.array, target: mx.array, axis: int, input_type: str
) -> mx.array:
    log_q = _log_q(input, axis, input_type)
    picked = mx.take_along_axis(log_q, mx.expand_dims(target, axis), axis=axis)
    return -mx.squeeze(picked, axis)


def cross_entropy_soft(
    input: mx.array, target: mx.array, axis: int, input_type: str
) -> mx.array:
    return -mx.sum(target * _log_q(input, axis, input_type), axis=axis)


def binary_cross_entropy(
    input: mx.array, target: mx.array, input_type: str
) -> mx.array:
    if input_type == "logits":
        return mx.maximum(input, 0) - input * target + mx.log1p(mx.exp(-mx.abs(input)))
    log_p = mx.maximum(mx.log(input), -100.0)
    log_1mp = mx.maximum(mx.log(1 - input), -100.0)
    return -(target * log_p + (1 - target) * log_1mp)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "squared_error": squared_error,
    "absolute_error": absolute_error,
    "cross_entropy": cross_entropy,
    "cross_entropy_soft": cross_entropy_soft,
    "binary_cross_entropy": binary_cross_entropy,
}
