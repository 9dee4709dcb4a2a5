from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mithril_c._emit import Emitter
from mithril_c._fuse import broadcast_strides, contiguous_strides, loop_nest
from mithril_c.lowerings._types import CLowering
from mithril_core.physical.flat import Node, Value
from mithril_core.primitives.lowering import Lowering

Needs = tuple[bool, ...]


@dataclass
class _Product:
    """``left @ right`` as gemm calls: stored operands, flags, sizes, batch layout."""

    a: Value
    ta: int
    b: Value
    tb: int
    m: int
    k: int
    n: int
    left_batch: tuple[int, ...]
    right_batch: tuple[int, ...]
    batch: tuple[int, ...]

    @property
    def lda(self) -> int:
        return self.m if self.ta else self.k

    @property
    def ldb(self) -> int:
        return self.k if self.tb else self.n

    @property
    def folded(self) -> bool:
        # [..., M, K] @ [K, N]: the batch folds into the rows of one gemm.
        return not self.right_batch and not self.ta and bool(self.left_batch)

    def strides(self) -> list[tuple[int, ...]]:
        """Element strides of A, B, C over the batch dims."""
        return [
            tuple(
                s * self.m * self.k
                for s in broadcast_strides(self.left_batch, self.batch)
            ),
            tuple(
                s * self.k * self.n
                for s in broadcast_strides(self.right_batch, self.batch)
            ),
            tuple(s * self.m * self.n for s in contiguous_strides(self.batch)),
        ]


def _product(ctx: Emitter, node: Node) -> _Product:
    left, right = node.input("left"), node.input("right")
    left_shape, right_shape = ctx.shape(left), ctx.shape(right)
    if len(left_shape) == 1:
        left_shape = (1, *left_shape)
    if len(right_shape) == 1:
        right_shape = (*right_shape, 1)
    a, ta = ctx.transposed(left), 1
    if a is None:
        a, ta = left, 0
    b, tb = ctx.transposed(right), 1
    if b is None:
        b, tb = right, 0
    left_batch, right_batch = left_shape[:-2], right_shape[:-2]
    return _Product(
        a,
        ta,
        b,
        tb,
        left_shape[-2],
        left_shape[-1],
        right_shape[-1],
        left_batch,
        right_batch,
        tuple(np.broadcast_shapes(left_batch, right_batch)),
    )


def _batched(ctx: Emitter, p: _Product, call: str, writes: int = 2) -> None:
    """Emit ``call`` (with ``{a}``, ``{b}``, ``{c}`` batch offsets) once per batch;
    it writes A's (0), B's (1) or C's (2) blocks: batch entries split over threads
    unless they add into one block."""
    ctx.line(
        *loop_nest(
            p.batch,
            p.strides(),
            lambda index: [call.format(a=index[0], b=index[1], c=index[2])],
            var="b",
            writes=(writes,),
            work=math.prod(p.batch) * p.m * p.n * p.k,
        )
    )


def matrix_multiply(ctx: Emitter, node: Node) -> None:
    p = _product(ctx, node)
    a, b, c = ctx.ptr(p.a), ctx.ptr(p.b), ctx.out(node)
    if p.folded:
        rows = math.prod(p.left_batch) * p.m
        ctx.line(
            f"mc_gemm(0, {p.tb}, {rows}, {p.n}, {p.k}, {a}, {p.k}, {b}, {p.ldb}, 0, "
            f"{c}, {p.n});"
        )
        return
    _batched(
        ctx,
        p,
        f"mc_gemm({p.ta}, {p.tb}, {p.m}, {p.n}, {p.k}, {a} + {{a}}, {p.lda}, "
        f"{b} + {{b}}, {p.ldb}, 0, {c} + {{c}}, {p.n});",
    )


def _beta(
    ctx: Emitter,
    pointer: str,
    value: Value,
    own: tuple[int, ...],
    p: _Product,
    accumulate: bool,
) -> int:
    """gemm beta of a gradient; broadcast batch dims sum into a zeroed buffer."""
    if math.prod(own) != math.prod(p.batch):
        if not accumulate:
            ctx.line(f"mc_fill({pointer}, {ctx.numel(value)}, 0);")
        return 1
    return int(accumulate)


def matrix_multiply_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    p = _product(ctx, node)
    g = ctx.gout(node)
    a, b = ctx.ptr(p.a), ctx.ptr(p.b)
    if needs[0]:
        pointer, accumulate = ctx.target(p.a)
        if p.folded:
            rows = math.prod(p.left_batch) * p.m
            ctx.line(
                f"mc_gemm(0, {1 - p.tb}, {rows}, {p.k}, {p.n}, {g}, {p.n}, {b}, "
                f"{p.ldb}, {int(accumulate)}, {pointer}, {p.k});"
            )
        else:
            beta = _beta(ctx, pointer, p.a, p.left_batch, p, accumulate)
            if not p.ta:  # dA = dC B^T
                call = (
                    f"mc_gemm(0, {1 - p.tb}, {p.m}, {p.k}, {p.n}, {g} + {{c}}, {p.n}, "
                    f"{b} + {{b}}, {p.ldb}, {beta}, {pointer} + {{a}}, {p.k});"
                )
            else:  # stored a = A^T: da = B dC^T
                call = (
                    f"mc_gemm({p.tb}, 1, {p.k}, {p.m}, {p.n}, {b} + {{b}}, {p.ldb}, "
                    f"{g} + {{c}}, {p.n}, {beta}, {pointer} + {{a}}, {p.m});"
                )
            _batched(ctx, p, call, writes=0)
    if needs[1]:
        pointer, accumulate = ctx.target(p.b)
        if p.folded:
            rows = math.prod(p.left_batch) * p.m
            if not p.tb:
                ctx.line(
                    f"mc_gemm(1, 0, {p.k}, {p.n}, {rows}, {a}, {p.k}, {g}, {p.n}, "
                    f"{int(accumulate)}, {pointer}, {p.n});"
                )
            else:
                ctx.line(
                    f"mc_gemm(1, 0, {p.n}, {p.k}, {rows}, {g}, {p.n}, {a}, {p.k}, "
                    f"{int(accumulate)}, {pointer}, {p.k});"
                )
            return
        beta = _beta(ctx, pointer, p.b, p.right_batch, p, accumulate)
        if not p.tb:  # dB = A^T dC
            call = (
                f"mc_gemm({1 - p.ta}, 0, {p.k}, {p.n}, {p.m}, {a} + {{a}}, {p.lda}, "
                f"{g} + {{c}}, {p.n}, {beta}, {pointer} + {{b}}, {p.n});"
            )
        else:  # stored b = B^T: db = dC^T A
            call = (
                f"mc_gemm(1, {p.ta}, {p.n}, {p.k}, {p.m}, {g} + {{c}}, {p.n}, "
                f"{a} + {{a}}, {p.lda}, {beta}, {pointer} + {{b}}, {p.k});"
            )
        _batched(ctx, p, call, writes=1)


LOWERINGS: dict[str, CLowering] = {
    # A transpose of the last two axes it reads is a gemm flag (ctx.transposed).
    "matrix_multiply": Lowering(
        matrix_multiply, matrix_multiply_vjp, options={"reads_transposed": True}
    ),
}
