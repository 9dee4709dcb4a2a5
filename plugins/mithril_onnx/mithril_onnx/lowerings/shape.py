from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mithril_onnx.export import INT64, OnnxBuilder, Sym

_END = np.iinfo(np.int64).max


def _rank(g: OnnxBuilder, input: Sym) -> int:
    if input.rank is None:
        g.fail(f"the rank of {input.name} is unknown; give input shapes to compile")
    return input.rank


def reshape(g: OnnxBuilder, input: Sym, shape: Sequence[Any]) -> Any:
    items = list(shape)
    zero = any(not isinstance(i, Sym) and int(i) == 0 for i in items)
    return g.op("Reshape", input, g.shape_tensor(items), allowzero=int(zero))


def transpose(g: OnnxBuilder, input: Sym, axes: Sequence[int] | None) -> Any:
    if axes is None:
        axes = tuple(reversed(range(_rank(g, input))))
    return g.op("Transpose", input, perm=[int(a) for a in axes])


def flatten(g: OnnxBuilder, input: Sym, start_dim: int, end_dim: int) -> Any:
    rank = _rank(g, input)
    if rank == 0:
        return g.op("Reshape", input, g.ints([1]))
    start, end = start_dim % rank, end_dim % rank
    dims = g.dims(input)
    middle = dims[start : end + 1]
    joined: Any = -1
    if all(isinstance(d, int) for d in middle):
        joined = math.prod(middle)
    return g.op(
        "Reshape", input, g.shape_tensor([*dims[:start], joined, *dims[end + 1 :]])
    )


def concat(g: OnnxBuilder, input: Sequence[Any], axis: int | None) -> Any:
    parts = g.promote(*input)
    if axis is None:
        parts = [g.op("Reshape", p, g.ints([-1])) for p in parts]
        axis = 0
    return g.op("Concat", *parts, axis=axis)


class Chunks:
    """The chunks of a split whose size is known only at run time (``split_size``
    from a symbolic dim), read by an index: ``chunks[i]`` slices chunk ``i``."""

    def __init__(self, g: OnnxBuilder, input: Sym, size: Sym, axis: int) -> None:
        self.g, self.input, self.size, self.axis = g, input, size, axis
        self.path = g.path

    def __getitem__(self, index: Any) -> Any:
        g = self.g
        if not isinstance(index, int) or index < 0:
            g.fail(
                f"a chunk of {self.input.name} split by a run-time size is read by "
                f"index {index!r}; only non-negative int indices are supported"
            )
        size = g.cast(self.size, INT64)
        start = g.op("Mul", size, index)
        end = g.op("Add", start, size)
        one = g.ints([1])
        return g.op(
            "Slice",
            self.input,
            g.op("Reshape", start, one),
            g.op("Reshape", end, one),
            g.ints([self.axis]),
        )


def split(g: OnnxBuilder, input: Sym, split_size: Any, axis: int) -> Any:
    rank = _rank(g, input)
    if isinstance(split_size, Sym):
        return Chunks(g, input, split_size, axis)
    size = input.shape[axis % rank]  # type: ignore[index]
    if size is None:
        g.fail(f"the size of axis {axis} of {input.name} must be known to split it")
    sizes = [min(split_size, size - start) for start in range(0, size, split_size)]
    if len(sizes) == 1:
        return [input]
    parts = g.op("Split", input, g.ints(sizes), axis=axis, outputs=len(sizes))
    return list(parts)


def indexer(g: OnnxBuilder, input: Any, index: Any) -> Any:
    if not isinstance(input, Sym):  # a list, a tuple or a shape's dims
        return input[index]
    if isinstance(index, Sym | np.ndarray):
        return g.op("Gather", input, g.cast(index, INT64), axis=0)
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, Sym | np.ndarray | list) for i in items):
        g.fail("indexing with int arrays inside a tuple index is not supported")
    rank = _rank(g, input)
    taken = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for item in items:
        if item is Ellipsis:
            expanded.extend([slice(None)] * (rank - taken))
        else:
            expanded.append(item)
    starts, ends, axes, steps, squeeze, new = [], [], [], [], [], []
    axis = 0
    out_axis = 0
    for item in expanded:
        if item is None:
            new.append(out_axis)
            out_axis += 1
            continue
        if isinstance(item, slice):
            if item != slice(None):
                step = 1 if item.step is None else int(item.step)
                start = (
                    item.start if item.start is not None else (0 if step > 0 else -1)
                )
                stop = item.stop
                if stop is None:
                    stop = _END if step > 0 else -_END
                starts.append(int(start))
                ends.append(int(stop))
                axes.append(axis)
                steps.append(step)
            out_axis += 1
        else:
            position = int(item)
            starts.append(position)
            ends.append(position + 1 if position != -1 else _END)
            axes.append(axis)
            steps.append(1)
            squeeze.append(axis)
        axis += 1
    result = input
    if axes:
        result = g.op(
            "Slice", result, g.ints(starts), g.ints(ends), g.ints(axes), g.ints(steps)
        )
    if squeeze:
        result = g.op("Squeeze", result, g.ints(squeeze))
    if new:
        result = g.op("Unsqueeze", result, g.ints(new))
    return result


def shape(g: OnnxBuilder, input: Sym) -> tuple[Any, ...]:
    return tuple(g.dims(input))


def to_list(g: OnnxBuilder, *inputs: Any) -> list[Any]:
    return list(inputs)


def to_tuple(g: OnnxBuilder, *inputs: Any) -> tuple[Any, ...]:
    return inputs


def buffer(g: OnnxBuilder, input: Any) -> Any:
    return input


def unsqueeze(g: OnnxBuilder, input: Sym, axis: int) -> Any:
    return g.op("Unsqueeze", input, g.ints([axis]))


def squeeze(g: OnnxBuilder, input: Sym, axis: int | tuple[int, ...] | None) -> Any:
    if axis is None:
        if input.shape is None or None in input.shape:
            g.fail("squeeze with axis=None needs every dim of the input known")
        axis = tuple(i for i, d in enumerate(input.shape) if d == 1)
        if not axis:
            return input
    axes = [axis] if isinstance(axis, int) else list(axis)
    return g.op("Squeeze", input, g.ints(axes))


def expand(g: OnnxBuilder, input: Sym, shape: Sequence[Any]) -> Any:
    # -1 keeps the input's dim: ONNX Expand broadcasts a 1 to it.
    items = [1 if not isinstance(d, Sym) and d == -1 else d for d in shape]
    return g.op("Expand", input, g.shape_tensor(items))


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
