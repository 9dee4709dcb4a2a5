from __future__ import annotations

import math

import numpy as np

from mithril_core.backends.numpy.lowerings._utils import (
    Array,
    Axis,
    Entry,
    Grad,
    Needs,
    wants,
)


def _keep(grad: Array, axis: Axis, keepdim: bool) -> Array:
    return grad if keepdim or axis is None else np.expand_dims(grad, axis)


def _count(input: Array, axis: Axis) -> int:
    if axis is None:
        return input.size
    axes = axis if isinstance(axis, tuple | list) else (axis,)
    return math.prod(input.shape[a] for a in axes)


def variance(input: Array, axis: Axis, keepdim: bool, correction: float) -> Array:
    count = _count(input, axis)
    if count > correction:
        return np.var(input, axis=axis, ddof=correction, keepdims=keepdim)
    # No degrees of freedom: the sum of squares over max(0, N - correction) = 0, NaN or
    # inf as PyTorch's (np.var would warn).
    centered = input - np.mean(input, axis=axis, keepdims=True)
    squares = np.sum(centered * centered, axis=axis, keepdims=keepdim)
    with np.errstate(divide="ignore", invalid="ignore"):
        return squares / 0


def variance_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    axis: Axis,
    keepdim: bool,
    correction: float,
    needs: Needs = None,
) -> tuple[Grad, None, None, None]:
    if not wants(needs, 0, input):
        return None, None, None, None
    centered = input - np.mean(input, axis=axis, keepdims=True)
    dof = _count(input, axis) - correction
    # N == correction: the gradient is 0 * (2 / 0), NaN, as PyTorch's.
    scale = 2.0 / dof if dof != 0 else math.inf
    with np.errstate(invalid="ignore"):
        grad = centered * (_keep(output_grad, axis, keepdim) * scale)
    return grad, None, None, None


# sum, mean, max, min, arg_max and arg_min: the shared forward and the VJP generated
# from the declared rule. Variance keeps its own: the forward answers N <= correction
# without np.var's warning, and the VJP (checked against the rule in
# tests/backends/test_fused_vjps.py) silences the NaN of N == correction.
LOWERINGS: dict[str, Entry] = {"variance": (variance, variance_vjp)}
