from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mithril_core.primitives.nn import adaptive_bounds, conv_padding

Ints = tuple[int, ...]
_SPECS = {1: ("NCH", "OIH", "NCH"), 2: ("NCHW", "OIHW", "NCHW")}


def softmax(input: jax.Array, axis: int) -> jax.Array:
    return jax.nn.softmax(input, axis=axis)


def log_softmax(input: jax.Array, axis: int) -> jax.Array:
    return jax.nn.log_softmax(input, axis=axis)


def _conv(
    input: jax.Array,
    weight: jax.Array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> jax.Array:
    return lax.conv_general_dilated(
        input,
        weight,
        window_strides=stride,
        padding=conv_padding(padding, weight.shape[2:], dilation),
        rhs_dilation=dilation,
        dimension_numbers=_SPECS[weight.ndim - 2],
        feature_group_count=groups,
    )


def conv1d(
    input: jax.Array,
    weight: jax.Array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> jax.Array:
    return _conv(input, weight, stride, padding, dilation, groups)


def conv2d(
    input: jax.Array,
    weight: jax.Array,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> jax.Array:
    return _conv(input, weight, stride, padding, dilation, groups)


def _pool(
    input: jax.Array,
    init: float,
    op: Any,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
) -> jax.Array:
    return lax.reduce_window(
        input,
        np.array(init, input.dtype),  # a constant, so jit keeps the VJP of max/add
        op,
        (1, 1, *kernel_size),
        (1, 1, *stride),
        ((0, 0), (0, 0), *((p, p) for p in padding)),
        window_dilation=(1, 1, *dilation),
    )


def max_pool2d(
    input: jax.Array, kernel_size: Ints, stride: Ints, padding: Ints, dilation: Ints
) -> jax.Array:
    if dilation == (1, 1):
        return _pool(input, -jnp.inf, lax.max, kernel_size, stride, padding, dilation)
    # JAX has no VJP for dilated max windows: take the max over strided slices.
    padded = jnp.pad(
        input, ((0, 0), (0, 0), *((p, p) for p in padding)), constant_values=-jnp.inf
    )
    out = [
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, k, s, p, d in zip(
            input.shape[2:], kernel_size, stride, padding, dilation, strict=False
        )
    ]
    slices = [
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
    return jnp.max(jnp.stack(slices, axis=-1), axis=-1)


def avg_pool2d(
    input: jax.Array, kernel_size: Ints, stride: Ints, padding: Ints
) -> jax.Array:
    total = _pool(input, 0.0, lax.add, kernel_size, stride, padding, (1, 1))
    return total / (kernel_size[0] * kernel_size[1])


def adaptive_avg_pool2d(input: jax.Array, output_size: Any) -> jax.Array:
    sizes = [s or n for s, n in zip(output_size, input.shape[2:], strict=True)]
    rows, cols = (
        adaptive_bounds(n, s) for n, s in zip(input.shape[2:], sizes, strict=False)
    )
    cells = [
        input[:, :, r0:r1, c0:c1].mean(axis=(-2, -1))
        for (r0, r1), (c0, c1) in itertools.product(rows, cols)
    ]
    return jnp.stack(cells, axis=-1).reshape(*input.shape[:2], *sizes)


def embedding(input: jax.Array, weight: jax.Array) -> jax.Array:
    # Ids computed in the graph are not checked before dispatch (data ids are) and a
    # jitted function cannot raise: an id outside [0, rows) gives a NaN row and no
    # gradient, never another row (MLX does the same).
    valid = (input >= 0) & (input < weight.shape[0])
    rows = jnp.take(weight, jnp.where(valid, input, 0), axis=0, mode="clip")
    return jnp.where(valid[..., None], rows, jnp.nan)


def scaled_dot_product_masked(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    mask: jax.Array | None,
    is_causal: bool,
    scale: float | None,
) -> jax.Array:
    factor = query.shape[-1] ** -0.5 if scale is None else scale
    scores = query @ jnp.swapaxes(key, -1, -2) * factor
    if is_causal:
        keep = jnp.tril(jnp.ones(scores.shape[-2:], dtype=bool))
        scores = jnp.where(keep, scores, -jnp.inf)
    if mask is None:
        return jax.nn.softmax(scores, axis=-1) @ value
    scores = jnp.where(mask, scores, -jnp.inf) if mask.dtype == bool else scores + mask
    # A fully masked row gives zeros (as PyTorch), not NaN.
    top = lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
    exp = jnp.exp(scores - jnp.where(jnp.isfinite(top), top, 0.0))
    total = jnp.sum(exp, axis=-1, keepdims=True)
    return (exp / jnp.where(total == 0, 1.0, total)) @ value


def scaled_dot_product(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    is_causal: bool,
    scale: float | None,
) -> jax.Array:
    return scaled_dot_product_masked(query, key, value, None, is_causal, scale)


# A key per call: under jax.jit the counter is read once per trace, so a jitted
# function reuses one mask.
_DROPOUT_CALLS = itertools.count()


def dropout(input: jax.Array, p: float, inference: bool) -> jax.Array:
    if inference or p == 0.0:
        return input
    key = jax.random.fold_in(jax.random.PRNGKey(0), next(_DROPOUT_CALLS))
    keep = jax.random.bernoulli(key, 1.0 - p, input.shape)
    return jnp.where(keep, input / (1.0 - p), jnp.zeros_like(input))


def pad(
    input: jax.Array,
    pad_width: tuple[tuple[int, int], ...],
    mode: str,
    value: float,
) -> jax.Array:
    if mode == "constant":
        return jnp.pad(input, pad_width, constant_values=value)
    return jnp.pad(input, pad_width, mode=mode)


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
