from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import EllipsisType
from typing import Any

import jax
import jax.numpy as jnp

Index = int | slice | EllipsisType | tuple[Any, ...] | None


def reshape(input: jax.Array, shape: Sequence[int]) -> jax.Array:
    return jnp.reshape(input, tuple(shape))


def transpose(input: jax.Array, axes: Sequence[int] | None) -> jax.Array:
    return jnp.transpose(input, None if axes is None else tuple(axes))


def flatten(input: jax.Array, start_dim: int, end_dim: int) -> jax.Array:
    if input.ndim == 0:
        return jnp.reshape(input, (1,))
    start, end = start_dim % input.ndim, end_dim % input.ndim
    dims = input.shape
    return jnp.reshape(
        input, (*dims[:start], math.prod(dims[start : end + 1]), *dims[end + 1 :])
    )


def concat(input: Sequence[jax.Array], axis: int | None) -> jax.Array:
    return jnp.concatenate(list(input), axis=axis)


def split(input: jax.Array, split_size: int, axis: int) -> list[jax.Array]:
    return jnp.split(
        input, list(range(split_size, input.shape[axis], split_size)), axis=axis
    )


def indexer(input: Any, index: Index) -> Any:
    return input[index]


def shape(input: jax.Array) -> tuple[int, ...]:
    return tuple(int(dim) for dim in input.shape)


def to_list(*inputs: Any) -> list[Any]:
    return list(inputs)


def to_tuple(*inputs: Any) -> tuple[Any, ...]:
    return inputs


def buffer(input: Any) -> Any:
    return input


def unsqueeze(input: jax.Array, axis: int) -> jax.Array:
    return jnp.expand_dims(input, axis)


def squeeze(input: jax.Array, axis: int | tuple[int, ...] | None) -> jax.Array:
    return jnp.squeeze(input, axis)


def expand(input: jax.Array, shape: Sequence[int]) -> jax.Array:
    lead = len(shape) - input.ndim
    dims = [input.shape[i - lead] if d == -1 else d for i, d in enumerate(shape)]
    return jnp.broadcast_to(input, tuple(dims))


LOWERINGS: dict[str, Callable[..., Any]] = {
    "reshape": reshape,
    "transpose": transpose,
    "flatten": flatten,
    "concat": concat,
    "split": split,
    "indexer": indexer,
    "shape": shape,
    "to_list": to_list,
    "to_tuple": to_tuple,
    "buffer": buffer,
    "unsqueeze": unsqueeze,
    "squeeze": squeeze,
    "expand": expand,
}
