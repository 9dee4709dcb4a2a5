from __future__ import annotations

import math

import numpy as np

from mithril_core.backends.numpy.lowerings._utils import (
    Array,
    Grad,
    Lowering,
    Needs,
    Operand,
    reduce_to,
    wants,
)

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


def add(left: Operand, right: Operand) -> Array:
    return np.add(left, right)


def add_vjp(
    output_grad: Array,
    output: Array,
    left: Operand,
    right: Operand,
    needs: Needs = None,
) -> tuple[Grad, Grad]:
    return (
        reduce_to(output_grad, left) if wants(needs, 0, left) else None,
        reduce_to(output_grad, right) if wants(needs, 1, right) else None,
    )


def subtract(left: Operand, right: Operand) -> Array:
    return np.subtract(left, right)


def subtract_vjp(
    output_grad: Array,
    output: Array,
    left: Operand,
    right: Operand,
    needs: Needs = None,
) -> tuple[Grad, Grad]:
    return (
        reduce_to(output_grad, left) if wants(needs, 0, left) else None,
        reduce_to(-output_grad, right) if wants(needs, 1, right) else None,
    )


def multiply(left: Operand, right: Operand) -> Array:
    return np.multiply(left, right)


def multiply_vjp(
    output_grad: Array,
    output: Array,
    left: Operand,
    right: Operand,
    needs: Needs = None,
) -> tuple[Grad, Grad]:
    return (
        reduce_to(output_grad * right, left) if wants(needs, 0, left) else None,
        reduce_to(output_grad * left, right) if wants(needs, 1, right) else None,
    )


def divide(left: Operand, right: Operand) -> Array:
    return np.true_divide(left, right)


def divide_vjp(
    output_grad: Array,
    output: Array,
    left: Operand,
    right: Operand,
    needs: Needs = None,
) -> tuple[Grad, Grad]:
    return (
        reduce_to(output_grad / right, left) if wants(needs, 0, left) else None,
        reduce_to(-output_grad * output / right, right)
        if wants(needs, 1, right)
        else None,
    )


def floor_divide(left: Operand, right: Operand) -> Array:
    return np.floor_divide(left, right)


def floor_divide_vjp(
    output_grad: Array,
    output: Array,
    left: Operand,
    right: Operand,
    needs: Needs = None,
) -> tuple[None, None]:
    return None, None


def power(base: Operand, exponent: Operand) -> Array:
    return np.power(base, exponent)


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


def minimum(left: Operand, right: Operand) -> Array:
    return np.minimum(left, right)


def minimum_vjp(
    output_grad: Array,
    output: Array,
    left: Operand,
    right: Operand,
    needs: Needs = None,
) -> tuple[Grad, Grad]:
    return _pick_vjp(output_grad, left, right, np.less(left, right), needs)


def maximum(left: Operand, right: Operand) -> Array:
    return np.maximum(left, right)


def maximum_vjp(
    output_grad: Array,
    output: Array,
    left: Operand,
    right: Operand,
    needs: Needs = None,
) -> tuple[Grad, Grad]:
    return _pick_vjp(output_grad, left, right, np.greater(left, right), needs)


def _pick_vjp(
    output_grad: Array, left: Operand, right: Operand, left_wins: Array, needs: Needs
) -> tuple[Grad, Grad]:
    tie = np.equal(left, right)
    half = 0.5 * output_grad
    return (
        reduce_to(np.where(tie, half, output_grad * left_wins), left)
        if wants(needs, 0, left)
        else None,
        reduce_to(np.where(tie, half, output_grad * ~(left_wins | tie)), right)
        if wants(needs, 1, right)
        else None,
    )


def negate(input: Array) -> Array:
    return np.negative(input)


def negate_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (-output_grad if wants(needs, 0, input) else None,)


def absolute(input: Array) -> Array:
    return np.abs(input)


def absolute_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (output_grad * np.sign(input) if wants(needs, 0, input) else None,)


def exponential(input: Array) -> Array:
    return np.exp(input)


def exponential_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (output_grad * output if wants(needs, 0, input) else None,)


def log(input: Array) -> Array:
    return np.log(input)


def log_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (output_grad / input if wants(needs, 0, input) else None,)


def sqrt(input: Array) -> Array:
    return np.sqrt(input)


def sqrt_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (0.5 * output_grad / output if wants(needs, 0, input) else None,)


def sine(input: Array) -> Array:
    return np.sin(input)


def sine_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (output_grad * np.cos(input) if wants(needs, 0, input) else None,)


def cosine(input: Array) -> Array:
    return np.cos(input)


def cosine_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (-output_grad * np.sin(input) if wants(needs, 0, input) else None,)


def relu(input: Array) -> Array:
    return np.maximum(input, 0)


def relu_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (output_grad * (output > 0) if wants(needs, 0, input) else None,)


def sigmoid(input: Array) -> Array:
    return np.exp(-np.logaddexp(0, -input))


def sigmoid_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (output_grad * output * (1 - output) if wants(needs, 0, input) else None,)


def tanh(input: Array) -> Array:
    return np.tanh(input)


def tanh_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (output_grad * (1 - output * output) if wants(needs, 0, input) else None,)


def softplus(input: Array) -> Array:
    return np.logaddexp(0, input)


def softplus_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    return (output_grad * sigmoid(input) if wants(needs, 0, input) else None,)


def silu(input: Array) -> Array:
    return input * sigmoid(input)


def silu_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[Grad]:
    if not wants(needs, 0, input):
        return (None,)
    sig = sigmoid(input)
    return (output_grad * (sig + output * (1 - sig)),)


def leaky_relu(input: Array, slope: float) -> Array:
    return np.where(input > 0, input, input * slope)


def leaky_relu_vjp(
    output_grad: Array, output: Array, input: Array, slope: float, needs: Needs = None
) -> tuple[Grad, None]:
    if not wants(needs, 0, input):
        return None, None
    return np.where(input > 0, output_grad, output_grad * slope), None


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


def greater(left: Operand, right: Operand) -> Array:
    return np.greater(left, right)


def greater_equal(left: Operand, right: Operand) -> Array:
    return np.greater_equal(left, right)


def less(left: Operand, right: Operand) -> Array:
    return np.less(left, right)


def less_equal(left: Operand, right: Operand) -> Array:
    return np.less_equal(left, right)


def equal(left: Operand, right: Operand) -> Array:
    return np.equal(left, right)


def not_equal(left: Operand, right: Operand) -> Array:
    return np.not_equal(left, right)


def logical_and(left: Operand, right: Operand) -> Array:
    return np.logical_and(left, right)


def logical_or(left: Operand, right: Operand) -> Array:
    return np.logical_or(left, right)


def logical_xor(left: Operand, right: Operand) -> Array:
    return np.logical_xor(left, right)


def _no_grad_binary_vjp(
    output_grad: Array,
    output: Array,
    left: Operand,
    right: Operand,
    needs: Needs = None,
) -> tuple[None, None]:
    return None, None


greater_vjp = greater_equal_vjp = less_vjp = less_equal_vjp = _no_grad_binary_vjp
equal_vjp = not_equal_vjp = _no_grad_binary_vjp
logical_and_vjp = logical_or_vjp = logical_xor_vjp = _no_grad_binary_vjp


def logical_not(input: Operand) -> Array:
    return np.logical_not(input)


def logical_not_vjp(
    output_grad: Array, output: Array, input: Operand, needs: Needs = None
) -> tuple[None]:
    return (None,)


def where(condition: Array, input1: Operand, input2: Operand) -> Array:
    return np.where(condition, input1, input2)


def where_vjp(
    output_grad: Array,
    output: Array,
    condition: Array,
    input1: Operand,
    input2: Operand,
    needs: Needs = None,
) -> tuple[None, Grad, Grad]:
    return (
        None,
        reduce_to(np.where(condition, output_grad, 0), input1)
        if wants(needs, 1, input1)
        else None,
        reduce_to(np.where(condition, 0, output_grad), input2)
        if wants(needs, 2, input2)
        else None,
    )


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


def stop_gradient_vjp(
    output_grad: Array, output: Array, input: Array, needs: Needs = None
) -> tuple[None]:
    return (None,)


LOWERINGS: dict[str, Lowering] = {
    "add": (add, add_vjp),
    "subtract": (subtract, subtract_vjp),
    "multiply": (multiply, multiply_vjp),
    "divide": (divide, divide_vjp),
    "floor_divide": (floor_divide, floor_divide_vjp),
    "power": (power, power_vjp),
    "minimum": (minimum, minimum_vjp),
    "maximum": (maximum, maximum_vjp),
    "negate": (negate, negate_vjp),
    "absolute": (absolute, absolute_vjp),
    "exponential": (exponential, exponential_vjp),
    "log": (log, log_vjp),
    "sqrt": (sqrt, sqrt_vjp),
    "sine": (sine, sine_vjp),
    "cosine": (cosine, cosine_vjp),
    "relu": (relu, relu_vjp),
    "sigmoid": (sigmoid, sigmoid_vjp),
    "tanh": (tanh, tanh_vjp),
    "softplus": (softplus, softplus_vjp),
    "silu": (silu, silu_vjp),
    "leaky_relu": (leaky_relu, leaky_relu_vjp),
    "gelu": (gelu, gelu_vjp),
    "greater": (greater, greater_vjp),
    "greater_equal": (greater_equal, greater_equal_vjp),
    "less": (less, less_vjp),
    "less_equal": (less_equal, less_equal_vjp),
    "equal": (equal, equal_vjp),
    "not_equal": (not_equal, not_equal_vjp),
    "logical_and": (logical_and, logical_and_vjp),
    "logical_or": (logical_or, logical_or_vjp),
    "logical_xor": (logical_xor, logical_xor_vjp),
    "logical_not": (logical_not, logical_not_vjp),
    "where": (where, where_vjp),
    "cast": (cast, cast_vjp),
    "stop_gradient": (stop_gradient, stop_gradient_vjp),
}
