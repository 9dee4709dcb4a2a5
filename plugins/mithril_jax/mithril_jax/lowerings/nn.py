from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax


def softmax(input: jax.Array, axis: int) -> jax.Array:
    return jax.nn.softmax(input, axis=axis)


def log_softmax(input: jax.Array, axis: int) -> jax.Array:
    return jax.nn.log_softmax(input, axis=axis)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "softmax": softmax,
    "log_softmax": log_softmax,
}
