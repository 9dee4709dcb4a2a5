from __future__ import annotations

import math

import numpy as np

from mithril_c._emit import Emitter
from mithril_c.lowerings._symbolic import FROM_RULES
from mithril_c.lowerings._types import CLowering, dtypes
from mithril_core.physical.flat import Node

Needs = tuple[bool, ...]

_INPUT_TYPES = {"logits": 0, "probs": 1, "log_probs": 2}


def _classes(ctx: Emitter, node: Node) -> str:
    """``outer, n, inner`` of the class axis and the input type code."""
    shape = ctx.shape(node.input("input"))
    axis = node.input("axis").constant % len(shape)
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1 :])
    kind = _INPUT_TYPES[node.input("input_type").constant]
    return f"{outer}, {shape[axis]}, {inner}, {kind}"


def _target(ctx: Emitter, node: Node) -> tuple[str, str]:
    target = node.input("target")
    size = np.dtype(ctx.dtype(target)).itemsize
    classes = ctx.shape(node.input("input"))[node.input("axis").constant]
    message = (
        f"{node.path}: a cross-entropy target class is out of range for "
        f"{classes} classes."
    )
    return f"{ctx.ptr(target)}, {size}", message


@dtypes({1: "iu"})
def cross_entropy(ctx: Emitter, node: Node) -> None:
    target, message = _target(ctx, node)
    x = ctx.ptr(node.input("input"))
    call = f"mc_cross_entropy({ctx.out(node)}, {x}, {target}, {_classes(ctx, node)})"
    ctx.check(call, message)


def cross_entropy_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    target, message = _target(ctx, node)
    x = ctx.ptr(node.input("input"))
    pointer, accumulate = ctx.target(node.input("input"))
    call = (
        f"mc_cross_entropy_vjp({pointer}, {ctx.gout(node)}, {x}, {target}, "
        f"{_classes(ctx, node)}, {int(accumulate)})"
    )
    ctx.check(call, message)


def cross_entropy_soft(ctx: Emitter, node: Node) -> None:
    x, t = (ctx.ptr(node.input(k)) for k in ("input", "target"))
    ctx.line(
        f"mc_cross_entropy_soft({ctx.out(node)}, {x}, {t}, {_classes(ctx, node)});"
    )


def _grads(ctx: Emitter, node: Node, needs: Needs) -> tuple[list[str], list[int]]:
    pointers, flags = [], []
    for j, key in enumerate(("input", "target")):
        pointer, accumulate = ctx.target(node.input(key)) if needs[j] else ("NULL", 0)
        pointers.append(pointer)
        flags.append(int(accumulate))
    return pointers, flags


def cross_entropy_soft_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    x, t = (ctx.ptr(node.input(k)) for k in ("input", "target"))
    (gx, gt), (ax, at) = _grads(ctx, node, needs)
    ctx.line(
        f"mc_cross_entropy_soft_vjp({gx}, {gt}, {ctx.gout(node)}, {x}, {t}, "
        f"{_classes(ctx, node)}, {ax}, {at});"
    )


def _logits(node: Node) -> int:
    return int(node.input("input_type").constant == "logits")


def binary_cross_entropy(ctx: Emitter, node: Node) -> None:
    x, t = (ctx.ptr(node.input(k)) for k in ("input", "target"))
    ctx.line(
        f"mc_binary_cross_entropy({ctx.out(node)}, {x}, {t}, {ctx.numel(node.output)}, "
        f"{_logits(node)});"
    )


def binary_cross_entropy_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    x, t = (ctx.ptr(node.input(k)) for k in ("input", "target"))
    (gx, gt), (ax, at) = _grads(ctx, node, needs)
    ctx.line(
        f"mc_binary_cross_entropy_vjp({gx}, {gt}, {ctx.gout(node)}, {x}, {t}, "
        f"{ctx.numel(node.output)}, {_logits(node)}, {ax}, {at});"
    )


LOWERINGS: dict[str, CLowering] = {
    # Element-wise with broadcasting: fused into the neighbouring loops.
    "squared_error": ("(({0} - {1}) * ({0} - {1}))", FROM_RULES),
    "absolute_error": ("MC_FABS({0} - {1})", FROM_RULES),
    "cross_entropy": (cross_entropy, cross_entropy_vjp),
    "cross_entropy_soft": (cross_entropy_soft, cross_entropy_soft_vjp),
    "binary_cross_entropy": (binary_cross_entropy, binary_cross_entropy_vjp),
}
