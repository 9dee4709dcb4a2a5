from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import numpy as np

from mithril_onnx.export import BOOL, OnnxBuilder, Sym, numpy_dtype

Binary = Callable[[OnnxBuilder, Any, Any], Any]


def _is_tensor(value: Any) -> bool:
    return isinstance(value, Sym | np.ndarray)


def _binary(op_type: str, python: Callable[[Any, Any], Any]) -> Binary:
    # Operands that are Python numbers on both sides are dims of a shape: Python.
    def lower(g: OnnxBuilder, left: Any, right: Any) -> Any:
        if not (_is_tensor(left) or _is_tensor(right)):
            return python(left, right)
        return g.op(op_type, *g.promote(left, right))

    return lower


add = _binary("Add", operator.add)
subtract = _binary("Sub", operator.sub)
multiply = _binary("Mul", operator.mul)
minimum = _binary("Min", min)
maximum = _binary("Max", max)


def divide(g: OnnxBuilder, left: Any, right: Any) -> Any:
    if not (_is_tensor(left) or _is_tensor(right)):
        return left / right
    return g.op("Div", *g.promote(g.floats(left), right))


def floor_divide(g: OnnxBuilder, left: Any, right: Any) -> Any:
    if not (_is_tensor(left) or _is_tensor(right)):
        return left // right
    a, b = g.promote(left, right)
    if a.dtype.kind == "f":
        return g.op("Floor", g.op("Div", a, b))
    # ONNX Div truncates ints; floor: one less where the remainder's sign differs.
    quotient = g.op("Div", a, b)
    remainder = g.op("Sub", a, g.op("Mul", quotient, b))
    signs_differ = g.op("Xor", g.op("Less", remainder, 0), g.op("Less", b, 0))
    inexact = g.op("And", g.op("Not", g.op("Equal", remainder, 0)), signs_differ)
    return g.op("Sub", quotient, g.cast(inexact, a.dtype))


def power(g: OnnxBuilder, base: Any, exponent: Any) -> Any:
    if not (_is_tensor(base) or _is_tensor(exponent)):
        return base**exponent
    return g.op("Pow", *g.promote(base, exponent))


def _unary(op_type: str) -> Callable[[OnnxBuilder, Any], Any]:
    def lower(g: OnnxBuilder, input: Any) -> Any:
        return g.op(op_type, g.floats(input))

    return lower


def negate(g: OnnxBuilder, input: Any) -> Any:
    return g.op("Neg", input)


def absolute(g: OnnxBuilder, input: Any) -> Any:
    return g.op("Abs", input)


exponential = _unary("Exp")
log = _unary("Log")
sqrt = _unary("Sqrt")
sine = _unary("Sin")
cosine = _unary("Cos")
sigmoid = _unary("Sigmoid")
tanh = _unary("Tanh")


def relu(g: OnnxBuilder, input: Sym) -> Any:
    return g.op("Max", input, 0)


def softplus(g: OnnxBuilder, input: Sym) -> Any:
    # log1p(exp(-|x|)) + max(x, 0): no overflow for large |x|, as NumPy's.
    x = g.floats(input)
    tail = g.op("Log", g.op("Add", g.op("Exp", g.op("Neg", g.op("Abs", x))), 1.0))
    return g.op("Add", tail, g.op("Max", x, 0.0))


def silu(g: OnnxBuilder, input: Sym) -> Any:
    x = g.floats(input)
    return g.op("Mul", x, g.op("Sigmoid", x))


def leaky_relu(g: OnnxBuilder, input: Sym, slope: float) -> Any:
    # Composed: onnxruntime's LeakyRelu has no double kernel.
    x = g.floats(input)
    return g.op("Where", g.op("Less", x, 0.0), g.op("Mul", x, float(slope)), x)


def gelu(g: OnnxBuilder, input: Sym, approximate: bool) -> Any:
    x = g.floats(input)
    if approximate:
        inner = g.op("Add", x, g.op("Mul", g.op("Pow", x, 3.0), 0.044715))
        t = g.op("Tanh", g.op("Mul", inner, math.sqrt(2.0 / math.pi)))
        return g.op("Mul", g.op("Mul", x, 0.5), g.op("Add", t, 1.0))
    erf = g.op("Erf", g.op("Div", x, math.sqrt(2.0)))
    return g.op("Mul", g.op("Mul", x, 0.5), g.op("Add", erf, 1.0))


def _compare(op_type: str, python: Callable[[Any, Any], Any]) -> Binary:
    def lower(g: OnnxBuilder, left: Any, right: Any) -> Any:
        if not (_is_tensor(left) or _is_tensor(right)):
            return python(left, right)
        return g.op(op_type, *g.promote(left, right))

    return lower


greater = _compare("Greater", operator.gt)
greater_equal = _compare("GreaterOrEqual", operator.ge)
less = _compare("Less", operator.lt)
less_equal = _compare("LessOrEqual", operator.le)
equal = _compare("Equal", operator.eq)


def not_equal(g: OnnxBuilder, left: Any, right: Any) -> Any:
    if not (_is_tensor(left) or _is_tensor(right)):
        return left != right
    return g.op("Not", g.op("Equal", *g.promote(left, right)))


def _logical(op_type: str) -> Binary:
    def lower(g: OnnxBuilder, left: Any, right: Any) -> Any:
        return g.op(op_type, g.cast(left, BOOL), g.cast(right, BOOL))

    return lower


logical_and = _logical("And")
logical_or = _logical("Or")
logical_xor = _logical("Xor")


def logical_not(g: OnnxBuilder, input: Any) -> Any:
    return g.op("Not", g.cast(input, BOOL))


def where(g: OnnxBuilder, condition: Any, input1: Any, input2: Any) -> Any:
    return g.op("Where", g.cast(condition, BOOL), *g.promote(input1, input2))


def cast(g: OnnxBuilder, input: Any, dtype: Any) -> Any:
    return g.cast(input, numpy_dtype(getattr(dtype, "name", dtype)))


def stop_gradient(g: OnnxBuilder, input: Any) -> Any:
    return input


LOWERINGS: dict[str, Callable[..., Any]] = {
    "add": add,
    "subtract": subtract,
    "multiply": multiply,
    "divide": divide,
    "floor_divide": floor_divide,
    "power": power,
    "minimum": minimum,
    "maximum": maximum,
    "negate": negate,
    "absolute": absolute,
    "exponential": exponential,
    "log": log,
    "sqrt": sqrt,
    "sine": sine,
    "cosine": cosine,
    "relu": relu,
    "sigmoid": sigmoid,
    "tanh": tanh,
    "softplus": softplus,
    "silu": silu,
    "leaky_relu": leaky_relu,
    "gelu": gelu,
    "greater": greater,
    "greater_equal": greater_equal,
    "less": less,
    "less_equal": less_equal,
    "equal": equal,
    "not_equal": not_equal,
    "logical_and": logical_and,
    "logical_or": logical_or,
    "logical_xor": logical_xor,
    "logical_not": logical_not,
    "where": where,
    "cast": cast,
    "stop_gradient": stop_gradient,
}
