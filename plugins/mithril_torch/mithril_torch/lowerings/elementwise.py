from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the name every torch user knows

from mithril_core.dtypes import Dtype
from mithril_torch._dtypes import torch_dtype

Value = torch.Tensor | int | float | bool


def _tensor(value: Value) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def add(left: Value, right: Value) -> Any:
    return left + right


def subtract(left: Value, right: Value) -> Any:
    return left - right


def multiply(left: Value, right: Value) -> Any:
    return left * right


def divide(left: Value, right: Value) -> Any:
    return left / right


def floor_divide(left: Value, right: Value) -> Any:
    # `//` (aten::floor_divide) has no derivative; a floor-mode div has a zero one.
    return torch.div(_tensor(left), right, rounding_mode="floor")


def power(base: Value, exponent: Value) -> Any:
    return base**exponent


def minimum(left: Value, right: Value) -> torch.Tensor:
    return torch.minimum(_tensor(left), _tensor(right))


def maximum(left: Value, right: Value) -> torch.Tensor:
    return torch.maximum(_tensor(left), _tensor(right))


def negate(input: Value) -> Any:
    return -input


def absolute(input: torch.Tensor) -> torch.Tensor:
    return torch.abs(input)


def exponential(input: torch.Tensor) -> torch.Tensor:
    return torch.exp(input)


def log(input: torch.Tensor) -> torch.Tensor:
    return torch.log(input)


def sqrt(input: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(input)


def sine(input: torch.Tensor) -> torch.Tensor:
    return torch.sin(input)


def cosine(input: torch.Tensor) -> torch.Tensor:
    return torch.cos(input)


def relu(input: torch.Tensor) -> torch.Tensor:
    return torch.relu(input)


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(input)


def tanh(input: torch.Tensor) -> torch.Tensor:
    return torch.tanh(input)


def softplus(input: torch.Tensor) -> torch.Tensor:
    return F.softplus(input)


def silu(input: torch.Tensor) -> torch.Tensor:
    return F.silu(input)


def leaky_relu(input: torch.Tensor, slope: float) -> torch.Tensor:
    return F.leaky_relu(input, slope)


def gelu(input: torch.Tensor, approximate: bool) -> torch.Tensor:
    return F.gelu(input, approximate="tanh" if approximate else "none")


def greater(left: Value, right: Value) -> Any:
    return left > right


def greater_equal(left: Value, right: Value) -> Any:
    return left >= right


def less(left: Value, right: Value) -> Any:
    return left < right


def less_equal(left: Value, right: Value) -> Any:
    return left <= right


def equal(left: Value, right: Value) -> Any:
    return left == right


def not_equal(left: Value, right: Value) -> Any:
    return left != right


def logical_and(left: Value, right: Value) -> torch.Tensor:
    return torch.logical_and(_tensor(left), _tensor(right))


def logical_or(left: Value, right: Value) -> torch.Tensor:
    return torch.logical_or(_tensor(left), _tensor(right))


def logical_xor(left: Value, right: Value) -> torch.Tensor:
    return torch.logical_xor(_tensor(left), _tensor(right))


def logical_not(input: Value) -> torch.Tensor:
    return torch.logical_not(_tensor(input))


def where(condition: Value, input1: Value, input2: Value) -> torch.Tensor:
    return torch.where(_tensor(condition), input1, input2)


def cast(input: Value, dtype: Dtype | str) -> torch.Tensor:
    return _tensor(input).to(torch_dtype(dtype))


def stop_gradient(input: torch.Tensor) -> torch.Tensor:
    return input.detach()


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
