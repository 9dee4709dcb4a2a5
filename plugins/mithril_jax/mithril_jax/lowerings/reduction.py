from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Axis = int | tuple[int, ...] | None


def sum(input: jax.Array, axis: Axis, keepdim: bool) -> jax.Array:
    return jnp.sum(input, axis=axis, keepdims=keepdim)


def mean(input: jax.Array, axis: Axis, keepdim: bool) -> jax.Array:
    return jnp.mean(input, axis=axis, keepdims=keepdim)


def max(input: jax.Array, axis: Axis, keepdim: bool) -> jax.Array:
    return jnp.max(input, axis=axis, keepdims=keepdim)


def min(input: jax.Array, axis: Axis, keepdim: bool) -> jax.Array:
    return jnp.min(input, axis=axis, keepdims=keepdim)


def variance(input: jax.Array, axis: Axis, keepdim: bool, correction: int) -> jax.Array:
    return jnp.var(input, axis=axis, ddof=correction, keepdims=keepdim)


def arg_max(input: jax.Array, axis: int | None, keepdim: bool) -> jax.Array:
    return jnp.argmax(input, axis=axis, keepdims=keepdim).astype(jnp.int64)


def arg_min(input: jax.Array, axis: int | None, keepdim: bool) -> jax.Array:
    return jnp.argmin(input, axis=axis, keepdims=keepdim).astype(jnp.int64)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "sum": sum,
    "mean": mean,
    "max": max,
    "min": min,
    "variance": variance,
    "arg_max": arg_max,
    "arg_min": arg_min,
}
