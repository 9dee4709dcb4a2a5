from __future__ import annotations

import math
from collections.abc import Sequence
from types import EllipsisType
from typing import Any, cast

import numpy as np

from mithril_core.backends.numpy.lowerings._utils import (
    Array,
    Entry,
    Grad,
    Needs,
    _needs,
    is_float,
    unbroadcast,
    wants,
)

Index = int | slice | EllipsisType | None | Array | tuple[Any, ...]


def reshape(input: Array, shape: tuple[int, ...]) -> Array:
    return np.reshape(input, shape)


def reshape_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    shape: tuple[int, ...],
    needs: Needs = None,
) -> tuple[Grad, None]:
    return (output_grad.reshape(input.shape) if wants(needs, 0, input) else None), None


def transpose(input: Array, axes: tuple[int, ...] | None) -> Array:
    return np.transpose(input, axes)


def transpose_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    axes: tuple[int, ...] | None,
    needs: Needs = None,
) -> tuple[Grad, None]:
    if not wants(needs, 0, input):
        return None, None
    inverse = None if axes is None else np.argsort([a % input.ndim for a in axes])
    return np.transpose(output_grad, inverse), None


def flatten(input: Array, start_dim: int, end_dim: int) -> Array:
    if input.ndim == 0:
        return input.reshape(1)
    start, end = start_dim % input.ndim, end_dim % input.ndim + 1
    merged = math.prod(input.shape[start:end])
    return input.reshape(*input.shape[:start], merged, *input.shape[end:])


def flatten_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    start_dim: int,
    end_dim: int,
    needs: Needs = None,
) -> tuple[Grad, None, None]:
    grad = output_grad.reshape(input.shape) if wants(needs, 0, input) else None
    return grad, None, None


def concat(input: Sequence[Array], axis: int | None) -> Array:
    return np.concatenate(input, axis=axis)


def concat_vjp(
    output_grad: Array,
    output: Array,
    input: Sequence[Array],
    axis: int | None,
    needs: Needs = None,
) -> tuple[list[Grad] | None, None]:
    if not _needs(needs, 0):
        return None, None
    sizes = [np.size(x) if axis is None else np.shape(x)[axis] for x in input]
    chunks = np.split(output_grad, np.cumsum(sizes[:-1]), axis=axis or 0)
    grads = [g.reshape(np.shape(x)) for g, x in zip(chunks, input, strict=True)]
    return [g if is_float(x) else None for g, x in zip(grads, input, strict=True)], None


def split(input: Array, split_size: int, axis: int) -> list[Array]:
    return np.split(input, range(split_size, input.shape[axis], split_size), axis=axis)


def split_vjp(
    output_grad: Sequence[Grad],
    output: Sequence[Array],
    input: Array,
    split_size: int,
    axis: int,
    needs: Needs = None,
) -> tuple[Grad, None, None]:
    if not wants(needs, 0, input):
        return None, None, None
    grads = [
        np.zeros_like(o) if g is None else g
        for g, o in zip(output_grad, output, strict=True)
    ]
    return np.concatenate(grads, axis=axis), None, None


def _has_int_array(index: Index) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    return any(
        isinstance(p, list | np.ndarray) and np.asarray(p).dtype.kind in "iu"
        for p in parts
    )


def indexer(input: Array | Sequence[Any], index: Index) -> Any:
    # A list or tuple value is only ever indexed by an int or a slice.
    return input[index]  # type: ignore[index]


def indexer_vjp(
    output_grad: Any,
    output: Any,
    input: Array | Sequence[Any],
    index: Index,
    needs: Needs = None,
) -> tuple[Any, None]:
    if not _needs(needs, 0):
        return None, None
    if isinstance(input, list | tuple):
        # A list or tuple value is only ever indexed by an int or a slice.
        return _sequence_grad(output_grad, len(input), cast("int | slice", index)), None
    if not is_float(input):
        return None, None
    grad = np.zeros_like(input)
    if _has_int_array(index):
        # numpy's stub takes only integer indices; add.at takes any basic index too.
        np.add.at(grad, index, output_grad)  # type: ignore[arg-type]
    else:
        grad[index] = output_grad
    return grad, None


def _sequence_grad(output_grad: Any, length: int, index: int | slice) -> list[Any]:
    grads: list[Any] = [None] * length
    if isinstance(index, slice):
        for i, g in zip(range(length)[index], output_grad, strict=True):
            grads[i] = g
    else:
        grads[index] = output_grad
    return grads


def shape(input: Array) -> tuple[int, ...]:
    return tuple(int(n) for n in np.shape(input))


def shape_vjp(
    output_grad: Any, output: tuple[int, ...], input: Array, needs: Needs = None
) -> tuple[None]:
    return (None,)


def to_list(*inputs: Any) -> list[Any]:
    return list(inputs)


def to_list_vjp(
    output_grad: Sequence[Any], output: list[Any], *inputs: Any, needs: Needs = None
) -> tuple[Any, ...]:
    return tuple(g if _needs(needs, i) else None for i, g in enumerate(output_grad))


def to_tuple(*inputs: Any) -> tuple[Any, ...]:
    return inputs


def to_tuple_vjp(
    output_grad: Sequence[Any],
    output: tuple[Any, ...],
    *inputs: Any,
    needs: Needs = None,
) -> tuple[Any, ...]:
    return tuple(g if _needs(needs, i) else None for i, g in enumerate(output_grad))


def buffer(input: Any) -> Any:
    return input


def buffer_vjp(
    output_grad: Any, output: Any, input: Any, needs: Needs = None
) -> tuple[Any]:
    return (output_grad if _needs(needs, 0) else None,)


def unsqueeze(input: Array, axis: int) -> Array:
    return np.expand_dims(input, axis)


def unsqueeze_vjp(
    output_grad: Array, output: Array, input: Array, axis: int, needs: Needs = None
) -> tuple[Grad, None]:
    return (output_grad.reshape(input.shape) if wants(needs, 0, input) else None), None


def squeeze(input: Array, axis: int | tuple[int, ...] | None) -> Array:
    return np.squeeze(input, axis)


def squeeze_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    axis: int | tuple[int, ...] | None,
    needs: Needs = None,
) -> tuple[Grad, None]:
    return (output_grad.reshape(input.shape) if wants(needs, 0, input) else None), None


def expand(input: Array, shape: tuple[int, ...]) -> Array:
    lead = len(shape) - np.ndim(input)
    target = [np.shape(input)[i - lead] if n == -1 else n for i, n in enumerate(shape)]
    return np.broadcast_to(input, target)


def expand_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    shape: tuple[int, ...],
    needs: Needs = None,
) -> tuple[Grad, None]:
    return (
        unbroadcast(output_grad, input.shape) if wants(needs, 0, input) else None
    ), None


LOWERINGS: dict[str, Entry] = {
    "reshape": (reshape, reshape_vjp),
    "transpose": (transpose, transpose_vjp),
    "flatten": (flatten, flatten_vjp),
    "concat": (concat, concat_vjp),
    "split": (split, split_vjp),
    "indexer": (indexer, indexer_vjp),
    "shape": (shape, shape_vjp),
    "to_list": (to_list, to_list_vjp),
    "to_tuple": (to_tuple, to_tuple_vjp),
    "buffer": (buffer, buffer_vjp),
    "unsqueeze": (unsqueeze, unsqueeze_vjp),
    "squeeze": (squeeze, squeeze_vjp),
    "expand": (expand, expand_vjp),
}
