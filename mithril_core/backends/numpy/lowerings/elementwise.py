from __future__ import annotations

import math

import numpy as np

from mithril_core.backends.numpy.lowerings._utils import (
    Array,
    Entry,
    Grad,
    Needs,
    Operand,
    reduce_to,
    vjp_from_rules,
    wants,
    with_vjp,
)
from mithril_core.primitives.elementwise import StopGradient

_SQRT1_2 = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)

# W. J. Cody, "Rational Chebyshev approximations for the error function" (1969),
# coefficients as in CALERF (netlib specfun), highest power first for np.polyval.
_ERF_NUM = [
    1.85777706184603153e-1,
    3.16112374387056560e00,
    1.13864154151050156e02,
    3.77485237685302021e02,
    3.20937758913846947e03,
]
_ERF_DEN = [
    1.0,
    2.36012909523441209e01,
    2.44024637934444173e02,
    1.28261652607737228e03,
    2.84423683343917062e03,
]
_ERFC_MID_NUM = [
    2.15311535474403846e-8,
    5.64188496988670089e-1,
    8.88314979438837594e00,
    6.61191906371416295e01,
    2.98635138197400131e02,
    8.81952221241769090e02,
    1.71204761263407058e03,
    2.05107837782607147e03,
    1.23033935479799725e03,
]
_ERFC_MID_DEN = [
    1.0,
    1.57449261107098347e01,
    1.17693950891312499e02,
    5.37181101862009858e02,
    1.62138957456669019e03,
    3.29079923573345963e03,
    4.36261909014324716e03,
    3.43936767414372164e03,
    1.23033935480374942e03,
]
_ERFC_TAIL_NUM = [
    1.63153871373020978e-2,
    3.05326634961232344e-1,
    3.60344899949804439e-1,
    1.25781726111229246e-1,
    1.60837851487422766e-2,
    6.58749161529837803e-4,
]
_ERFC_TAIL_DEN = [
    1.0,
    2.56852019228982242e00,
    1.87295284992346047e00,
    5.27905102951428412e-1,
    6.05183413124413191e-2,
    2.33520497626869185e-3,
]


def _erfc(y: Array) -> Array:
    # Past 26.6 erfc underflows to 0 anyway; clipping keeps y*y and exp finite.
    y = np.minimum(y, 30.0)
    mid = y <= 4.0
    out = np.empty_like(y)
    out[mid] = np.polyval(_ERFC_MID_NUM, y[mid]) / np.polyval(_ERFC_MID_DEN, y[mid])
    big = y[~mid]
    z = 1.0 / (big * big)
    tail = z * np.polyval(_ERFC_TAIL_NUM, z) / np.polyval(_ERFC_TAIL_DEN, z)
    out[~mid] = (_INV_SQRT_PI - tail) / big
    # exp(-y**2) split as in Cody's CALERF to keep full relative accuracy.
    head = np.trunc(y * 16.0) / 16.0
    return out * np.exp(-head * head) * np.exp(-(y - head) * (y + head))


def _erf(x: Array) -> Array:
    x64 = np.asarray(x, dtype=np.float64)
    y = np.abs(x64)
    small = y <= 0.46875
    out = np.empty_like(x64)
    z = y[small] * y[small]
    out[small] = x64[small] * np.polyval(_ERF_NUM, z) / np.polyval(_ERF_DEN, z)
    rest = ~small
    out[rest] = np.copysign(1.0 - _erfc(y[rest]), x64[rest])
    return out.astype(np.result_type(x, np.float16), copy=False)


def power_vjp(
    output_grad: Array,
    output: Array,
    base: Operand,
    exponent: Operand,
    needs: Needs = None,
) -> tuple[Grad, Grad]:
    # PyTorch's derivatives: d/db is 0 where e == 0 (d(0 ** 0)/db is 0, not 0 * inf),
    # d/de is 0 where b == 0 <= e and y * log(b) elsewhere (NaN for b < 0); the
    # infinities and NaNs of the other points are the answer, so no warnings.
    with np.errstate(divide="ignore", invalid="ignore"):
        return (
            reduce_to(output_grad * _power_base_grad(base, exponent), base)
            if wants(needs, 0, base)
            else None,
            reduce_to(
                output_grad * _power_exponent_grad(output, base, exponent), exponent
            )
            if wants(needs, 1, exponent)
            else None,
        )


def _power_base_grad(base: Operand, exponent: Operand) -> Array:
    return np.where(np.equal(exponent, 0), 0, exponent * np.power(base, exponent - 1))


def _power_exponent_grad(output: Array, base: Operand, exponent: Operand) -> Array:
    at_zero = np.logical_and(np.equal(base, 0), np.greater_equal(exponent, 0))
    return np.where(at_zero, 0, output * _log(base))


def _log(base: Operand) -> Array | float:
    if isinstance(base, int | float):  # a Python float keeps float32 exponents float32
        return math.log(base) if base > 0 else -math.inf if base == 0 else math.nan
    return np.log(base)


def gelu(input: Array, approximate: bool) -> Array:
    if approximate:
        inner = _SQRT_2_OVER_PI * (input + 0.044715 * input**3)
        return 0.5 * input * (1 + np.tanh(inner))
    return 0.5 * input * (1 + _erf(input * _SQRT1_2))


def gelu_vjp(
    output_grad: Array,
    output: Array,
    input: Array,
    approximate: bool,
    needs: Needs = None,
) -> tuple[Grad, None]:
    if not wants(needs, 0, input):
        return None, None
    if approximate:
        t = np.tanh(_SQRT_2_OVER_PI * (input + 0.044715 * input**3))
        d_inner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * input * input)
        return output_grad * (0.5 * (1 + t) + 0.5 * input * (1 - t * t) * d_inner), None
    cdf = 0.5 * (1 + _erf(input * _SQRT1_2))
    pdf = _INV_SQRT_2PI * np.exp(-0.5 * input * input)
    return output_grad * (cdf + input * pdf), None


def cast(input: Array, dtype: str) -> Array:
    return np.asarray(input).astype(dtype)


def cast_vjp(
    output_grad: Array, output: Array, input: Array, dtype: str, needs: Needs = None
) -> tuple[Grad, None]:
    if not wants(needs, 0, input) or output_grad.dtype.kind != "f":
        return None, None
    return output_grad.astype(input.dtype, copy=False), None


def stop_gradient(input: Array) -> Array:
    return input


LOWERINGS: dict[str, Entry] = {
    "power": with_vjp("power", power_vjp),
    "gelu": (gelu, gelu_vjp),
    "cast": (cast, cast_vjp),
    "stop_gradient": (stop_gradient, vjp_from_rules(StopGradient.grad_rules)),
}
