from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mithril_onnx.export import OnnxBuilder, Sym
from mithril_onnx.lowerings.nn import valid_indices


def squared_error(g: OnnxBuilder, input: Any, target: Any) -> Any:
    difference = g.op("Sub", *g.promote(g.floats(input), target))
    return g.op("Mul", difference, difference)


def absolute_error(g: OnnxBuilder, input: Any, target: Any) -> Any:
    return g.op("Abs", g.op("Sub", *g.promote(g.floats(input), target)))


def _log_q(g: OnnxBuilder, input: Sym, axis: int, input_type: str) -> Any:
    if input_type == "logits":
        return g.op("LogSoftmax", input, axis=axis)
    return g.op("Log", input) if input_type == "probs" else input


def cross_entropy(
    g: OnnxBuilder, input: Sym, target: Any, axis: int, input_type: str
) -> Any:
    x = g.floats(input)
    log_q = _log_q(g, x, axis, input_type)
    valid, safe = valid_indices(g, g.sym(target), g.dims(x)[axis])
    index = g.op("Unsqueeze", safe, g.ints([axis]))
    picked = g.op("GatherElements", log_q, index, axis=axis)
    loss = g.op("Neg", g.op("Squeeze", picked, g.ints([axis])))
    return g.op("Where", valid, loss, g.const(np.nan, x.dtype))


def cross_entropy_soft(
    g: OnnxBuilder, input: Sym, target: Any, axis: int, input_type: str
) -> Any:
    log_q = _log_q(g, g.floats(input), axis, input_type)
    picked = g.op("Mul", *g.promote(log_q, target))
    return g.op("Neg", g.op("ReduceSum", picked, g.ints([axis]), keepdims=0))


def binary_cross_entropy(
    g: OnnxBuilder, input: Sym, target: Any, input_type: str
) -> Any:
    p, t = g.promote(g.floats(input), target)
    if input_type == "logits":
        # max(x, 0) - x t + log(1 + exp(-|x|)): no overflow, as NumPy's.
        tail = g.op("Log", g.op("Add", g.op("Exp", g.op("Neg", g.op("Abs", p))), 1.0))
        return g.op("Add", g.op("Sub", g.op("Max", p, 0.0), g.op("Mul", p, t)), tail)
    log_p = g.op("Max", g.op("Log", p), -100.0)
    log_1mp = g.op("Max", g.op("Log", g.op("Sub", 1.0, p)), -100.0)
    kept = g.op("Add", g.op("Mul", t, log_p), g.op("Mul", g.op("Sub", 1.0, t), log_1mp))
    return g.op("Neg", kept)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "squared_error": squared_error,
    "absolute_error": absolute_error,
    "cross_entropy": cross_entropy,
    "cross_entropy_soft": cross_entropy_soft,
    "binary_cross_entropy": binary_cross_entropy,
}
