from __future__ import annotations

import math

import numpy as np

from mithril_c._codegen import Emitter
from mithril_c.lowerings._types import CLowering, dtypes
from mithril_core.physical.flat import Node

Needs = tuple[bool, ...]

_INPUT_TYPES = {"logits": 0, "probs": 1, "log_probs": 2}


def _classes(ctx: Emitter, node: Node) -> str:
    """``outer, n, inner`` of the class axis and the input type code."""
    shape = ctx.shape(node.inputs[0])
    axis = node.inputs[2].constant % len(shape)
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1 :])
    kind = _INPUT_TYPES[node.inputs[3].constant]
    return f"{outer}, {shape[axis]}, {inner}, {kind}"


def _target(ctx: Emitter, node: Node) -> tuple[str, str]:
    target = node.inputs[1]
    size = np.dtype(ctx.dtype(target)).itemsize
    message = (
        f"{node.path}: a cross-entropy target class is out of range for "
        f"{ctx.shape(node.inputs[0])[node.inputs[2].constant]} classes."
    )
    return f"{ctx.ptr(target)}, {size}", message


@dtypes({1: "iu"})
def cross_entropy(ctx: Emitter, node: Node) -> None:
    target, message = _target(ctx, node)
    x = ctx.ptr(node.inputs[0])
    call = f"mc_cross_entropy({ctx.out(node)}, {x}, {target}, {_classes(ctx, node)})"
    ctx.check(call, message)


def cross_entropy_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    target, message = _target(ctx, node)
    x = ctx.ptr(node.inputs[0])
    pointer, accumulate = ctx.target(node.inputs[0])
    call = (
        f"mc_cross_entropy_vjp({pointer}, {ctx.gout(node)}, {x}, {target}, "
        f"{_classes(ctx, node)}, {int(accumulate)})"
    )
    ctx.check(call, message)


def cross_entropy_soft(ctx: Emitter, node: Node) -> None:
    x, t = (ctx.ptr(v) for v in node.inputs[:2])
    ctx.line(
        f"mc_cross_entropy_soft({ctx.out(node)}, {x}, {t}, {_classes(ctx, node)});"
    )


def _grads(ctx: Emitter, node: Node, needs: Needs) -> tuple[list[str], list[int]]:
    pointers, flags = [], []
    for j in range(2):
        pointer, accumulate = ctx.target(node.inputs[j]) if needs[j] else ("NULL", 0)
        pointers.append(pointer)
        flags.append(int(accumulate))
    return pointers, flags


def cross_entropy_soft_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    x, t = (ctx.ptr(v) for v in node.inputs[:2])
    (gx, gt), (ax, at) = _grads(ctx, node, needs)
    ctx.line(
        f"mc_cross_entropy_soft_vjp({gx}, {gt}, {ctx.gout(node)}, {x}, {t}, "
        f"{_classes(ctx, node)}, {ax}, {at});"
    )


def _logits(node: Node) -> int:
    return int(node.inputs[2].constant == "logits")


def binary_cross_entropy(ctx: Emitter, node: Node) -> None:
    x, t = (ctx.ptr(v) for v in node.inputs[:2])
    ctx.line(
        f"mc_binary_cross_entropy({ctx.out(node)}, {x}, {t}, {ctx.numel(node.output)}, "
        f"{_logits(node)});"
    )


def binary_cross_entropy_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    x, t = (ctx.ptr(v) for v in node.inputs[:2])
    (gx, gt), (ax, at) = _grads(ctx, node, needs)
    ctx.line(
        f"mc_binary_cross_entropy_vjp({gx}, {gt}, {ctx.gout(node)}, {x}, {t}, "
        f"{ctx.numel(node.output)}, {_logits(node)}, {ax}, {at});"
    )


LOWERINGS: dict[str, CLowering] = {
    # Element-wise with broadcasting: fused into the neighbouring loops.
    "squared_error": (
        "(({0} - {1}) * ({0} - {1}))",
        ("2 * {g} * ({0} - {1})", "-(2 * {g} * ({0} - {1}))"),
    ),
    "absolute_error": (
        "MC_FABS({0} - {1})",
        ("{g} * mc_sign({0} - {1})", "-({g} * mc_sign({0} - {1}))"),
    ),
    "cross_entropy": (cross_entropy, cross_entropy_vjp),
    "cross_entropy_soft": (cross_entropy_soft, cross_entropy_soft_vjp),
    "binary_cross_entropy": (binary_cross_entropy, binary_cross_entropy_vjp),
}
