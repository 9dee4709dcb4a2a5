from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import mlx.core as mx

from mithril_core.dtypes import Dtype
from mithril_mlx._dtypes import mlx_dtype

Value = mx.array | int | float | bool


def _array(value: Value) -> mx.array:
    return value if isinstance(value, mx.array) else mx.array(value)


def power(base: Value, exponent: Value) -> Any:
    arrays = [v for v in (base, exponent) if isinstance(v, mx.array)]
    if not any(mx.issubdtype(a.dtype, mx.floating) for a in arrays):
        return mx.power(base, exponent)
    # A Python scalar becomes an array of the other operand's (float) dtype, as MLX
    # promotes it, so that the custom gradient sees two arrays.
    return _float_power(_as(base, arrays[0].dtype), _as(exponent, arrays[0].dtype))


def _as(value: Value, dtype: mx.Dtype) -> mx.array:
    return value if isinstance(value, mx.array) else mx.array(value, dtype=dtype)


@mx.custom_function
def _float_power(base: mx.array, exponent: mx.array) -> mx.array:
    return mx.power(base, exponent)


@_float_power.vjp
def _float_power_vjp(
    primals: tuple[mx.array, mx.array], cotangent: mx.array, output: mx.array
) -> tuple[mx.array, mx.array]:
    # PyTorch's derivatives: d/db is 0 where e == 0 (MLX's is NaN at 0 ** 0), d/de is
    # 0 where b == 0 <= e and y * log(b) elsewhere (NaN for b < 0).
    base, exponent = primals
    d_base = mx.where(exponent == 0, 0, exponent * mx.power(base, exponent - 1))
    at_zero = mx.logical_and(base == 0, exponent >= 0)
    d_exponent = mx.where(at_zero, 0, output * mx.log(base))
    return (
        _reduce_to(cotangent * d_base, base),
        _reduce_to(cotangent * d_exponent, exponent),
    )


def _reduce_to(grad: mx.array, like: mx.array) -> mx.array:
    """``grad`` summed over the axes that ``like`` was broadcast along."""
    if grad.shape == like.shape:
        return grad
    lead = grad.ndim - like.ndim
    axes = [*range(lead)] + [
        i + lead
        for i, n in enumerate(like.shape)
        if n == 1 and grad.shape[i + lead] != 1
    ]
    return mx.sum(grad, axis=axes).reshape(like.shape) if axes else grad


def gelu(input: mx.array, approximate: bool) -> mx.array:
    if approximate:
        inner = math.sqrt(2 / math.pi) * (input + 0.044715 * input**3)
        return 0.5 * input * (1 + mx.tanh(inner))
    return 0.5 * input * (1 + mx.erf(input / math.sqrt(2)))


def logical_and(left: Value, right: Value) -> mx.array:
    return mx.logical_and(_array(left), _array(right))


def logical_or(left: Value, right: Value) -> mx.array:
    return mx.logical_or(_array(left), _array(right))


def logical_xor(left: Value, right: Value) -> mx.array:
    return mx.logical_xor(_array(left), _array(right))


def logical_not(input: Value) -> mx.array:
    return mx.logical_not(_array(input))


def cast(input: Value, dtype: Dtype | str) -> mx.array:
    return _array(input).astype(mlx_dtype(dtype))


def stop_gradient(input: mx.array) -> mx.array:
    return mx.stop_gradient(input)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "power": power,
    "gelu": gelu,
    "logical_and": logical_and,
    "logical_or": logical_or,
    "logical_xor": logical_xor,
    "logical_not": logical_not,
    "cast": cast,
    "stop_gradient": stop_gradient,
}
