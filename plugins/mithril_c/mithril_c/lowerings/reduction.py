from __future__ import annotations

import math
from typing import Any

import numpy as np

from mithril_c._emit import Emitter
from mithril_c._fuse import contiguous_strides, loop_nest, reduction_nest, sums_inner
from mithril_c.lowerings._types import CLowering, dtypes
from mithril_core.errors import ShapeError
from mithril_core.physical.flat import Node, Value
from mithril_core.primitives.lowering import Lowering

Needs = tuple[bool, ...]


def _axes(axis: Any, rank: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(rank))
    axes = axis if isinstance(axis, tuple | list) else (axis,)
    return tuple(sorted(a % rank for a in axes))


def _layout(ctx: Emitter, node: Node) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Input shape, strides into the reduced output over it, and the count reduced."""
    shape = ctx.shape(node.input("input"))
    axes = _axes(node.input("axis").constant, len(shape))
    kept = [s for d, s in enumerate(shape) if d not in axes]
    kept_strides = iter(contiguous_strides(kept))
    strides = tuple(0 if d in axes else next(kept_strides) for d in range(len(shape)))
    return shape, strides, math.prod(shape[d] for d in axes)


def _loop(
    ctx: Emitter,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
    statement: str,
    writes: int = 1,
) -> None:
    """``statement`` over every input element: ``{i}`` input index, ``{o}`` output;
    it writes the output (``writes`` 1: split over threads only along kept axes) or
    the input (0)."""
    ctx.line(
        *loop_nest(
            shape,
            [contiguous_strides(shape), strides],
            lambda index: [statement.format(i=index[0], o=index[1])],
            writes=(writes,),
        )
    )


def _sum_into(
    ctx: Emitter, out: str, value: Value, node: Node, ctype: str = "real"
) -> None:
    shape, strides, _ = _layout(ctx, node)
    axes = _axes(node.input("axis").constant, len(shape))
    x = ctx.ptr(value)
    contiguous = axes and axes == tuple(range(axes[0], axes[-1] + 1))
    if contiguous and ctype == "real" and ctx.is_real(value):
        outer = math.prod(shape[: axes[0]])
        inner = math.prod(shape[axes[-1] + 1 :])
        count = math.prod(shape[d] for d in axes)
        ctx.line(f"mc_sum_axis({out}, {x}, {outer}, {count}, {inner});")
        return
    if ctype == "real" and ctx.is_real(value):
        _accumulate(ctx, node, out, x, "sum")
        return
    ctx.fill(out, ctx.numel(node.output), "0", ctype)
    _loop(ctx, shape, strides, f"{out}[{{o}}] += {x}[{{i}}];")


def _accumulate(
    ctx: Emitter, node: Node, out: str, x: str, key: str, center: str | None = None
) -> None:
    """``out[o] = sum of x[i]`` (or of ``(x[i] - center[o])**2``) over the reduced
    axes, added up in double: a float32 running sum of thousands of nearly equal
    values (a batch norm's gradient) drifts by ~1e-4 of itself, which the norm's
    subtraction of the mean then magnifies."""
    shape, strides, _ = _layout(ctx, node)
    numel = ctx.numel(node.output)
    if sums_inner(shape, strides):
        accesses = [(x, contiguous_strides(shape))]
        term = "\x000\x00"
        if center is not None:
            accesses.append((center, strides))
            term = "(double)(\x000\x00 - \x001\x00) * (\x000\x00 - \x001\x00)"
        ctx.line(*reduction_nest(shape, accesses, term, out, strides, "="))
        return
    total = ctx.temp(node, key, numel, "double")
    ctx.fill(total, numel, "0", "double")
    value = f"{x}[{{i}}]"
    if center is not None:
        value = f"(double)({value} - {center}[{{o}}]) * ({value} - {center}[{{o}}])"
    _loop(ctx, shape, strides, f"{total}[{{o}}] += {value};")
    ctx.line(f"for (long i = 0; i < {numel}; ++i) {out}[i] = (real){total}[i];")


@dtypes("any")
def sum(ctx: Emitter, node: Node) -> None:  # noqa: A001 - the primitive's name
    _sum_into(ctx, ctx.out(node), node.input("input"), node, ctx.ctype(node.output))


def _spread(ctx: Emitter, node: Node, expression: str) -> None:
    """Input gradient element = ``expression`` ({g}: output gradient element)."""
    shape, strides, _ = _layout(ctx, node)
    pointer, accumulate = ctx.target(node.input("input"))
    grad = ctx.gout(node)
    op = "+=" if accumulate else "="
    text = expression.replace("{g}", f"{grad}[{{o}}]")
    _loop(ctx, shape, strides, f"{pointer}[{{i}}] {op} {text};", writes=0)


def sum_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    _spread(ctx, node, "{g}")


def _statistic(ctx: Emitter, node: Node, name: str) -> tuple[Any, ...]:
    """What a mean or a sum of squares of ``node``'s input over its axes is (for
    :meth:`Emitter.computed_temp`): variance's mean and batch norm's two variances
    are computed once per function (the same code gives the same values)."""
    shape = ctx.shape(node.input("input"))
    return name, id(node.input("input")), _axes(node.input("axis").constant, len(shape))


def _mean_into(ctx: Emitter, out: str, node: Node) -> None:
    _sum_into(ctx, out, node.input("input"), node)
    count = _layout(ctx, node)[2]
    numel = ctx.numel(node.output)
    ctx.line(f"for (long i = 0; i < {numel}; ++i) {out}[i] /= (real){count};")


@dtypes({0: "any"})
def mean(ctx: Emitter, node: Node) -> None:
    _mean_into(ctx, ctx.out(node), node)
    if ctx.dtype(node.output) == ctx.real_numpy:
        ctx.remember_output(node, _statistic(ctx, node, "mean"))


def mean_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    _spread(ctx, node, f"{{g}} / (real){_layout(ctx, node)[2]}")


_LIMITS = {
    "int8": ("INT8_MIN", "INT8_MAX"),
    "int16": ("INT16_MIN", "INT16_MAX"),
    "int32": ("INT32_MIN", "INT32_MAX"),
    "int64": ("INT64_MIN", "INT64_MAX"),
    "uint8": ("0", "UINT8_MAX"),
    "bool": ("0", "1"),
}


def _nonempty(ctx: Emitter, node: Node, count: int) -> None:
    """NumPy and torch refuse max/argmax ... over no elements; so does the C."""
    if count == 0:
        shape = list(ctx.shape(node.input("input")))
        axis = node.input("axis").constant
        msg = (
            f"{node.path}: {node.op!r} over an empty axis (input shape {shape}, axis "
            f"{axis!r}) has no result; give data with at least one "
            "element along the reduced axes."
        )
        raise ShapeError(msg)


def _extreme(ctx: Emitter, node: Node, better: str) -> None:
    shape, strides, count = _layout(ctx, node)
    _nonempty(ctx, node, count)
    out = ctx.out(node)
    x = ctx.ptr(node.input("input"))
    dtype = np.dtype(ctx.dtype(node.output))
    if dtype.kind == "f":
        start = "-INFINITY" if better == ">" else "INFINITY"
        # x != x: NaN wins, as in NumPy.
        nan = f" || {x}[{{i}}] != {x}[{{i}}]"
    else:
        start = _LIMITS[dtype.name][0 if better == ">" else 1]
        nan = ""
    ctx.fill(out, ctx.numel(node.output), start, ctx.ctype(node.output))
    _loop(
        ctx,
        shape,
        strides,
        f"if ({x}[{{i}}] {better} {out}[{{o}}]{nan}) {out}[{{o}}] = {x}[{{i}}];",
    )


def _extreme_vjp(ctx: Emitter, node: Node) -> None:
    shape, strides, _ = _layout(ctx, node)
    x = ctx.ptr(node.input("input"))
    y = ctx.ptr(node.output)
    count = ctx.temp(node, "ties", ctx.numel(node.output))
    ctx.line(f"mc_fill({count}, {ctx.numel(node.output)}, 0);")
    _loop(ctx, shape, strides, f"{count}[{{o}}] += ({x}[{{i}}] == {y}[{{o}}]);")
    # Ties share the gradient equally.
    _spread(ctx, node, f"({x}[{{i}}] == {y}[{{o}}] ? {{g}} / {count}[{{o}}] : 0)")


@dtypes("any")
def max(ctx: Emitter, node: Node) -> None:  # noqa: A001 - the primitive's name
    _extreme(ctx, node, ">")


@dtypes("any")
def min(ctx: Emitter, node: Node) -> None:  # noqa: A001 - the primitive's name
    _extreme(ctx, node, "<")


def extreme_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    _extreme_vjp(ctx, node)


@dtypes({0: "any"})
def variance(ctx: Emitter, node: Node) -> None:
    count = _layout(ctx, node)[2]
    numel = ctx.numel(node.output)
    x = ctx.ptr(node.input("input"))
    # The mean (what the VJP reads too) and the sum of squared deviations, each made
    # here unless this function computed it already (the same code: the same values).
    average, done = ctx.computed_temp(
        node, "mean", numel, _statistic(ctx, node, "mean")
    )
    if not done:
        _mean_into(ctx, average, node)
    squares, done = ctx.computed_temp(
        node, "sum_squares", numel, _statistic(ctx, node, "squares")
    )
    if not done:
        _accumulate(ctx, node, squares, x, "squares", center=average)
    correction = ctx.lit(node.input("correction").constant)
    ctx.line(
        f"for (long i = 0; i < {numel}; ++i) "
        f"{ctx.out(node)}[i] = {squares}[i] / (real)({count} - {correction});"
    )


def variance_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    count = _layout(ctx, node)[2]
    average = ctx.temp(node, "mean", ctx.numel(node.output))
    x = ctx.ptr(node.input("input"))
    correction = ctx.lit(node.input("correction").constant)
    _spread(
        ctx,
        node,
        f"{{g}} * 2 * ({x}[{{i}}] - {average}[{{o}}]) / (real)({count} - {correction})",
    )


def _arg_extreme(ctx: Emitter, node: Node, better: str) -> None:
    shape = ctx.shape(node.input("input"))
    axis = node.input("axis").constant
    if axis is None:
        outer, count, inner = 1, math.prod(shape), 1
    else:
        axis %= len(shape)
        outer, count, inner = (
            math.prod(shape[:axis]),
            shape[axis],
            math.prod(shape[axis + 1 :]),
        )
    _nonempty(ctx, node, count)
    out, x = ctx.out(node), ctx.ptr(node.input("input"))
    ctype = ctx.ctype(node.input("input"))
    # The first extreme wins; a NaN beats everything (the first NaN), as NumPy.
    floating = np.dtype(ctx.dtype(node.input("input"))).kind == "f"
    nan = " || (v != v && top == top)" if floating else ""
    ctx.line(
        f"for (long o = 0; o < {outer}; ++o) for (long j = 0; j < {inner}; ++j) {{",
        f"    const {ctype} *row = {x} + o * {count * inner} + j;",
        f"    {ctype} top = row[0];",
        "    long best = 0;",
        f"    for (long i = 1; i < {count}; ++i) {{",
        f"        {ctype} v = row[i * {inner}];",
        f"        if (v {better} top{nan}) {{ top = v; best = i; }}",
        "    }",
        f"    {out}[o * {inner} + j] = best;",
        "}",
    )


@dtypes("any")
def arg_max(ctx: Emitter, node: Node) -> None:
    _arg_extreme(ctx, node, ">")


@dtypes("any")
def arg_min(ctx: Emitter, node: Node) -> None:
    _arg_extreme(ctx, node, "<")


def _no_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    return None


# An int result is int64 whatever the input's int dtype (as NumPy's sum on Linux).
_INT64 = {"int_output": "int64"}

LOWERINGS: dict[str, CLowering] = {
    "arg_max": Lowering(arg_max, _no_vjp, options=_INT64),
    "arg_min": Lowering(arg_min, _no_vjp, options=_INT64),
    "sum": Lowering(sum, sum_vjp, options=_INT64),
    "mean": (mean, mean_vjp),
    "max": (max, extreme_vjp),
    "min": (min, extreme_vjp),
    "variance": (variance, variance_vjp),
}
