from __future__ import annotations

import math

from mithril_c._codegen import Emitter
from mithril_c.lowerings._types import CLowering
from mithril_core.physical.flat import Node

Needs = tuple[bool, ...]


def _layout(ctx: Emitter, node: Node) -> str:
    shape = ctx.shape(node.inputs[0])
    axis = node.inputs[1].constant % len(shape)
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1 :])
    return f"{outer}, {shape[axis]}, {inner}"


def softmax(ctx: Emitter, node: Node) -> None:
    x = ctx.ptr(node.inputs[0])
    ctx.line(f"mc_softmax({ctx.out(node)}, {x}, {_layout(ctx, node)});")


def softmax_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    pointer, accumulate = ctx.target(node.inputs[0])
    ctx.line(
        f"mc_softmax_vjp({pointer}, {ctx.gout(node)}, {ctx.ptr(node.output)}, "
        f"{_layout(ctx, node)}, {int(accumulate)});"
    )


def log_softmax(ctx: Emitter, node: Node) -> None:
    x = ctx.ptr(node.inputs[0])
    ctx.line(f"mc_log_softmax({ctx.out(node)}, {x}, {_layout(ctx, node)});")


def log_softmax_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    pointer, accumulate = ctx.target(node.inputs[0])
    ctx.line(
        f"mc_log_softmax_vjp({pointer}, {ctx.gout(node)}, {ctx.ptr(node.output)}, "
        f"{_layout(ctx, node)}, {int(accumulate)});"
    )


LOWERINGS: dict[str, CLowering] = {
    "softmax": (softmax, softmax_vjp),
    "log_softmax": (log_softmax, log_softmax_vjp),
}
