from __future__ import annotations

from collections.abc import Callable, Sequence
from types import EllipsisType
from typing import Any

import mlx.core as mx

Index = int | slice | EllipsisType | tuple[Any, ...] | None


def reshape(input: mx.array, shape: Sequence[int]) -> mx.array:
    return mx.reshape(input, list(shape))


def transpose(input: mx.array, axes: Sequence[int] | None) -> mx.array:
    return mx.transpose(input) if axes is None else mx.transpose(input, list(axes))


def flatten(input: mx.array, start_dim: int, end_dim: int) -> mx.array:
    if input.ndim == 0:
        return mx.reshape(input, [1])
    return mx.flatten(input, start_dim, end_dim)


def concat(input: Sequence[mx.array], axis: int | None) -> mx.array:
    if axis is None:
        return mx.concatenate([mx.flatten(part) for part in input])
    return mx.concatenate(list(input), axis=axis)


def split(input: mx.array, split_size: int, axis: int) -> list[mx.array]:
    indices = list(range(split_size, input.shape[axis], split_size))
    return list(mx.split(input, indices, axis=axis))


def indexer(input: Any, index: Index) -> Any:
    return input[index]


def shape(input: mx.array) -> tuple[int, ...]:
    return tuple(int(dim) for dim in input.shape)


def to_list(*inputs: Any) -> list[Any]:
    return list(inputs)


def to_tuple(*inputs: Any) -> tuple[Any, ...]:
    return inputs


def buffer(input: Any) -> Any:
    return input


def unsqueeze(input: mx.array, axis: int) -> mx.array:
    return mx.expand_dims(input, axis)


def squeeze(input: mx.array, axis: int | tuple[int, ...] | None) -> mx.array:
    return mx.squeeze(input) if axis is None else mx.squeeze(input, axis)


def expand(input: mx.array, shape: Sequence[int]) -> mx.array:
    lead = len(shape) - input.ndim
    dims = [input.shape[i - lead] if d == -1 else d for i, d in enumerate(shape)]
    return mx.broadcast_to(input, dims)


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
