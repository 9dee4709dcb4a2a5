from __future__ import annotations

import numpy as np

from mithril_core.backends.numpy.lowerings._utils import (
    Array,
    Entry,
    Grad,
    Needs,
    vjp_from_rules,
    wants,
)
from mithril_core.backends.numpy.lowerings.nn import check_indices, log_softmax
from mithril_core.primitives.loss import AbsoluteError, SquaredError


def squared_error(input: Array, target: Array) -> Array:
    return (input - target) ** 2


def absolute_error(input: Array, target: Array) -> Array:
    return np.abs(input - target)


def _log_q(input: Array, axis: int, input_type: str) -> Array:
    if input_type == "logits":
        return log_softmax(input, axis)
    return np.log(input) if input_type == "probs" else input


def _picked(values: Array, target: Array, axis: int) -> Array:
    index = np.expand_dims(target, axis)
    return np.squeeze(np.take_along_axis(values, index, axis=axis), axis)


def cross_entropy(input: Array, target: Array, axis: int, input_type: str) -> Array:
    check_indices("cross_entropy", "targets", target, input.shape[axis])
    return -_picked(_log_q(input, axis, input_type), target, axis)


def cross_entropy_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    target: Array,
    axis: int,
    input_type: str,
    needs: Needs = None,
) -> tuple[Grad, None, None, None]:
    if not wants(needs, 0, input):
        return None, None, None, None
    axis = axis % input.ndim
    onehot = np.arange(input.shape[axis]).reshape(
        [-1 if i == axis else 1 for i in range(input.ndim)]
    ) == np.expand_dims(target, axis)
    g = np.expand_dims(output_grad, axis)
    if input_type == "logits":
        grad = (np.exp(log_softmax(input, axis)) - onehot) * g
    elif input_type == "probs":
        grad = np.where(onehot, -g / input, 0.0)
    else:
        grad = np.where(onehot, -g, 0.0)
    return grad, None, None, None


def cross_entropy_soft(
    input: Array, target: Array, axis: int, input_type: str
) -> Array:
    return -np.sum(target * _log_q(input, axis, input_type), axis=axis)


def cross_entropy_soft_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    target: Array,
    axis: int,
    input_type: str,
    needs: Needs = None,
) -> tuple[Grad, Grad, None, None]:
    g = np.expand_dims(output_grad, axis)
    g_input = g_target = None
    if wants(needs, 0, input):
        if input_type == "logits":
            total = np.sum(target, axis=axis, keepdims=True)
            g_input = (np.exp(log_softmax(input, axis)) * total - target) * g
        elif input_type == "probs":
            g_input = -target / input * g
        else:
            g_input = -target * g
    if wants(needs, 1, target):
        g_target = -_log_q(input, axis, input_type) * g
    return g_input, g_target, None, None


def _clamped_log(x: Array) -> Array:
    with np.errstate(divide="ignore"):
        return np.maximum(np.log(x), -100.0)


# PyTorch's floor of p * (1 - p) in the input gradient, a C float.
_BCE_EPSILON = float(np.float32(1e-12))


def binary_cross_entropy(input: Array, target: Array, input_type: str) -> Array:
    if input_type == "logits":
        return np.maximum(input, 0) - input * target + np.log1p(np.exp(-np.abs(input)))
    return -(target * _clamped_log(input) + (1 - target) * _clamped_log(1 - input))


def binary_cross_entropy_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    target: Array,
    input_type: str,
    needs: Needs = None,
) -> tuple[Grad, Grad, None]:
    g_input = g_target = None
    if input_type == "logits":
        if wants(needs, 0, input):
            g_input = output_grad * (1 / (1 + np.exp(-input)) - target)
        if wants(needs, 1, target):
            g_target = -output_grad * input
        return g_input, g_target, None
    if wants(needs, 0, input):
        denom = np.maximum(input * (1 - input), _BCE_EPSILON)
        g_input = output_grad * (input - target) / denom
    if wants(needs, 1, target):
        # -logit(p), unclamped as PyTorch's: infinite at p = 0 or 1.
        with np.errstate(divide="ignore"):
            g_target = output_grad * (np.log1p(-input) - np.log(input))
    return g_input, g_target, None


LOWERINGS: dict[str, Entry] = {
    "squared_error": (squared_error, vjp_from_rules(SquaredError.grad_rules)),
    "absolute_error": (absolute_error, vjp_from_rules(AbsoluteError.grad_rules)),
    "cross_entropy": (cross_entropy, cross_entropy_vjp),
    "cross_entropy_soft": (cross_entropy_soft, cross_entropy_soft_vjp),
    "binary_cross_entropy": (binary_cross_entropy, binary_cross_entropy_vjp),
}
