from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mithril_core.backends import array_api
from mithril_core.primitives.lowering import GradRule, Lowering

Array = NDArray[Any]
Operand = NDArray[Any] | np.number[Any] | np.bool_ | int | float | bool
Grad = NDArray[Any] | None
Needs = Sequence[bool] | None
Axis = int | tuple[int, ...] | None
Vjp = Callable[..., tuple[Any, ...]]
# A record, or a forward and its VJP (one gradient, or None, per input).
Entry = Lowering | tuple[Callable[..., Any], Vjp]

# The forwards written once against the array API, instantiated for NumPy.
SHARED = array_api.lowerings(np)


def _needs(needs: Needs, i: int) -> bool:
    return needs is None or bool(needs[i])


_ARRAYS = (np.ndarray, np.generic)  # a tuple: isinstance is fastest with one


def is_float(value: object) -> bool:
    return isinstance(value, _ARRAYS) and value.dtype.kind == "f"


def wants(needs: Needs, i: int, value: object) -> bool:
    """Whether input ``i`` needs a gradient: asked for, and a float array. (Called for
    every input of every VJP: kept to plain checks.)"""
    return (
        (needs is None or bool(needs[i]))
        and isinstance(value, _ARRAYS)
        and value.dtype.kind == "f"
    )


def unbroadcast(grad: Array, shape: tuple[int, ...]) -> Array:
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    kept = (
        i + lead for i, n in enumerate(shape) if n == 1 and grad.shape[i + lead] != 1
    )
    axes = (*range(lead), *kept)
    return grad.sum(axis=axes).reshape(shape) if axes else grad.reshape(shape)


def reduce_to(grad: Array, value: Operand) -> Array:
    shape = value.shape if isinstance(value, _ARRAYS) else np.shape(value)
    return unbroadcast(grad, shape)


def with_vjp(op: str, vjp: Vjp) -> Lowering:
    """The shared forward of ``op`` with a VJP written for NumPy."""
    return replace(SHARED[op], vjp=vjp)


def vjp_from_rules(rules: Mapping[str, GradRule]) -> Vjp:
    """The NumPy VJP of a primitive's declared ``grad_rules``: each needed float
    input's rule, summed back over the axes it was broadcast along."""
    if not rules:
        return _no_grad
    names = tuple(inspect.signature(next(iter(rules.values()))).parameters)[3:]
    per_input = tuple(rules.get(name) for name in names)
    if names == ("input",):
        (rule,) = per_input
        assert rule is not None

        def unary_vjp(
            output_grad: Array, output: Array, input: Array, needs: Needs = None
        ) -> tuple[Grad]:
            # Element-wise and same shape: nothing to sum back.
            if not wants(needs, 0, input):
                return (None,)
            return (rule(np, output_grad, output, input),)

        return unary_vjp
    if set(rules) == {"input"} and names[0] == "input":
        only = rules["input"]
        nones = (None,) * (len(names) - 1)

        def one_input_vjp(
            output_grad: Array,
            output: Array,
            input: Array,
            *constants: Any,
            needs: Needs = None,
        ) -> tuple[Grad, ...]:
            # One gradient, shaped as the input by the rule (reductions, softmax).
            if not wants(needs, 0, input):
                return (None, *nones)
            return (only(np, output_grad, output, input, *constants), *nones)

        return one_input_vjp

    def vjp(
        output_grad: Array, output: Array, *inputs: Any, needs: Needs = None
    ) -> tuple[Grad, ...]:
        return tuple(
            reduce_to(rule(np, output_grad, output, *inputs), value)
            if rule is not None and wants(needs, i, value)
            else None
            for i, (rule, value) in enumerate(zip(per_input, inputs, strict=True))
        )

    return vjp


def _no_grad(
    output_grad: Array, output: Array, *inputs: Any, needs: Needs = None
) -> tuple[None, ...]:
    return (None,) * len(inputs)
