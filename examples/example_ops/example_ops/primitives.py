"""Declarations of the example operators."""

from __future__ import annotations

from mithril_core.models import IOKey, Primitive, Tensor


class Softsign(Primitive):
    """y = x / (1 + |x|), element-wise."""

    op_name = "example_ops.softsign"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)], type=Tensor[float]),
            output=IOKey(shape=[("V", ...)], type=Tensor[float]),
        )
