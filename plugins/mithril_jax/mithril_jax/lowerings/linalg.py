from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def matrix_multiply(left: jax.Array, right: jax.Array) -> jax.Array:
    return jnp.matmul(left, right)


LOWERINGS: dict[str, Callable[..., Any]] = {"matrix_multiply": matrix_multiply}
