from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

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
    # As embedding: a computed class outside [0, classes) picks class 0 (MLX does not
    # check gather indices) and gives NaN and no gradient.
    valid = mx.logical_and(target >= 0, target < input.shape[axis])
    index = mx.expand_dims(mx.where(valid, target, 0), axis)
    picked = mx.take_along_axis(_log_q(input, axis, input_type), index, axis=axis)
    return mx.where(valid, -mx.squeeze(picked, axis), math.nan)


def cross_entropy_soft(
    input: mx.array, target: mx.array, axis: int, input_type: str
) -> mx.array:
    return -mx.sum(target * _log_q(input, axis, input_type), axis=axis)


def binary_cross_entropy(
    input: mx.array, target: mx.array, input_type: str
) -> mx.array:
    if input_type == "logits":
        # Softplus has no kink: the gradient is sigmoid(x) - t at x = 0 too.
        softplus_neg, softplus = mx.logaddexp(-input, 0), mx.logaddexp(input, 0)
        return target * softplus_neg + (1 - target) * softplus
    # mlx's stub types a custom_function's call as returning `object`.
    return cast(mx.array, _binary_cross_entropy_probs(input, target))


# PyTorch's floor of p * (1 - p) in the input gradient, a C float.
_BCE_EPSILON = 1e-12


@mx.custom_function
def _binary_cross_entropy_probs(input: mx.array, target: mx.array) -> mx.array:
    log_p = mx.maximum(mx.log(input), -100.0)
    log_1mp = mx.maximum(mx.log(1 - input), -100.0)
    return -(target * log_p + (1 - target) * log_1mp)


@_binary_cross_entropy_probs.vjp
def _binary_cross_entropy_probs_vjp(
    primals: tuple[mx.array, mx.array], cotangent: mx.array, output: mx.array
) -> tuple[mx.array, mx.array]:
    # F.binary_cross_entropy's gradients, finite for the input at p = 0 or 1 (the
    # clamped logs' autodiff gives 0 * inf there); the target's, -logit(p), is not.
    input, target = primals
    denom = mx.maximum(input * (1 - input), mx.array(_BCE_EPSILON, mx.float32))
    return (
        cotangent * (input - target) / denom.astype(input.dtype),
        cotangent * (mx.log1p(-input) - mx.log(input)),
    )


LOWERINGS: dict[str, Callable[..., Any]] = {
    "squared_error": squared_error,
    "absolute_error": absolute_error,
    "cross_entropy": cross_entropy,
    "cross_entropy_soft": cross_entropy_soft,
    "binary_cross_entropy": binary_cross_entropy,
}
