from __future__ import annotations

import numpy as np

from mithril_core.backends.numpy.lowerings._utils import Array, Grad, Needs, wants


def softmax(input: Array, axis: int) -> Array:
    exp = np.exp(input - np.max(input, axis=axis, keepdims=True))
    return exp / np.sum(exp, axis=axis, keepdims=True)


def softmax_vjp(
    output_grad: Array, output: Array, input: Array, axis: int, needs: Needs = None
) -> tuple[Grad, None]:
    if not wants(needs, 0, input):
        return None, None
    dot = np.sum(output_grad * output, axis=axis, keepdims=True)
    return output * (output_grad - dot), None


def log_softmax(input: Array, axis: int) -> Array:
    shifted = input - np.max(input, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def log_softmax_vjp(
    output_grad: Array, output: Array, input: Array, axis: int, needs: Needs = None
) -> tuple[Grad, None]:
    if not wants(needs, 0, input):
        return None, None
    total = np.sum(output_grad, axis=axis, keepdims=True)
    return output_grad - np.exp(output) * total, None


LOWERINGS = {
    "softmax": (softmax, softmax_vjp),
    "log_softmax": (log_softmax, log_softmax_vjp),
}
