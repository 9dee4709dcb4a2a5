from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mithril_core.backends.numpy.lowerings._utils import (
    Array,
    Entry,
    Grad,
    Needs,
    reduce_to,
    vjp_from_rules,
    wants,
)
from mithril_core.errors import IndexRangeError
from mithril_core.primitives.nn import (
    LogSoftmax,
    Softmax,
    adaptive_bounds,
    conv_padding,
)

Ints = tuple[int, ...]


def softmax(input: Array, axis: int) -> Array:
    exp = np.exp(input - np.max(input, axis=axis, keepdims=True))
    return exp / np.sum(exp, axis=axis, keepdims=True)


def log_softmax(input: Array, axis: int) -> Array:
    shifted = input - np.max(input, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


# -- windows (convolution and pooling) -------------------------------------------------


def _windows(padded: Array, kernel: Ints, stride: Ints, dilation: Ints) -> Array:
    # [N, C, *spatial] -> [N, C, *out_spatial, *kernel] (a view, no copy).
    n = len(kernel)
    axes = tuple(range(2, 2 + n))
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    view = sliding_window_view(padded, spans, axis=axes)
    outer = tuple(slice(None, None, s) for s in stride)
    inner = tuple(slice(None, None, d) for d in dilation)
    return view[(slice(None), slice(None), *outer, *inner)]


def _scatter_windows(
    grad_windows: Array, padded_shape: Ints, stride: Ints, dilation: Ints
) -> Array:
    # Adjoint of _windows: sum [N, C, *out, *kernel] back into [N, C, *padded].
    n = len(stride)
    out_sizes = grad_windows.shape[2 : 2 + n]
    kernel = grad_windows.shape[2 + n :]
    result = np.zeros(padded_shape, dtype=grad_windows.dtype)
    for offset in np.ndindex(*kernel):
        target = tuple(
            slice(o * d, o * d + s * (m - 1) + 1, s)
            for o, d, s, m in zip(offset, dilation, stride, out_sizes, strict=True)
        )
        result[(slice(None), slice(None), *target)] += grad_windows[(Ellipsis, *offset)]
    return result


def _pad(input: Array, pads: list[tuple[int, int]], value: float = 0.0) -> Array:
    if not any(lo or hi for lo, hi in pads):
        return input
    return np.pad(input, ((0, 0), (0, 0), *pads), constant_values=value)


def _crop(padded: Array, pads: list[tuple[int, int]]) -> Array:
    index = tuple(
        slice(lo, padded.shape[2 + i] - hi) for i, (lo, hi) in enumerate(pads)
    )
    return padded[(slice(None), slice(None), *index)]


# -- convolution -----------------------------------------------------------------------


def _conv_setup(
    input: Array, weight: Array, padding: Any, dilation: Ints
) -> tuple[list[tuple[int, int]], Array]:
    pads = conv_padding(padding, weight.shape[2:], dilation)
    return pads, _pad(input, pads)


def _grouped(windows: Array, groups: int) -> Array:
    n, c = windows.shape[:2]
    return windows.reshape(n, groups, c // groups, *windows.shape[2:])


def _conv_spec(rank: int) -> tuple[str, str]:
    out, kern = "hwd"[:rank], "ijk"[:rank]
    return out, kern


def _conv(
    input: Array,
    weight: Array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> Array:
    pads, padded = _conv_setup(input, weight, padding, dilation)
    windows = _windows(padded, weight.shape[2:], stride, dilation)
    rank = weight.ndim - 2
    if groups == 1:
        kernel_axes = (1, *range(2 + rank, 2 + 2 * rank))
        out = np.tensordot(windows, weight, axes=(kernel_axes, range(1, 2 + rank)))
        return np.moveaxis(out, -1, 1)
    o, k = _conv_spec(rank)
    w = weight.reshape(groups, -1, *weight.shape[1:])
    out = np.einsum(
        f"ngc{o}{k},gfc{k}->ngf{o}", _grouped(windows, groups), w, optimize=True
    )
    return out.reshape(out.shape[0], -1, *out.shape[3:])


def _conv_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    weight: Array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
    needs: Needs = None,
) -> tuple[Grad, Grad, None, None, None, None]:
    want_input, want_weight = wants(needs, 0, input), wants(needs, 1, weight)
    pads, padded = _conv_setup(input, weight, padding, dilation)
    rank = weight.ndim - 2
    o, k = _conv_spec(rank)
    g_in = g_w = None
    gout = output_grad.reshape(output_grad.shape[0], groups, -1, *output_grad.shape[2:])
    w = weight.reshape(groups, -1, *weight.shape[1:])
    if want_weight:
        windows = _grouped(_windows(padded, weight.shape[2:], stride, dilation), groups)
        g_w = np.einsum(f"ngf{o},ngc{o}{k}->gfc{k}", gout, windows, optimize=True)
        g_w = g_w.reshape(weight.shape)
    if want_input:
        g_windows = np.einsum(f"ngf{o},gfc{k}->ngc{o}{k}", gout, w, optimize=True)
        g_windows = g_windows.reshape(input.shape[0], -1, *g_windows.shape[3:])
        g_padded = _scatter_windows(g_windows, padded.shape, stride, dilation)
        g_in = _crop(g_padded, pads)
    return g_in, g_w, None, None, None, None


def conv1d(
    input: Array,
    weight: Array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> Array:
    return _conv(input, weight, stride, padding, dilation, groups)


def conv2d(
    input: Array,
    weight: Array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> Array:
    return _conv(input, weight, stride, padding, dilation, groups)


def conv1d_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    weight: Array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
    needs: Needs = None,
) -> tuple[Grad, Grad, None, None, None, None]:
    return _conv_vjp(
        output_grad, output, input, weight, stride, padding, dilation, groups, needs
    )


def conv2d_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    weight: Array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
    needs: Needs = None,
) -> tuple[Grad, Grad, None, None, None, None]:
    return _conv_vjp(
        output_grad, output, input, weight, stride, padding, dilation, groups, needs
    )


# -- pooling ---------------------------------------------------------------------------


def max_pool2d(
    input: Array, kernel_size: Ints, stride: Ints, padding: Ints, dilation: Ints
) -> Array:
    padded = _pad(input, [(p, p) for p in padding], -np.inf)
    windows = _windows(padded, kernel_size, stride, dilation)
    return windows.max(axis=(-2, -1))


def max_pool2d_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
    needs: Needs = None,
) -> tuple[Grad, None, None, None, None]:
    if not wants(needs, 0, input):
        return None, None, None, None, None
    pads = [(p, p) for p in padding]
    padded = _pad(input, pads, -np.inf)
    windows = _windows(padded, kernel_size, stride, dilation)
    flat = windows.reshape(*windows.shape[:4], -1)
    first = np.argmax(flat, axis=-1)[..., None]
    onehot = np.arange(flat.shape[-1]) == first
    g_windows = (onehot * output_grad[..., None]).reshape(windows.shape)
    g_padded = _scatter_windows(g_windows, padded.shape, stride, dilation)
    return _crop(g_padded, pads), None, None, None, None


def avg_pool2d(input: Array, kernel_size: Ints, stride: Ints, padding: Ints) -> Array:
    padded = _pad(input, [(p, p) for p in padding])
    return _windows(padded, kernel_size, stride, (1, 1)).mean(axis=(-2, -1))


def avg_pool2d_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    needs: Needs = None,
) -> tuple[Grad, None, None, None]:
    if not wants(needs, 0, input):
        return None, None, None, None
    pads = [(p, p) for p in padding]
    shape = (
        *input.shape[:2],
        *(n + 2 * p for n, p in zip(input.shape[2:], padding, strict=False)),
    )
    scaled = output_grad / (kernel_size[0] * kernel_size[1])
    g_windows = np.broadcast_to(scaled[..., None, None], (*scaled.shape, *kernel_size))
    g_padded = _scatter_windows(g_windows, shape, stride, (1, 1))
    return _crop(g_padded, pads), None, None, None


def _cells(input: Array, output_size: tuple[int | None, ...]) -> list[list[Any]]:
    sizes = [s or n for s, n in zip(output_size, input.shape[2:], strict=True)]
    return [adaptive_bounds(n, s) for n, s in zip(input.shape[2:], sizes, strict=True)]


def adaptive_avg_pool2d(input: Array, output_size: tuple[int | None, ...]) -> Array:
    rows, cols = _cells(input, output_size)
    out = np.empty((*input.shape[:2], len(rows), len(cols)), dtype=input.dtype)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            out[:, :, i, j] = input[:, :, r0:r1, c0:c1].mean(axis=(-2, -1))
    return out


def adaptive_avg_pool2d_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    output_size: tuple[int | None, ...],
    needs: Needs = None,
) -> tuple[Grad, None]:
    if not wants(needs, 0, input):
        return None, None
    rows, cols = _cells(input, output_size)
    grad = np.zeros_like(input)
    for i, (r0, r1) in enumerate(rows):
        for j, (c0, c1) in enumerate(cols):
            share = output_grad[:, :, i, j, None, None] / ((r1 - r0) * (c1 - c0))
            grad[:, :, r0:r1, c0:c1] += share
    return grad, None


# -- embedding, attention, dropout, padding --------------------------------------------


def check_indices(op: str, what: str, indices: Array, bound: int) -> None:
    # Computed indices are checked here; evaluate checks input ones (naming the key).
    if indices.size and (indices.min() < 0 or indices.max() >= bound):
        msg = (
            f"{op}: {what} must be in [0, {bound}), got min {indices.min()} max "
            f"{indices.max()}; negative indices do not count from the end."
        )
        raise IndexRangeError(msg)


def embedding(input: Array, weight: Array) -> Array:
    check_indices("embedding", "ids", input, weight.shape[0])
    return weight[input]


def embedding_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    weight: Array,
    needs: Needs = None,
) -> tuple[None, Grad]:
    if not wants(needs, 1, weight):
        return None, None
    grad = np.zeros_like(weight)
    np.add.at(grad, input.reshape(-1), output_grad.reshape(-1, weight.shape[1]))
    return None, grad


def _scores(
    query: Array, key: Array, mask: Array | None, is_causal: bool, scale: float | None
) -> tuple[Array, float]:
    factor = query.shape[-1] ** -0.5 if scale is None else scale
    scores = query @ np.swapaxes(key, -1, -2) * factor
    if is_causal:
        keep = np.tril(np.ones(scores.shape[-2:], dtype=bool))
        scores = np.where(keep, scores, -np.inf)
    if mask is not None:
        scores = (
            np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
        )
    return _masked_softmax(scores) if mask is not None else softmax(scores, -1), factor


def _masked_softmax(scores: Array) -> Array:
    # A fully masked row gives zeros (as PyTorch), not NaN.
    top = np.max(scores, axis=-1, keepdims=True)
    exp = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
    total = np.sum(exp, axis=-1, keepdims=True)
    return exp / np.where(total == 0, 1.0, total)


def scaled_dot_product_masked(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None,
    is_causal: bool,
    scale: float | None,
) -> Array:
    return _scores(query, key, mask, is_causal, scale)[0] @ value


def scaled_dot_product_masked_vjp(
    output_grad: Array,
    output: Array,
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None,
    is_causal: bool,
    scale: float | None,
    needs: Needs = None,
) -> tuple[Grad, Grad, Grad, Grad, None, None]:
    probs, factor = _scores(query, key, mask, is_causal, scale)
    g_value = None
    if wants(needs, 2, value):
        g_value = reduce_to(np.swapaxes(probs, -1, -2) @ output_grad, value)
    g_probs = output_grad @ np.swapaxes(value, -1, -2)
    g_scores = probs * (g_probs - np.sum(g_probs * probs, axis=-1, keepdims=True))
    g_query = (
        reduce_to(g_scores @ key * factor, query) if wants(needs, 0, query) else None
    )
    g_key = None
    if wants(needs, 1, key):
        g_key = reduce_to(np.swapaxes(g_scores, -1, -2) @ query * factor, key)
    g_mask = None
    if mask is not None and mask.dtype != bool and wants(needs, 3, mask):
        g_mask = reduce_to(g_scores, mask)
    return g_query, g_key, g_value, g_mask, None, None


def scaled_dot_product(
    query: Array, key: Array, value: Array, is_causal: bool, scale: float | None
) -> Array:
    return scaled_dot_product_masked(query, key, value, None, is_causal, scale)


def scaled_dot_product_vjp(
    output_grad: Array,
    output: Array,
    query: Array,
    key: Array,
    value: Array,
    is_causal: bool,
    scale: float | None,
    needs: Needs = None,
) -> tuple[Grad, Grad, Grad, None, None]:
    needs3 = None if needs is None else (*needs[:3], False)
    grads = scaled_dot_product_masked_vjp(
        output_grad, output, query, key, value, None, is_causal, scale, needs3
    )
    return (*grads[:3], None, None)


# Dropout draws from this generator; reseed it with seed_dropout.
_DROPOUT_RNG = [np.random.default_rng(0)]


def seed_dropout(seed: int) -> None:
    """Reseed the generator behind the NumPy backend's ``dropout``."""
    _DROPOUT_RNG[0] = np.random.default_rng(seed)


def dropout(input: Array, p: float, inference: bool) -> Array:
    if inference or p == 0.0:
        return input
    keep = _DROPOUT_RNG[0].random(input.shape) >= p
    return np.where(keep, input / (1.0 - p), 0.0).astype(input.dtype, copy=False)


def dropout_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    p: float,
    inference: bool,
    needs: Needs = None,
) -> tuple[Grad, None, None]:
    if not wants(needs, 0, input):
        return None, None, None
    if inference or p == 0.0:
        return output_grad, None, None
    # The mask is not kept: a kept element is non-zero in output unless input was 0
    # there, and a dropped input-0 element gets the kept scale (its input is 0).
    kept = (output != 0) | (input == 0)
    return np.where(kept, output_grad / (1.0 - p), 0.0), None, None


def _pad_index(size: int, before: int, after: int, mode: str) -> Array:
    index = np.arange(-before, size + after)
    if mode == "edge":
        return np.clip(index, 0, size - 1)
    period = 2 * (size - 1)
    index = np.abs(index) % period if period else np.zeros_like(index)
    return np.where(index >= size, period - index, index)


def pad(
    input: Array, pad_width: tuple[tuple[int, int], ...], mode: str, value: float
) -> Array:
    if mode == "constant":
        return np.pad(input, pad_width, constant_values=value)
    return np.pad(input, pad_width, mode="edge" if mode == "edge" else "reflect")


def pad_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    pad_width: tuple[tuple[int, int], ...],
    mode: str,
    value: float,
    needs: Needs = None,
) -> tuple[Grad, None, None, None]:
    if not wants(needs, 0, input):
        return None, None, None, None
    grad = output_grad
    for axis, (before, after) in enumerate(pad_width):
        if not before and not after:
            continue
        size = input.shape[axis]
        if mode == "constant":
            grad = np.take(grad, np.arange(before, before + size), axis=axis)
            continue
        moved = np.moveaxis(grad, axis, 0)
        summed = np.zeros((size, *moved.shape[1:]), dtype=grad.dtype)
        np.add.at(summed, _pad_index(size, before, after, mode), moved)
        grad = np.moveaxis(summed, 0, axis)
    return grad, None, None, None


LOWERINGS: dict[str, Entry] = {
    "softmax": (softmax, vjp_from_rules(Softmax.grad_rules)),
    "log_softmax": (log_softmax, vjp_from_rules(LogSoftmax.grad_rules)),
    "conv1d": (conv1d, conv1d_vjp),
    "conv2d": (conv2d, conv2d_vjp),
    "max_pool2d": (max_pool2d, max_pool2d_vjp),
    "avg_pool2d": (avg_pool2d, avg_pool2d_vjp),
    "adaptive_avg_pool2d": (adaptive_avg_pool2d, adaptive_avg_pool2d_vjp),
    "embedding": (embedding, embedding_vjp),
    "scaled_dot_product": (scaled_dot_product, scaled_dot_product_vjp),
    "scaled_dot_product_masked": (
        scaled_dot_product_masked,
        scaled_dot_product_masked_vjp,
    ),
    "dropout": (dropout, dropout_vjp),
    "pad": (pad, pad_vjp),
}
