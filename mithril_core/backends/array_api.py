"""Forward lowerings written once against an array namespace ``xp`` (``numpy``,
``jax.numpy``, ``mlx.core``): ``lowerings(xp)`` instantiates them for one backend.

Only names the three namespaces share with one meaning are used; a backend whose
semantics differ for an op overrides it in its own family table. Each function takes
its inputs as keywords named after the primitive's input terminals.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mithril_core.primitives.lowering import Lowering

Axis = int | tuple[int, ...] | None


def lowerings(xp: ModuleType | Any) -> dict[str, Lowering]:
    def add(left: Any, right: Any) -> Any:
        return xp.add(left, right)

    def subtract(left: Any, right: Any) -> Any:
        return xp.subtract(left, right)

    def multiply(left: Any, right: Any) -> Any:
        return xp.multiply(left, right)

    def divide(left: Any, right: Any) -> Any:
        return xp.divide(left, right)

    def floor_divide(left: Any, right: Any) -> Any:
        return xp.floor_divide(left, right)

    def power(base: Any, exponent: Any) -> Any:
        return xp.power(base, exponent)

    def minimum(left: Any, right: Any) -> Any:
        return xp.minimum(left, right)

    def maximum(left: Any, right: Any) -> Any:
        return xp.maximum(left, right)

    def negate(input: Any) -> Any:
        return xp.negative(input)

    def absolute(input: Any) -> Any:
        return xp.abs(input)

    def exponential(input: Any) -> Any:
        return xp.exp(input)

    def log(input: Any) -> Any:
        return xp.log(input)

    def sqrt(input: Any) -> Any:
        return xp.sqrt(input)

    def sine(input: Any) -> Any:
        return xp.sin(input)

    def cosine(input: Any) -> Any:
        return xp.cos(input)

    def relu(input: Any) -> Any:
        return xp.maximum(input, 0)

    def sigmoid(input: Any) -> Any:
        return xp.exp(-xp.logaddexp(0, -input))

    def tanh(input: Any) -> Any:
        return xp.tanh(input)

    def softplus(input: Any) -> Any:
        return xp.logaddexp(input, 0)

    def silu(input: Any) -> Any:
        return input * sigmoid(input)

    def leaky_relu(input: Any, slope: float) -> Any:
        return xp.where(input > 0, input, input * slope)

    def greater(left: Any, right: Any) -> Any:
        return xp.greater(left, right)

    def greater_equal(left: Any, right: Any) -> Any:
        return xp.greater_equal(left, right)

    def less(left: Any, right: Any) -> Any:
        return xp.less(left, right)

    def less_equal(left: Any, right: Any) -> Any:
        return xp.less_equal(left, right)

    def equal(left: Any, right: Any) -> Any:
        return xp.equal(left, right)

    def not_equal(left: Any, right: Any) -> Any:
        return xp.not_equal(left, right)

    def logical_and(left: Any, right: Any) -> Any:
        return xp.logical_and(left, right)

    def logical_or(left: Any, right: Any) -> Any:
        return xp.logical_or(left, right)

    def logical_xor(left: Any, right: Any) -> Any:
        return xp.logical_xor(left, right)

    def logical_not(input: Any) -> Any:
        return xp.logical_not(input)

    def where(condition: Any, input1: Any, input2: Any) -> Any:
        return xp.where(condition, input1, input2)

    def sum(input: Any, axis: Axis, keepdim: bool) -> Any:
        return xp.sum(input, axis=axis, keepdims=keepdim)

    def mean(input: Any, axis: Axis, keepdim: bool) -> Any:
        return xp.mean(input, axis=axis, keepdims=keepdim)

    def max(input: Any, axis: Axis, keepdim: bool) -> Any:
        return xp.max(input, axis=axis, keepdims=keepdim)

    def min(input: Any, axis: Axis, keepdim: bool) -> Any:
        return xp.min(input, axis=axis, keepdims=keepdim)

    def variance(input: Any, axis: Axis, keepdim: bool, correction: float) -> Any:
        return xp.var(input, axis=axis, ddof=correction, keepdims=keepdim)

    def arg_max(input: Any, axis: int | None, keepdim: bool) -> Any:
        return xp.argmax(input, axis=axis, keepdims=keepdim).astype(xp.int64)

    def arg_min(input: Any, axis: int | None, keepdim: bool) -> Any:
        return xp.argmin(input, axis=axis, keepdims=keepdim).astype(xp.int64)

    def matrix_multiply(left: Any, right: Any) -> Any:
        return xp.matmul(left, right)

    forwards = [
        add, subtract, multiply, divide, floor_divide, power, minimum, maximum,
        negate, absolute, exponential, log, sqrt, sine, cosine, relu, sigmoid, tanh,
        softplus, silu, leaky_relu, greater, greater_equal, less, less_equal, equal,
        not_equal, logical_and, logical_or, logical_xor, logical_not, where,
        sum, mean, max, min, variance, arg_max, arg_min, matrix_multiply,
    ]  # fmt: skip
    return {f.__name__: Lowering(f, named=True) for f in forwards}
