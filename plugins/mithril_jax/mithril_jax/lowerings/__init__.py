"""JAX lowerings of every core primitive: the shared array-API table instantiated
with ``jax.numpy``, and JAX's own in the family tables where it differs."""

from __future__ import annotations

import jax.numpy as jnp

from mithril_core.backends import array_api
from mithril_core.primitives.lowering import Lowering, merge_lowerings
from mithril_jax.lowerings import elementwise, linalg, loss, nn, reduction, shape

LOWERINGS: dict[str, Lowering] = merge_lowerings(
    "jax",
    {
        module.__name__: module.LOWERINGS
        for module in (elementwise, reduction, shape, linalg, nn, loss)
    },
    shared=array_api.lowerings(jnp),
)

__all__ = ["LOWERINGS"]
