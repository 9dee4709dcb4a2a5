"""Linear algebra primitives."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mithril_core.logical import types as ty
from mithril_core.logical.connection import IOKey
from mithril_core.logical.model import Primitive
from mithril_core.primitives import _rules as r


# Gradient rules (see ``elementwise.py``): a 1-D operand is a row (left) or column
# (right) matrix, as in matmul, and its axis is dropped again; batch axes that were
# broadcast are summed back by the caller, as for any broadcasting op.
def _as_matrices(xp: Any, g: Any, left: Any, right: Any) -> tuple[Any, Any, Any]:
    if right.ndim == 1:
        g, right = xp.expand_dims(g, -1), xp.expand_dims(right, -1)
    if left.ndim == 1:
        g, left = xp.expand_dims(g, -2), xp.expand_dims(left, 0)
    return g, left, right


def _matmul_left_grad(xp: Any, g: Any, y: Any, left: Any, right: Any) -> Any:
    g2, _, right2 = _as_matrices(xp, g, left, right)
    grad = xp.matmul(g2, xp.swapaxes(right2, -1, -2))
    return xp.squeeze(grad, -2) if left.ndim == 1 else grad


def _matmul_right_grad(xp: Any, g: Any, y: Any, left: Any, right: Any) -> Any:
    g2, left2, _ = _as_matrices(xp, g, left, right)
    grad = xp.matmul(xp.swapaxes(left2, -1, -2), g2)
    return xp.squeeze(grad, -1) if right.ndim == 1 else grad


class MatrixMultiply(Primitive):
    """``left @ right`` with NumPy matmul semantics (1-D operands, batch
    broadcasting)."""

    op_name = "matrix_multiply"
    grad_rules = {"left": _matmul_left_grad, "right": _matmul_right_grad}
    rules = (r.matmul_shape, r.promote_types("left", "right"))

    def __init__(self, name: str | None = None) -> None:
        super().__init__(
            name=name,
            left=IOKey(type=ty.TENSORS),
            right=IOKey(type=ty.TENSORS),
            output=IOKey(type=ty.TENSORS),
        )

    def flops(
        self,
        input_shapes: Mapping[str, tuple[int, ...] | None],
        output_shape: tuple[int, ...] | None,
    ) -> int | None:
        left = input_shapes["left"]
        if not left or output_shape is None:
            return None
        # A multiply and an add per output element and contracted index.
        return 2 * math.prod(output_shape) * left[-1]
