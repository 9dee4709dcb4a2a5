from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from mithril_core.primitives.nn import adaptive_bounds, conv_padding

Ints = tuple[int, ...]


def softmax(input: mx.array, axis: int) -> mx.array:
    return mx.softmax(input, axis=axis)


def log_softmax(input: mx.array, axis: int) -> mx.array:
    return input - mx.logsumexp(input, axis=axis, keepdims=True)


def _conv(
    input: mx.array,
    weight: mx.array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> mx.array:
    # MLX convolves channels-last: [N, *spatial, C] with weight [O, *kernel, I].
    last = (0, *range(2, input.ndim), 1)
    pads = conv_padding(padding, weight.shape[2:], dilation)
    out = mx.conv_general(
        input.transpose(last),
        weight.transpose(last),
        stride=list(stride),
        padding=([lo for lo, _ in pads], [hi for _, hi in pads]),
        kernel_dilation=list(dilation),
        groups=groups,
    )
    return out.transpose(0, input.ndim - 1, *range(1, input.ndim - 1))


def conv1d(
    input: mx.array,
    weight: mx.array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> mx.array:
    return _conv(input, weight, stride, padding, dilation, groups)


def conv2d(
    input: mx.array,
    weight: mx.array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> mx.array:
    return _conv(input, weight, stride, padding, dilation, groups)


def _window_slices(
    padded: mx.array, kernel_size: Ints, stride: Ints, dilation: Ints, out: Ints
) -> list[mx.array]:
    return [
        padded[
            :,
            :,
            i * dilation[0] : i * dilation[0] + stride[0] * (out[0] - 1) + 1 : stride[
                0
            ],
            j * dilation[1] : j * dilation[1] + stride[1] * (out[1] - 1) + 1 : stride[
                1
            ],
        ]
        for i, j in itertools.product(range(kernel_size[0]), range(kernel_size[1]))
    ]


def _pool_out(
    input: mx.array, kernel_size: Ints, stride: Ints, padding: Ints, dilation: Ints
) -> Ints:
    return tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(
            input.shape[2:], kernel_size, stride, padding, dilation, strict=False
        )
    )


def _padded(input: mx.array, padding: Ints, value: float) -> mx.array:
    widths = [(0, 0), (0, 0), *((p, p) for p in padding)]
    return mx.pad(input, widths, constant_values=value) if any(padding) else input


def max_pool2d(
    input: mx.array, kernel_size: Ints, stride: Ints, padding: Ints, dilation: Ints
) -> mx.array:
    out = _pool_out(input, kernel_size, stride, padding, dilation)
    slices = _window_slices(
        _padded(input, padding, -math.inf), kernel_size, stride, dilation, out
    )
    return mx.max(mx.stack(slices, axis=-1), axis=-1)


def avg_pool2d(
    input: mx.array, kernel_size: Ints, stride: Ints, padding: Ints
) -> mx.array:
    out = _pool_out(input, kernel_size, stride, padding, (1, 1))
    slices = _window_slices(
        _padded(input, padding, 0.0), kernel_size, stride, (1, 1), out
    )
    return mx.mean(mx.stack(slices, axis=-1), axis=-1)


def adaptive_avg_pool2d(input: mx.array, output_size: Any) -> mx.array:
    sizes = [s or n for s, n in zip(output_size, input.shape[2:], strict=True)]
    rows, cols = (
        adaptive_bounds(n, s) for n, s in zip(input.shape[2:], sizes, strict=False)
    )
    cells = [
        mx.mean(input[:, :, r0:r1, c0:c1], axis=(-2, -1))
        for (r0, r1), (c0, c1) in itertools.product(rows, cols)
    ]
    return mx.stack(cells, axis=-1).reshape(*input.shape[:2], *sizes)


def embedding(input: mx.array, weight: mx.array) -> mx.array:
    # MLX does not check gather indices (out of range: a crash, or a write into another
    # row) and cannot raise in a compiled function; data ids are checked before
    # dispatch, ids computed in the graph are not: an id outside [0, rows) reads row 0
    # and gives a NaN row and no gradient, never another row (JAX does the same).
    valid = mx.logical_and(input >= 0, input < weight.shape[0])
    rows = mx.take(weight, mx.where(valid, input, 0), axis=0)
    return mx.where(mx.expand_dims(valid, -1), rows, math.nan)


def scaled_dot_product_masked(
    query: mx.array,
    key: mx.array,
    value: mx.array,
    mask: mx.array | None,
    is_causal: bool,
    scale: float | None,
) -> mx.array:
    factor = query.shape[-1] ** -0.5 if scale is None else scale
    scores = (query @ mx.swapaxes(key, -1, -2)) * factor
    if is_causal:
        keep = mx.tril(mx.ones(scores.shape[-2:], dtype=mx.bool_))
        scores = mx.where(keep, scores, -math.inf)
    if mask is None:
        return mx.softmax(scores, axis=-1) @ value
    if mask.dtype == mx.bool_:
        scores = mx.where(mask, scores, -math.inf)
    else:
        scores = scores + mask
    # A fully masked row gives zeros (as PyTorch), not NaN.
    top = mx.stop_gradient(mx.max(scores, axis=-1, keepdims=True))
    exp = mx.exp(scores - mx.where(mx.isinf(top), 0.0, top))
    total = mx.sum(exp, axis=-1, keepdims=True)
    return (exp / mx.where(total == 0, 1.0, total)) @ value


def scaled_dot_product(
    query: mx.array,
    key: mx.array,
    value: mx.array,
    is_causal: bool,
    scale: float | None,
) -> mx.array:
    return scaled_dot_product_masked(query, key, value, None, is_causal, scale)


def dropout(input: mx.array, p: float, inference: bool) -> mx.array:
    if inference or p == 0.0:
        return input
    keep = mx.random.bernoulli(1.0 - p, input.shape)
    return mx.where(keep, input / (1.0 - p), mx.zeros_like(input))


def pad(
    input: mx.array,
    pad_width: tuple[tuple[int, int], ...],
    mode: str,
    value: float,
) -> mx.array:
    if mode == "constant":
        return mx.pad(input, list(pad_width), constant_values=value)
    return mx.pad(input, list(pad_width), mode="edge" if mode == "edge" else "reflect")


LOWERINGS: dict[str, Callable[..., Any]] = {
    "softmax": softmax,
    "log_softmax": log_softmax,
    "conv1d": conv1d,
    "conv2d": conv2d,
    "max_pool2d": max_pool2d,
    "avg_pool2d": avg_pool2d,
    "adaptive_avg_pool2d": adaptive_avg_pool2d,
    "embedding": embedding,
    "scaled_dot_product": scaled_dot_product,
    "scaled_dot_product_masked": scaled_dot_product_masked,
    "dropout": dropout,
    "pad": pad,
}
