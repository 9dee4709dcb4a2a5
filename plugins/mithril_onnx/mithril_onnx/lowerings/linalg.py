from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mithril_onnx.export import OnnxBuilder, Sym


def matrix_multiply(g: OnnxBuilder, left: Any, right: Any) -> Sym:
    return g.op("MatMul", *g.promote(left, right))


LOWERINGS: dict[str, Callable[..., Any]] = {"matrix_multiply": matrix_multiply}
