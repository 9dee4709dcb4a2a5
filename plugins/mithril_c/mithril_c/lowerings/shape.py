from __future__ import annotations

import math
from typing import Any

import numpy as np

from mithril_c._emit import Emitter
from mithril_c._fuse import broadcast_strides, contiguous_strides
from mithril_c.lowerings._types import CLowering, dtypes
from mithril_core.errors import CompileError, ShapeError
from mithril_core.physical.flat import Node, Value
from mithril_core.primitives.lowering import Lowering

Needs = tuple[bool, ...]


@dtypes("any")
def reshape(ctx: Emitter, node: Node) -> None:
    ctx.alias(node, node.input("input"))


def reshape_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    ctx.grad_alias(node, node.input("input"))


def _permutation(ctx: Emitter, node: Node) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shape = ctx.shape(node.input("input"))
    axes = node.input("axes").constant
    rank = len(shape)
    perm = tuple(reversed(range(rank))) if axes is None else [a % rank for a in axes]
    strides = contiguous_strides(shape)
    return tuple(shape[p] for p in perm), tuple(strides[p] for p in perm)


@dtypes("any")
def transpose(ctx: Emitter, node: Node) -> None:
    shape, strides = _permutation(ctx, node)
    value = node.input("input")
    ctx.gather(value, ctx.out(node), ctx.ptr(value), shape, strides)


def transpose_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    shape, strides = _permutation(ctx, node)
    pointer, accumulate = ctx.target(node.input("input"))
    ctx.line(
        f"mc_scatter({pointer}, {ctx.gout(node)}, {len(shape)}, {ctx.longs(shape)}, "
        f"{ctx.longs(strides)}, {int(accumulate)});"
    )


@dtypes("any")
def expand(ctx: Emitter, node: Node) -> None:
    shape = ctx.shape(node.output)
    value = node.input("input")
    strides = broadcast_strides(ctx.shape(value), shape)
    ctx.gather(value, ctx.out(node), ctx.ptr(value), shape, strides)


def expand_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    shape = ctx.shape(node.output)
    value = node.input("input")
    strides = broadcast_strides(ctx.shape(value), shape)
    pointer, accumulate = ctx.target(value)
    if not accumulate:
        ctx.line(f"mc_fill({pointer}, {ctx.numel(value)}, 0);")
    ctx.line(
        f"mc_scatter({pointer}, {ctx.gout(node)}, {len(shape)}, {ctx.longs(shape)}, "
        f"{ctx.longs(strides)}, 1);"
    )


def _basic(index: Any) -> bool:
    parts = index if isinstance(index, tuple) else (index,)
    # A bool is an int to Python but a mask to NumPy (a copy, not a view).
    return all(
        p is None
        or p is Ellipsis
        or isinstance(p, slice)
        or (isinstance(p, int | np.integer) and not isinstance(p, bool | np.bool_))
        for p in parts
    )


def _indexed(ctx: Emitter, node: Node) -> tuple[Value, Any]:
    """The tensor indexed and the index; a split's chunk k is a slice of its input."""
    value, index = node.input("input"), node.input("index").constant
    split = ctx.folded(value)
    if split is None:
        return value, index
    source = split.input("input")
    size, axis = split.input("split_size").constant, split.input("axis").constant
    shape = ctx.shape(source)
    axis %= len(shape)
    k = index % -(-shape[axis] // size)
    return source, (slice(None),) * axis + (slice(k * size, (k + 1) * size),)


def _view(ctx: Emitter, node: Node) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    value, index = _indexed(ctx, node)
    shape = ctx.shape(value)
    if not _basic(index):
        msg = (
            f"{node.path}: backend 'c' supports basic indexing only (ints, slices, "
            f"None, ...), not {index!r}."
        )
        raise CompileError(msg)
    # A fake int8 array (never read) gives NumPy's view arithmetic in elements. A
    # trailing Ellipsis keeps a 0-d result a view (x[i] alone is a NumPy scalar, a
    # copy elsewhere in memory).
    fake = np.lib.stride_tricks.as_strided(
        np.zeros(1, dtype=np.int8), shape=shape, strides=contiguous_strides(shape)
    )
    parts = index if isinstance(index, tuple) else (index,)
    if not any(p is Ellipsis for p in parts):
        parts = (*parts, Ellipsis)
    try:
        view = fake[parts]
    except IndexError as exc:
        msg = f"{node.path}: index {index!r} is out of range for shape {list(shape)}."
        raise ShapeError(msg) from exc
    start = fake.__array_interface__["data"][0]
    offset = view.__array_interface__["data"][0] - start
    # Every element the view reaches lies inside the input (else the C would read
    # or write out of bounds).
    steps = [(n - 1) * s for n, s in zip(view.shape, view.strides, strict=True)]
    low = offset + sum(min(0, step) for step in steps)
    high = offset + sum(max(0, step) for step in steps)
    if view.size and (low < 0 or high >= math.prod(shape)):
        msg = f"internal: {node.path}: the view of {index!r} leaves the input."
        raise CompileError(msg)
    return view.shape, view.strides, offset


@dtypes("any")
def indexer(ctx: Emitter, node: Node) -> None:
    shape, strides, offset = _view(ctx, node)
    value = _indexed(ctx, node)[0]
    source = f"{ctx.ptr(value)} + {offset}"
    ctx.gather(value, ctx.out(node), source, shape, strides)


def indexer_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    shape, strides, offset = _view(ctx, node)
    value = _indexed(ctx, node)[0]
    if not ctx.requires(value):
        return
    pointer, accumulate = ctx.target(value)
    if not accumulate:
        ctx.line(f"mc_fill({pointer}, {ctx.numel(value)}, 0);")
    ctx.line(
        f"mc_scatter({pointer} + {offset}, {ctx.gout(node)}, {len(shape)}, "
        f"{ctx.longs(shape)}, {ctx.longs(strides)}, 1);"
    )


def _pieces(ctx: Emitter, node: Node) -> list[tuple[Value, int, tuple[int, ...]]]:
    """(part, element offset in the output, output strides) for each concat part."""
    parts = ctx.parts(node.input("input"))
    axis = node.input("axis").constant
    result: list[tuple[Value, int, tuple[int, ...]]] = []
    offset = 0
    if axis is None:
        for part in parts:
            numel = ctx.numel(part)
            result.append((part, offset, (1,)))
            offset += numel
        return result
    out_shape = ctx.shape(node.output)
    axis %= len(out_shape)
    strides = contiguous_strides(out_shape)
    for part in parts:
        result.append((part, offset * strides[axis], strides))
        offset += ctx.shape(part)[axis]
    return result


def _part_shape(ctx: Emitter, node: Node, part: Value) -> tuple[int, ...]:
    if node.input("axis").constant is None:
        return (ctx.numel(part),)
    return ctx.shape(part)


@dtypes("any")
def concat(ctx: Emitter, node: Node) -> None:
    out = ctx.out(node)
    ctype = ctx.ctype(node.output)
    for part, offset, strides in _pieces(ctx, node):
        shape = _part_shape(ctx, node, part)
        if math.prod(shape) == 0:
            continue
        source = ctx.ptr(part)
        if ctx.ctype(part) != ctype:  # parts of several dtypes: convert first
            source = ctx.temp(node, f"part{offset}", ctx.numel(part), ctype)
            ctx.line(
                f"for (long i = 0; i < {ctx.numel(part)}; ++i) "
                f"{source}[i] = {ctx.ptr(part)}[i];"
            )
        ctx.scatter(node.output, f"{out} + {offset}", source, shape, strides)


def concat_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    grad = ctx.gout(node)
    for part, offset, strides in _pieces(ctx, node):
        if not ctx.requires(part):
            continue
        shape = _part_shape(ctx, node, part)
        pointer, accumulate = ctx.target(part)
        ctx.line(
            f"mc_gather({pointer}, {grad} + {offset}, {len(shape)}, "
            f"{ctx.longs(shape)}, {ctx.longs(strides)}, {int(accumulate)});"
        )


def _folded(ctx: Emitter, node: Node, needs: Needs | None = None) -> None:
    msg = (
        f"{node.path}: {node.op!r} must be folded at compile time for backend 'c' "
        "(give static shapes and constant arguments)."
    )
    raise CompileError(msg)


def _swaps_last_two(node: Node) -> bool:
    """Whether a transpose swaps the last two axes (a gemm flag for its readers)."""
    rank = len(node.input("input").shape() or ())
    if rank < 2:
        return False
    axes = node.input("axes").constant
    perm = tuple(range(rank))[::-1] if axes is None else tuple(a % rank for a in axes)
    return perm == (*range(rank - 2), rank - 1, rank - 2)


def _integer_index(node: Node) -> bool:
    return isinstance(node.input("index").constant, int)


_LIST = {"virtual": "list"}

LOWERINGS: dict[str, CLowering] = {
    "reshape": (reshape, reshape_vjp),
    "flatten": (reshape, reshape_vjp),
    "squeeze": (reshape, reshape_vjp),
    "unsqueeze": (reshape, reshape_vjp),
    # Read only by matrix products, a swap of the last two axes is a gemm flag.
    "transpose": Lowering(
        transpose, transpose_vjp, options={"gemm_fold": _swaps_last_two}
    ),
    "expand": (expand, expand_vjp),
    # Reads a split's chunk k (an integer index) straight from the split's input.
    "indexer": Lowering(indexer, indexer_vjp, options={"reads_chunk": _integer_index}),
    "concat": Lowering(concat, concat_vjp, options={"reads_lists": True}),
    # Static shapes fold `shape`; lists and split chunks are read through by concat
    # and indexing: these never reach C code.
    "split": Lowering(_folded, _folded, options={"virtual": "chunks"}),
    "shape": (_folded, _folded),
    "to_list": Lowering(_folded, _folded, options=_LIST),
    "to_tuple": Lowering(_folded, _folded, options=_LIST),
}
