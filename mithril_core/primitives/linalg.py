"""Linear algebra primitives."""

from __future__ import annotations

import math
from collections.abc import Mapping

from mithril_core.logical import types as ty
from mithril_core.logical.connection import IOKey
from mithril_core.logical.model import Primitive
from mithril_core.primitives import _rules as r


class MatrixMultiply(Primitive):
    """``left @ right`` with NumPy matmul semantics (1-D operands, batch
    broadcasting)."""

    op_name = "matrix_multiply"
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
