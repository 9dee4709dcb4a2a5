from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def squared_error(input: jax.Array, target: jax.Array) -> jax.Array:
    return (input - target) ** 2


def absolute_error(input: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.abs(input - target)


def _log_q(input: jax.Array, axis: int, input_type: str) -> jax.Array:
    if input_type == "logits":
        return jax.nn.log_softmax(input, axis=axis)
    return jnp.log(input) if input_type == "probs" else input


def cross_entropy(
    input: jax.Array, target: jax.Array, axis: int, input_type: str
) -> jax.Array:
    log_q = _log_q(input, axis, input_type)
    picked = jnp.take_along_axis(log_q, jnp.expand_dims(target, axis), axis=axis)
    return -jnp.squeeze(picked, axis)


def cross_entropy_soft(
    input: jax.Array, target: jax.Array, axis: int, input_type: str
) -> jax.Array:
    return -jnp.sum(target * _log_q(input, axis, input_type), axis=axis)


def binary_cross_entropy(
    input: jax.Array, target: jax.Array, input_type: str
) -> jax.Array:
    if input_type == "logits":
        return jnp.maximum(input, 0) - input * target + jnp.log1p(jnp.exp(-abs(input)))
    log_p = jnp.maximum(jnp.log(input), -100.0)
    log_1mp = jnp.maximum(jnp.log(1 - input), -100.0)
    return -(target * log_p + (1 - target) * log_1mp)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "squared_error": squared_error,
    "absolute_error": absolute_error,
    "cross_entropy": cross_entropy,
    "cross_entropy_soft": cross_entropy_soft,
    "binary_cross_entropy": binary_cross_entropy,
}
