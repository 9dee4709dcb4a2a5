from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from mithril_core.dtypes import Dtype
from mithril_jax._dtypes import jax_dtype

Value = jax.Array | int | float | bool


def add(left: Value, right: Value) -> Any:
    return left + right


def subtract(left: Value, right: Value) -> Any:
    return left - right


def multiply(left: Value, right: Value) -> Any:
    return left * right


def divide(left: Value, right: Value) -> Any:
    return left / right


def floor_divide(left: Value, right: Value) -> Any:
    return left // right


def power(base: Value, exponent: Value) -> Any:
    if jnp.issubdtype(jnp.result_type(base, exponent), jnp.floating):
        return _float_power(base, exponent)
    return base**exponent


@jax.custom_jvp
def _float_power(base: Value, exponent: Value) -> Any:
    return base**exponent


@partial(_float_power.defjvp, symbolic_zeros=True)
def _float_power_jvp(primals: tuple[Value, Value], tangents: tuple[Any, Any]) -> Any:
    # PyTorch's derivatives: d/db is 0 where e == 0 (JAX's is NaN at 0 ** 0), d/de is
    # 0 where b == 0 <= e and y * log(b) elsewhere (NaN for b < 0). An input with no
    # tangent is skipped, never multiplied by zero (inf * 0 would be NaN).
    base, exponent = primals
    d_base, d_exponent = tangents
    output = base**exponent
    tangent = jnp.zeros_like(output)
    if not isinstance(d_base, SymbolicZero):
        slope = jnp.where(exponent == 0, 0, exponent * base ** (exponent - 1))
        tangent = tangent + d_base * slope
    if not isinstance(d_exponent, SymbolicZero):
        at_zero = (base == 0) & (exponent >= 0)
        tangent = tangent + d_exponent * jnp.where(at_zero, 0, output * jnp.log(base))
    return output, tangent


def minimum(left: Value, right: Value) -> jax.Array:
    return jnp.minimum(left, right)


def maximum(left: Value, right: Value) -> jax.Array:
    return jnp.maximum(left, right)


def negate(input: Value) -> Any:
    return -input


def absolute(input: Value) -> jax.Array:
    return jnp.abs(input)


def exponential(input: Value) -> jax.Array:
    return jnp.exp(input)


def log(input: Value) -> jax.Array:
    return jnp.log(input)


def sqrt(input: Value) -> jax.Array:
    return jnp.sqrt(input)


def sine(input: Value) -> jax.Array:
    return jnp.sin(input)


def cosine(input: Value) -> jax.Array:
    return jnp.cos(input)


def relu(input: Value) -> jax.Array:
    return jax.nn.relu(input)


def sigmoid(input: Value) -> jax.Array:
    return jax.nn.sigmoid(input)


def tanh(input: Value) -> jax.Array:
    return jnp.tanh(input)


def softplus(input: Value) -> jax.Array:
    return jax.nn.softplus(input)


def silu(input: Value) -> jax.Array:
    return jax.nn.silu(input)


def leaky_relu(input: Value, slope: float) -> jax.Array:
    return jax.nn.leaky_relu(input, slope)


def gelu(input: Value, approximate: bool) -> jax.Array:
    return jax.nn.gelu(input, approximate=approximate)


def greater(left: Value, right: Value) -> jax.Array:
    return jnp.greater(left, right)


def greater_equal(left: Value, right: Value) -> jax.Array:
    return jnp.greater_equal(left, right)


def less(left: Value, right: Value) -> jax.Array:
    return jnp.less(left, right)


def less_equal(left: Value, right: Value) -> jax.Array:
    return jnp.less_equal(left, right)


def equal(left: Value, right: Value) -> jax.Array:
    return jnp.equal(left, right)


def not_equal(left: Value, right: Value) -> jax.Array:
    return jnp.not_equal(left, right)


def logical_and(left: Value, right: Value) -> jax.Array:
    return jnp.logical_and(left, right)


def logical_or(left: Value, right: Value) -> jax.Array:
    return jnp.logical_or(left, right)


def logical_xor(left: Value, right: Value) -> jax.Array:
    return jnp.logical_xor(left, right)


def logical_not(input: Value) -> jax.Array:
    return jnp.logical_not(input)


def where(condition: Value, input1: Value, input2: Value) -> jax.Array:
    return jnp.where(condition, input1, input2)


def cast(input: Value, dtype: Dtype | str) -> jax.Array:
    return jnp.asarray(input).astype(jax_dtype(dtype))


def stop_gradient(input: jax.Array) -> jax.Array:
    return jax.lax.stop_gradient(input)


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
