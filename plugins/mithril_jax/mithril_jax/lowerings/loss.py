from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero


def squared_error(input: jax.Array, target: jax.Array) -> jax.Array:
    return (input - target) ** 2


def absolute_error(input: jax.Array, target: jax.Array) -> jax.Array:
    return jnp.abs(input - target)


def _log_q(input: jax.Array, axis: int, input_type: str) -> jax.Array:
    if input_type == "logits":
        return jax.nn.log_softmax(input, axis=axis)
    return jnp.log(input) if input_type == "probs" else input


def cross_entropy(
    input: jax.Array, target: jax.Array, axis: int, input_type: str
) -> jax.Array:
    # As embedding: a computed class outside [0, classes) gives NaN and no gradient.
    valid = (target >= 0) & (target < input.shape[axis])
    index = jnp.expand_dims(jnp.where(valid, target, 0), axis)
    log_q = _log_q(input, axis, input_type)
    picked = jnp.take_along_axis(log_q, index, axis=axis, mode="clip")
    return jnp.where(valid, -jnp.squeeze(picked, axis), jnp.nan)


def cross_entropy_soft(
    input: jax.Array, target: jax.Array, axis: int, input_type: str
) -> jax.Array:
    return -jnp.sum(target * _log_q(input, axis, input_type), axis=axis)


def binary_cross_entropy(
    input: jax.Array, target: jax.Array, input_type: str
) -> jax.Array:
    if input_type == "logits":
        # Softplus has no kink: the gradient is sigmoid(x) - t at x = 0 too.
        softplus = jax.nn.softplus
        return target * softplus(-input) + (1 - target) * softplus(input)
    return _binary_cross_entropy_probs(input, target)


# PyTorch's floor of p * (1 - p) in the input gradient, a C float.
_BCE_EPSILON = float(np.float32(1e-12))


@jax.custom_jvp
def _binary_cross_entropy_probs(input: jax.Array, target: jax.Array) -> jax.Array:
    log_p = jnp.maximum(jnp.log(input), -100.0)
    log_1mp = jnp.maximum(jnp.log(1 - input), -100.0)
    return -(target * log_p + (1 - target) * log_1mp)


@partial(_binary_cross_entropy_probs.defjvp, symbolic_zeros=True)
def _binary_cross_entropy_probs_jvp(
    primals: tuple[jax.Array, jax.Array], tangents: tuple[Any, Any]
) -> tuple[jax.Array, jax.Array]:
    # F.binary_cross_entropy's gradients, finite for the input at p = 0 or 1 (the
    # clamped logs' autodiff gives 0 * inf there); the target's, -logit(p), is not.
    input, target = primals
    d_input, d_target = tangents
    output = _binary_cross_entropy_probs(input, target)
    tangent = jnp.zeros_like(output)
    if not isinstance(d_input, SymbolicZero):
        denom = jnp.maximum(input * (1 - input), _BCE_EPSILON)
        tangent = tangent + d_input * (input - target) / denom
    if not isinstance(d_target, SymbolicZero):
        tangent = tangent + d_target * (jnp.log1p(-input) - jnp.log(input))
    return output, tangent


LOWERINGS: dict[str, Callable[..., Any]] = {
    "squared_error": squared_error,
    "absolute_error": absolute_error,
    "cross_entropy": cross_entropy,
    "cross_entropy_soft": cross_entropy_soft,
    "binary_cross_entropy": binary_cross_entropy,
}
