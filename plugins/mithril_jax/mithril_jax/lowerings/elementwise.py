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


def relu(input: Value) -> jax.Array:
    return jax.nn.relu(input)


def gelu(input: Value, approximate: bool) -> jax.Array:
    return jax.nn.gelu(input, approximate=approximate)


def cast(input: Value, dtype: Dtype | str) -> jax.Array:
    return jnp.asarray(input).astype(jax_dtype(dtype))


def stop_gradient(input: jax.Array) -> jax.Array:
    return jax.lax.stop_gradient(input)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "power": power,
    "relu": relu,
    "gelu": gelu,
    "cast": cast,
    "stop_gradient": stop_gradient,
}
