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
    with_vjp,
)


def _keep(grad: Array, axis: Axis, keepdim: bool) -> Array:
    return grad if keepdim or axis is None else np.expand_dims(grad, axis)


def _count(input: Array, axis: Axis) -> int:
    if axis is None:
        return input.size
    axes = axis if isinstance(axis, tuple | list) else (axis,)
    return math.prod(input.shape[a] for a in axes)


def sum_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    axis: Axis,
    keepdim: bool,
    needs: Needs = None,
) -> tuple[Grad, None, None]:
    if not wants(needs, 0, input):
        return None, None, None
    return np.broadcast_to(_keep(output_grad, axis, keepdim), input.shape), None, None


def mean_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    axis: Axis,
    keepdim: bool,
    needs: Needs = None,
) -> tuple[Grad, None, None]:
    if not wants(needs, 0, input):
        return None, None, None
    grad = _keep(output_grad, axis, keepdim) / _count(input, axis)
    return np.broadcast_to(grad, input.shape), None, None


def max_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    axis: Axis,
    keepdim: bool,
    needs: Needs = None,
) -> tuple[Grad, None, None]:
    return _extreme_vjp(output_grad, output, input, axis, keepdim, needs)


def min_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    axis: Axis,
    keepdim: bool,
    needs: Needs = None,
) -> tuple[Grad, None, None]:
    return _extreme_vjp(output_grad, output, input, axis, keepdim, needs)


def _extreme_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    axis: Axis,
    keepdim: bool,
    needs: Needs,
) -> tuple[Grad, None, None]:
    if not wants(needs, 0, input):
        return None, None, None
    hit = input == _keep(output, axis, keepdim)
    ties = np.sum(hit, axis=axis, keepdims=True, dtype=output_grad.dtype)
    return hit * (_keep(output_grad, axis, keepdim) / ties), None, None


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


def arg_max_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    axis: int | None,
    keepdim: bool,
    needs: Needs = None,
) -> tuple[None, None, None]:
    return None, None, None


arg_min_vjp = arg_max_vjp

LOWERINGS: dict[str, Entry] = {
    "sum": with_vjp("sum", sum_vjp),
    "mean": with_vjp("mean", mean_vjp),
    "max": with_vjp("max", max_vjp),
    "min": with_vjp("min", min_vjp),
    "variance": (variance, variance_vjp),
    "arg_max": with_vjp("arg_max", arg_max_vjp),
    "arg_min": with_vjp("arg_min", arg_min_vjp),
}
