"""Element-wise primitives: arithmetic, comparisons, logic and activations."""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from typing import Any, ClassVar

from mithril_core.logical import types as ty
from mithril_core.logical.connection import NOVALUE, IOKey
from mithril_core.logical.model import Primitive
from mithril_core.primitives import _rules as r
from mithril_core.primitives.lowering import GradRule

_NUMERIC = ty.TENSORS | ty.SCALARS


# Gradient rules (``grad_rules``): per differentiable input, ``rule(xp, output_grad,
# output, *inputs)`` written against an array namespace ``xp`` (numpy, jax.numpy,
# mlx.core); backends without autograd generate their VJPs from them. An input that is
# absent has no gradient; ``_NO_GRAD`` declares an op with none.
_NO_GRAD: Mapping[str, GradRule] = {}


def _sigmoid(xp: Any, x: Any) -> Any:
    return xp.exp(-xp.logaddexp(0, -x))


def _pick(xp: Any, g: Any, left: Any, right: Any, wins: Any) -> Any:
    # Ties split the gradient evenly, as PyTorch's minimum/maximum do.
    return xp.where(left == right, 0.5 * g, g * wins)


def _silu_grad(xp: Any, g: Any, y: Any, input: Any) -> Any:  # noqa: A002
    sig = _sigmoid(xp, input)
    return g * (sig + y * (1 - sig))


def _power_base_grad(xp: Any, g: Any, y: Any, base: Any, exponent: Any) -> Any:
    # PyTorch's: 0 where the exponent is 0 (d(0 ** 0)/db is 0, not 0 * inf).
    return xp.where(exponent == 0, 0, g * exponent * xp.power(base, exponent - 1))


def _power_exponent_grad(xp: Any, g: Any, y: Any, base: Any, exponent: Any) -> Any:
    # PyTorch's: 0 where base == 0 <= exponent; y * log(base) elsewhere (NaN if < 0).
    at_zero = xp.logical_and(base == 0, exponent >= 0)
    return xp.where(at_zero, 0, g * y * xp.log(base))


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_grad(xp: Any, g: Any, y: Any, input: Any, approximate: bool) -> Any:  # noqa: A002
    if approximate:
        t = xp.tanh(_SQRT_2_OVER_PI * (input + 0.044715 * input * input * input))
        d_inner = _SQRT_2_OVER_PI * (1 + 3 * 0.044715 * input * input)
        return g * (0.5 * (1 + t) + 0.5 * input * (1 - t * t) * d_inner)
    # d/dx x * cdf(x) = cdf(x) + x * pdf(x); cdf = y / x (1/2 at 0): no erf needed.
    zero = input == 0
    cdf = xp.where(zero, 0.5, y / xp.where(zero, 1, input))
    pdf = _INV_SQRT_2PI * xp.exp(-0.5 * input * input)
    return g * (cdf + input * pdf)


class _Binary(Primitive):
    """Broadcasting binary op on tensors or scalars: ``output = left <op> right``."""

    def __init__(
        self, name: str | None = None, left: Any = NOVALUE, right: Any = NOVALUE
    ) -> None:
        super().__init__(
            name=name,
            left=IOKey(type=_NUMERIC) if left is NOVALUE else left,
            right=IOKey(type=_NUMERIC) if right is NOVALUE else right,
            output=IOKey(type=_NUMERIC),
        )


def _binary_rules(fold: Any, *, true_divide: bool = False) -> tuple[r.RuleFn, ...]:
    return (
        r.broadcast("left", "right"),
        r.promote_types("left", "right", true_divide=true_divide),
        r.fold_scalars(fold, "left", "right"),
    )


class Add(_Binary):
    """``left + right`` with broadcasting."""

    op_name = "add"
    grad_rules = {
        "left": lambda xp, g, y, left, right: g,
        "right": lambda xp, g, y, left, right: g,
    }
    rules = _binary_rules(operator.add)


class Subtract(_Binary):
    """``left - right`` with broadcasting."""

    op_name = "subtract"
    grad_rules = {
        "left": lambda xp, g, y, left, right: g,
        "right": lambda xp, g, y, left, right: -g,
    }
    rules = _binary_rules(operator.sub)


class Multiply(_Binary):
    """``left * right`` with broadcasting."""

    op_name = "multiply"
    grad_rules = {
        "left": lambda xp, g, y, left, right: g * right,
        "right": lambda xp, g, y, left, right: g * left,
    }
    rules = _binary_rules(operator.mul)


class Divide(_Binary):
    """True division ``left / right`` with broadcasting (always float)."""

    op_name = "divide"
    grad_rules = {
        "left": lambda xp, g, y, left, right: g / right,
        "right": lambda xp, g, y, left, right: -g * y / right,
    }
    rules = _binary_rules(operator.truediv, true_divide=True)


class FloorDivide(_Binary):
    """Floor division ``left // right`` with broadcasting."""

    op_name = "floor_divide"
    grad_rules = _NO_GRAD
    differentiable = False
    rules = _binary_rules(operator.floordiv)


class Minimum(_Binary):
    """Element-wise minimum."""

    op_name = "minimum"
    grad_rules = {
        "left": lambda xp, g, y, left, right: _pick(xp, g, left, right, left < right),
        "right": lambda xp, g, y, left, right: _pick(xp, g, left, right, right < left),
    }
    rules = _binary_rules(min)


class Maximum(_Binary):
    """Element-wise maximum."""

    op_name = "maximum"
    grad_rules = {
        "left": lambda xp, g, y, left, right: _pick(xp, g, left, right, left > right),
        "right": lambda xp, g, y, left, right: _pick(xp, g, left, right, right > left),
    }
    rules = _binary_rules(max)


class Power(Primitive):
    """``base ** exponent`` with broadcasting."""

    op_name = "power"
    grad_rules = {"base": _power_base_grad, "exponent": _power_exponent_grad}
    rules = (
        r.broadcast("base", "exponent"),
        r.promote_types("base", "exponent"),
        r.fold_scalars(operator.pow, "base", "exponent"),
    )

    def __init__(
        self, name: str | None = None, base: Any = NOVALUE, exponent: Any = NOVALUE
    ) -> None:
        super().__init__(
            name=name,
            base=IOKey(type=_NUMERIC) if base is NOVALUE else base,
            exponent=IOKey(type=_NUMERIC) if exponent is NOVALUE else exponent,
            output=IOKey(type=_NUMERIC),
        )


class _Compare(_Binary):
    rules: ClassVar[tuple[r.RuleFn, ...]] = ()
    grad_rules = _NO_GRAD


def _compare_rules(fold: Any) -> tuple[r.RuleFn, ...]:
    return (
        r.broadcast("left", "right"),
        r.tensor_if_any(ty.BOOL, "left", "right"),
        r.fold_scalars(fold, "left", "right"),
    )


class Greater(_Compare):
    """``left > right`` (bool)."""

    op_name = "greater"
    rules = _compare_rules(operator.gt)


class GreaterEqual(_Compare):
    """``left >= right`` (bool)."""

    op_name = "greater_equal"
    rules = _compare_rules(operator.ge)


class Less(_Compare):
    """``left < right`` (bool)."""

    op_name = "less"
    rules = _compare_rules(operator.lt)


class LessEqual(_Compare):
    """``left <= right`` (bool)."""

    op_name = "less_equal"
    rules = _compare_rules(operator.le)


class Equal(_Compare):
    """``left == right`` element-wise (bool)."""

    op_name = "equal"
    rules = _compare_rules(operator.eq)


class NotEqual(_Compare):
    """``left != right`` element-wise (bool)."""

    op_name = "not_equal"
    rules = _compare_rules(operator.ne)


class LogicalAnd(_Compare):
    """Element-wise logical and (bool)."""

    op_name = "logical_and"
    rules = _compare_rules(lambda a, b: bool(a and b))


class LogicalOr(_Compare):
    """Element-wise logical or (bool)."""

    op_name = "logical_or"
    rules = _compare_rules(lambda a, b: bool(a or b))


class LogicalXor(_Compare):
    """Element-wise logical xor (bool)."""

    op_name = "logical_xor"
    rules = _compare_rules(lambda a, b: bool(a) != bool(b))


class _Unary(Primitive):
    """``output = f(input)`` element-wise, same shape."""

    def __init__(self, name: str | None = None, input: Any = NOVALUE) -> None:  # noqa: A002
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)], type=_NUMERIC)
            if input is NOVALUE
            else input,
            output=IOKey(shape=[("V", ...)], type=_NUMERIC),
        )


_SAME = (r.same_type(),)
_FLOAT = (r.kind_type(ty.FLOAT),)


class Negate(_Unary):
    """``-input``."""

    op_name = "negate"
    grad_rules = {"input": lambda xp, g, y, input: -g}
    rules = (*_SAME, r.fold_scalars(operator.neg, "input"))


class Absolute(_Unary):
    """``|input|``."""

    op_name = "absolute"
    grad_rules = {"input": lambda xp, g, y, input: g * xp.sign(input)}
    rules = (*_SAME, r.fold_scalars(abs, "input"))


class Exponential(_Unary):
    """``e ** input``."""

    op_name = "exponential"
    grad_rules = {"input": lambda xp, g, y, input: g * y}
    rules = (*_FLOAT, r.fold_scalars(math.exp, "input"))


class Log(_Unary):
    """Natural logarithm."""

    op_name = "log"
    grad_rules = {"input": lambda xp, g, y, input: g / input}
    rules = (*_FLOAT, r.fold_scalars(math.log, "input"))


class Sqrt(_Unary):
    """Square root."""

    op_name = "sqrt"
    grad_rules = {"input": lambda xp, g, y, input: 0.5 * g / y}
    rules = (*_FLOAT, r.fold_scalars(math.sqrt, "input"))


class Sine(_Unary):
    """Sine."""

    op_name = "sine"
    grad_rules = {"input": lambda xp, g, y, input: g * xp.cos(input)}
    rules = (*_FLOAT, r.fold_scalars(math.sin, "input"))


class Cosine(_Unary):
    """Cosine."""

    op_name = "cosine"
    grad_rules = {"input": lambda xp, g, y, input: -g * xp.sin(input)}
    rules = (*_FLOAT, r.fold_scalars(math.cos, "input"))


class Relu(_Unary):
    """``max(input, 0)``."""

    op_name = "relu"
    grad_rules = {"input": lambda xp, g, y, input: g * (y > 0)}
    rules = _SAME


class Sigmoid(_Unary):
    """``1 / (1 + e ** -input)``."""

    op_name = "sigmoid"
    grad_rules = {"input": lambda xp, g, y, input: g * y * (1 - y)}
    flops_per_element = 4
    rules = _FLOAT


class Tanh(_Unary):
    """Hyperbolic tangent."""

    op_name = "tanh"
    grad_rules = {"input": lambda xp, g, y, input: g * (1 - y * y)}
    rules = _FLOAT


class Softplus(_Unary):
    """``log(1 + e ** input)``, computed stably."""

    op_name = "softplus"
    grad_rules = {"input": lambda xp, g, y, input: g * _sigmoid(xp, input)}
    flops_per_element = 3
    rules = _FLOAT


class SiLU(_Unary):
    """``input * sigmoid(input)`` (swish)."""

    op_name = "silu"
    grad_rules = {"input": _silu_grad}
    flops_per_element = 5
    rules = _FLOAT


class StopGradient(_Unary):
    """Identity whose gradient is zero."""

    op_name = "stop_gradient"
    grad_rules = _NO_GRAD
    flops_per_element = 0
    differentiable = False
    rules = _SAME


class LogicalNot(Primitive):
    """Element-wise logical not (bool)."""

    op_name = "logical_not"
    grad_rules = _NO_GRAD
    rules = (r.kind_type(ty.BOOL),)

    def __init__(self, name: str | None = None, input: Any = NOVALUE) -> None:  # noqa: A002
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)]) if input is NOVALUE else input,
            output=IOKey(shape=[("V", ...)], type=ty.TENSORS | {ty.BOOL}),
        )


class LeakyRelu(Primitive):
    """``input if input > 0 else slope * input``."""

    op_name = "leaky_relu"
    grad_rules = {
        "input": lambda xp, g, y, input, slope: xp.where(input > 0, g, g * slope)
    }
    flops_per_element = 2
    rules = (r.kind_type(ty.FLOAT),)

    def __init__(self, slope: float = 0.01, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)], type=_NUMERIC),
            slope=slope,
            output=IOKey(shape=[("V", ...)]),
        )


class Gelu(Primitive):
    """Gaussian error linear unit; exact (erf) unless ``approximate=True`` (tanh)."""

    op_name = "gelu"
    grad_rules = {"input": _gelu_grad}
    rules = (r.kind_type(ty.FLOAT),)
    flops_per_element = 5  # 0.5 * x * (1 + erf(x / sqrt(2)))

    def flops(
        self,
        input_shapes: Mapping[str, tuple[int, ...] | None],
        output_shape: tuple[int, ...] | None,
    ) -> int | None:
        if output_shape is None:
            return None
        # 0.5 * x * (1 + tanh(c * (x + 0.044715 * x**3)))
        per_element = 8 if self.attributes["approximate"] else self.flops_per_element
        return per_element * math.prod(output_shape)

    def __init__(self, approximate: bool = False, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)], type=_NUMERIC),
            approximate=approximate,
            output=IOKey(shape=[("V", ...)]),
        )


def _where_type(rule: Any) -> bool:
    # The result is a tensor (shaped like ``condition``) even when both branches are
    # Python scalars; its kind is the branches' promoted kind.
    branches = ty.promote(rule.conn("input1").types, rule.conn("input2").types)
    tensor_of = ty.promote(branches, frozenset({ty.TENSOR_BOOL}))
    rule.conn("output").restrict_type(tensor_of)
    return len(branches) == 1


class Where(Primitive):
    """``input1 if condition else input2``, broadcasting all three; either branch (or
    both) may be a Python scalar."""

    op_name = "where"
    grad_rules = {
        "input1": lambda xp, g, y, condition, input1, input2: xp.where(condition, g, 0),
        "input2": lambda xp, g, y, condition, input1, input2: xp.where(condition, 0, g),
    }
    rules = (r.broadcast("condition", "input1", "input2"), _where_type)

    def __init__(self, name: str | None = None) -> None:
        super().__init__(
            name=name,
            condition=IOKey(type=ty.Tensor[bool] | {ty.BOOL}),
            input1=IOKey(type=_NUMERIC),
            input2=IOKey(type=_NUMERIC),
            output=IOKey(type=ty.TENSORS),
        )


def _cast_type(rule: Any) -> bool:
    dtype = rule.conn("dtype").value
    if dtype is NOVALUE:
        return False
    kind = "bool" if dtype == "bool" else "float" if "float" in dtype else "int"
    rule.conn("output").restrict_type(ty.as_tensor_kind(rule.conn("input").types, kind))
    return True


class Cast(Primitive):
    """Convert ``input`` to ``dtype`` (a dtype such as ``ml.float16`` or its name)."""

    op_name = "cast"
    grad_rules = {"input": lambda xp, g, y, input, dtype: xp.astype(g, input.dtype)}
    flops_per_element = 0  # a conversion, no arithmetic
    rules = (_cast_type,)

    def __init__(self, dtype: Any = NOVALUE, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)], type=ty.TENSORS),
            dtype=IOKey(type=str) if dtype is NOVALUE else dtype,
            output=IOKey(shape=[("V", ...)], type=ty.TENSORS),
        )
