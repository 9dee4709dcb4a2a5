from __future__ import annotations

import math
from typing import Any

from mithril_c._codegen import Emitter, contiguous_strides, loop_nest
from mithril_c.lowerings._types import CLowering
from mithril_core.physical.flat import Node, Value

Needs = tuple[bool, ...]


def _axes(axis: Any, rank: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(rank))
    axes = axis if isinstance(axis, tuple | list) else (axis,)
    return tuple(sorted(a % rank for a in axes))


def _layout(ctx: Emitter, node: Node) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Input shape, strides into the reduced output over it, and the count reduced."""
    shape = ctx.shape(node.inputs[0])
    axes = _axes(node.inputs[1].constant, len(shape))
    kept = [s for d, s in enumerate(shape) if d not in axes]
    kept_strides = iter(contiguous_strides(kept))
    strides = tuple(0 if d in axes else next(kept_strides) for d in range(len(shape)))
    return shape, strides, math.prod(shape[d] for d in axes)


def _loop(
    ctx: Emitter, shape: tuple[int, ...], strides: tuple[int, ...], statement: str
) -> None:
    """``statement`` over every input element: ``{i}`` input index, ``{o}`` output."""
    ctx.line(
        *loop_nest(
            shape,
            [contiguous_strides(shape), strides],
            lambda index: [statement.format(i=index[0], o=index[1])],
        )
    )


def _sum_into(ctx: Emitter, out: str, value: Value, node: Node) -> None:
    shape, strides, _ = _layout(ctx, node)
    axes = _axes(node.inputs[1].constant, len(shape))
    x = ctx.ptr(value)
    if axes and axes == tuple(range(axes[0], axes[-1] + 1)):
        outer = math.prod(shape[: axes[0]])
        inner = math.prod(shape[axes[-1] + 1 :])
        count = math.prod(shape[d] for d in axes)
        ctx.line(f"mc_sum_axis({out}, {x}, {outer}, {count}, {inner});")
        return
    ctx.line(f"mc_fill({out}, {ctx.numel(node.output)}, 0);")
    _loop(ctx, shape, strides, f"{out}[{{o}}] += {x}[{{i}}];")


def sum(ctx: Emitter, node: Node) -> None:  # noqa: A001 - the primitive's name
    _sum_into(ctx, ctx.out(node), node.inputs[0], node)


def _spread(ctx: Emitter, node: Node, expression: str) -> None:
    """Input gradient element = ``expression`` ({g}: output gradient element)."""
    shape, strides, _ = _layout(ctx, node)
    pointer, accumulate = ctx.target(node.inputs[0])
    grad = ctx.gout(node)
    op = "+=" if accumulate else "="
    text = expression.replace("{g}", f"{grad}[{{o}}]")
    _loop(ctx, shape, strides, f"{pointer}[{{i}}] {op} {text};")


def sum_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    _spread(ctx, node, "{g}")


def mean(ctx: Emitter, node: Node) -> None:
    out = ctx.out(node)
    _sum_into(ctx, out, node.inputs[0], node)
    count = _layout(ctx, node)[2]
    numel = ctx.numel(node.output)
    ctx.line(f"for (long i = 0; i < {numel}; ++i) {out}[i] /= (real){count};")


def mean_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    _spread(ctx, node, f"{{g}} / (real){_layout(ctx, node)[2]}")


def _extreme(ctx: Emitter, node: Node, better: str, start: str) -> None:
    shape, strides, _ = _layout(ctx, node)
    out = ctx.out(node)
    x = ctx.ptr(node.inputs[0])
    ctx.line(f"mc_fill({out}, {ctx.numel(node.output)}, {start});")
    # x != x: NaN wins, as in NumPy.
    _loop(
        ctx,
        shape,
        strides,
        f"if ({x}[{{i}}] {better} {out}[{{o}}] || {x}[{{i}}] != {x}[{{i}}]) "
        f"{out}[{{o}}] = {x}[{{i}}];",
    )


def _extreme_vjp(ctx: Emitter, node: Node) -> None:
    shape, strides, _ = _layout(ctx, node)
    x = ctx.ptr(node.inputs[0])
    y = ctx.ptr(node.output)
    count = ctx.temp(node, "ties", ctx.numel(node.output))
    ctx.line(f"mc_fill({count}, {ctx.numel(node.output)}, 0);")
    _loop(ctx, shape, strides, f"{count}[{{o}}] += ({x}[{{i}}] == {y}[{{o}}]);")
    # Ties share the gradient equally.
    _spread(ctx, node, f"({x}[{{i}}] == {y}[{{o}}] ? {{g}} / {count}[{{o}}] : 0)")


def max(ctx: Emitter, node: Node) -> None:  # noqa: A001 - the primitive's name
    _extreme(ctx, node, ">", "-INFINITY")


def min(ctx: Emitter, node: Node) -> None:  # noqa: A001 - the primitive's name
    _extreme(ctx, node, "<", "INFINITY")


def extreme_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    _extreme_vjp(ctx, node)


def variance(ctx: Emitter, node: Node) -> None:
    shape, strides, count = _layout(ctx, node)
    numel = ctx.numel(node.output)
    average = ctx.temp(node, "mean", numel)
    out = ctx.out(node)
    x = ctx.ptr(node.inputs[0])
    correction = node.inputs[3].constant
    _sum_into(ctx, average, node.inputs[0], node)
    ctx.line(f"for (long i = 0; i < {numel}; ++i) {average}[i] /= (real){count};")
    ctx.line(f"mc_fill({out}, {numel}, 0);")
    _loop(
        ctx,
        shape,
        strides,
        f"{{{{ real d = {x}[{{i}}] - {average}[{{o}}]; {out}[{{o}}] += d * d; }}}}",
    )
    ctx.line(
        f"for (long i = 0; i < {numel}; ++i) "
        f"{out}[i] /= (real)({count} - {ctx.lit(correction)});"
    )


def variance_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    count = _layout(ctx, node)[2]
    average = ctx.temp(node, "mean", ctx.numel(node.output))
    x = ctx.ptr(node.inputs[0])
    correction = ctx.lit(node.inputs[3].constant)
    _spread(
        ctx,
        node,
        f"{{g}} * 2 * ({x}[{{i}}] - {average}[{{o}}]) / (real)({count} - {correction})",
    )


LOWERINGS: dict[str, CLowering] = {
    "sum": (sum, sum_vjp),
    "mean": (mean, mean_vjp),
    "max": (max, extreme_vjp),
    "min": (min, extreme_vjp),
    "variance": (variance, variance_vjp),
}
