"""The lowering record (#12 item 5), the checked merge, the shared array-API table and
the gradient rules declared on primitives (#12 item 4).

Declared rules are checked against central finite differences of a float64 NumPy
reference, and (when installed) against JAX and PyTorch autograd of their own
functions, never against our VJPs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import pluggy
import pytest

import mithril_core as ml
from mithril_core import hookspecs
from mithril_core.backends import array_api
from mithril_core.backends.numpy.lowerings import LOWERINGS as NUMPY
from mithril_core.backends.numpy.lowerings._utils import reduce_to, vjp_from_rules
from mithril_core.errors import PluginError
from mithril_core.models import IOKey, Model
from mithril_core.plugins import Registry
from mithril_core.primitives import CORE_PRIMITIVES, Add, Sine
from mithril_core.primitives.lowering import (
    Lowering,
    as_lowering,
    forward_of,
    merge_lowerings,
)


# -- the record and its legacy forms --------------------------------------------------
def _double(input: object) -> object:
    return input


def _double_vjp(output_grad: object, output: object, input: object) -> tuple[object]:
    return (output_grad,)


def test_as_lowering_accepts_the_legacy_hook_forms() -> None:
    bare = as_lowering(_double)
    assert bare == Lowering(_double)
    assert bare.vjp is None and not bare.named
    pair = as_lowering((_double, _double_vjp))
    assert (pair.forward, pair.vjp) == (_double, _double_vjp)
    c_form = as_lowering(("({0} + {1})", ("{g}", "{g}"), {"int": "x"}))
    assert c_form.forward == "({0} + {1})" and c_form.options == {"int": "x"}
    record = Lowering(_double, _double_vjp, named=True)
    assert as_lowering(record) is record
    assert forward_of((_double, _double_vjp)) is _double


def test_as_lowering_refuses_other_values() -> None:
    with pytest.raises(PluginError, match=r"numpy: 'x'.*got int"):
        as_lowering(3, where="numpy: 'x'")


# -- the checked merge ----------------------------------------------------------------
def test_merge_refuses_an_op_in_two_family_tables_naming_both() -> None:
    with pytest.raises(PluginError) as info:
        merge_lowerings(
            "torch",
            {"pkg.elementwise": {"add": _double}, "pkg.nn": {"add": _double}},
        )
    message = str(info.value)
    assert "torch backend" in message and "'add'" in message
    assert "'pkg.elementwise'" in message and "'pkg.nn'" in message


def test_merge_lets_family_tables_override_the_shared_table() -> None:
    shared = array_api.lowerings(np)
    merged = merge_lowerings("numpy", {"mine": {"add": _double}}, shared=shared)
    assert merged["add"].forward is _double
    assert merged["subtract"] is shared["subtract"]
    assert all(isinstance(entry, Lowering) for entry in merged.values())


class _LegacyPlugin:
    @hookspecs.hookimpl
    def mithril_lowerings(self, backend: str) -> dict[str, object] | None:
        if backend != "numpy":
            return None
        return {"legacy.bare": _double, "legacy.pair": (_double, _double_vjp)}


def test_registry_hands_out_records_for_legacy_hook_results() -> None:
    manager = pluggy.PluginManager("mithril")
    manager.add_hookspecs(hookspecs)
    manager.register(_LegacyPlugin(), name="legacy")
    table = Registry(manager).lowerings("numpy")
    assert table["legacy.bare"] == Lowering(_double)
    assert table["legacy.pair"] == Lowering(_double, _double_vjp)


def test_core_backends_merge_through_the_checked_merge() -> None:
    assert all(isinstance(entry, Lowering) for entry in NUMPY.values())
    assert all(entry.vjp is not None for entry in NUMPY.values())


# -- the shared array-API table -------------------------------------------------------
def _input_names(cls: type) -> tuple[str, ...]:
    return tuple(cls().input_names())


PRIMITIVES = {cls.op_name: cls for cls in CORE_PRIMITIVES}


@pytest.mark.parametrize("op", sorted(array_api.lowerings(np)))
def test_shared_forwards_take_the_terminal_names(op: str) -> None:
    forward = array_api.lowerings(np)[op].forward
    params = tuple(inspect.signature(forward).parameters)
    assert params == _input_names(PRIMITIVES[op])


def test_generated_code_calls_named_lowerings_by_name() -> None:
    model = Model()
    model += Add()(left="left", right="right", output="sum")
    model += Sine()(input="sum", output=IOKey("output"))
    pm = ml.compile(model, ml.NumpyBackend(), shapes={"left": [2], "right": [2]})
    assert "add(left=left, right=right)" in pm.code
    assert "sine(input=sum)" in pm.code


# -- declared gradient rules ----------------------------------------------------------
rng = np.random.default_rng(0)
X = rng.standard_normal((3, 4))
ROW = rng.standard_normal(4)  # broadcast along axis 0: the rule's result is summed back
POS = np.abs(X) + 0.5
X3 = rng.standard_normal((2, 3, 4))
TIES = np.array([[1.0, 3.0, 3.0, 0.5], [2.0, 0.0, 2.0, 1.0], [0.0, 1.0, 2.0, 3.0]])

# op -> inputs by terminal name (float arrays get gradients; others are constants)
RULE_INPUTS: dict[str, dict[str, object]] = {
    "add": {"left": X, "right": ROW},
    "subtract": {"left": X, "right": ROW},
    "multiply": {"left": X, "right": ROW},
    "divide": {"left": X, "right": ROW + np.sign(ROW) * 0.5},
    "minimum": {"left": X, "right": ROW},
    "maximum": {"left": X, "right": ROW},
    "negate": {"input": X},
    "absolute": {"input": X},
    "exponential": {"input": X},
    "log": {"input": POS},
    "sqrt": {"input": POS},
    "sine": {"input": X},
    "cosine": {"input": X},
    "relu": {"input": X},
    "sigmoid": {"input": X},
    "tanh": {"input": X},
    "softplus": {"input": X},
    "silu": {"input": X},
    "leaky_relu": {"input": X, "slope": 0.1},
    "where": {"condition": X > 0, "input1": X, "input2": ROW},
    "power": {"base": POS, "exponent": ROW},
    "gelu": {"input": X, "approximate": False},
    "cast": {"input": X.astype(np.float32), "dtype": "float64"},
    "sum": {"input": X3, "axis": 1, "keepdim": False},
    "mean": {"input": X3, "axis": (0, 2), "keepdim": True},
    "max": {"input": X3, "axis": -1, "keepdim": False},
    "min": {"input": X3, "axis": None, "keepdim": False},
    "variance": {"input": X3, "axis": 1, "keepdim": False, "correction": 1},
    "matrix_multiply": {"left": X3, "right": rng.standard_normal((4, 2))},
    "softmax": {"input": X, "axis": -1},
    "log_softmax": {"input": X, "axis": 0},
    "squared_error": {"input": X, "target": ROW},
    "absolute_error": {"input": X, "target": ROW},
}
# More cases for rules that branch on constants or operand ranks.
MORE_RULE_INPUTS: list[tuple[str, dict[str, object]]] = [
    ("gelu", {"input": X, "approximate": True}),
    ("gelu", {"input": np.array([0.0, -3.0, 2.5, -40.0]), "approximate": False}),
    ("sum", {"input": X3, "axis": None, "keepdim": True}),
    ("mean", {"input": X3, "axis": -2, "keepdim": False}),
    ("max", {"input": TIES, "axis": 1, "keepdim": True}),
    ("min", {"input": TIES, "axis": (0, 1), "keepdim": False}),
    ("variance", {"input": X3, "axis": (0, 2), "keepdim": True, "correction": 0}),
    ("matrix_multiply", {"left": ROW, "right": X.T}),
    ("matrix_multiply", {"left": X, "right": ROW}),
    ("matrix_multiply", {"left": ROW, "right": X3.swapaxes(1, 2)}),
    ("matrix_multiply", {"left": X3, "right": rng.standard_normal((1, 4, 5))}),
]
CASES = [*RULE_INPUTS.items(), *MORE_RULE_INPUTS]
CASE_IDS = [f"{op}-{i}" for i, (op, _) in enumerate(CASES)]

DECLARED = sorted(
    cls.op_name for cls in CORE_PRIMITIVES if getattr(cls, "grad_rules", None)
)


def test_every_declared_rule_has_a_case() -> None:
    assert set(DECLARED) == set(RULE_INPUTS)


@pytest.mark.parametrize("op", DECLARED)
def test_rule_parameters_name_the_terminals(op: str) -> None:
    cls = PRIMITIVES[op]
    names = _input_names(cls)
    for input_name, rule in cls.grad_rules.items():
        assert input_name in names
        assert tuple(inspect.signature(rule).parameters)[3:] == names


def _forward(op: str) -> Callable[..., object]:
    """The NumPy forward of ``op``, called by terminal name."""
    shared = array_api.lowerings(np)
    if op in shared:
        return shared[op].forward
    names = _input_names(PRIMITIVES[op])
    positional = NUMPY[op].forward
    return lambda **kw: positional(*(kw[n] for n in names))


def _numeric(op: str, inputs: dict[str, object], name: str, g: np.ndarray) -> object:
    forward = _forward(op)
    x = np.array(inputs[name], dtype=np.float64)
    grad = np.zeros_like(x)
    eps = 1e-6
    for idx in np.ndindex(x.shape):
        for sign in (1, -1):
            shifted = x.copy()
            shifted[idx] += sign * eps
            value = forward(**{**inputs, name: shifted})
            grad[idx] += sign * np.sum(g * value) / (2 * eps)
    return grad


def _float_names(inputs: dict[str, object]) -> list[str]:
    return [
        n
        for n, v in inputs.items()
        if isinstance(v, np.ndarray) and v.dtype.kind == "f"
    ]


@pytest.mark.parametrize(("op", "inputs"), CASES, ids=CASE_IDS)
def test_declared_rule_matches_finite_differences(
    op: str, inputs: dict[str, object]
) -> None:
    forward = _forward(op)
    output = forward(**inputs)
    g = rng.standard_normal(np.shape(output))
    vjp = vjp_from_rules(PRIMITIVES[op].grad_rules)
    names = list(inputs)
    grads = dict(zip(names, vjp(g, output, *inputs.values()), strict=True))
    for name in names:
        if name not in _float_names(inputs) or name not in PRIMITIVES[op].grad_rules:
            assert grads[name] is None, (op, name)
            continue
        expected = _numeric(op, inputs, name, g)
        tol = 1e-6 if np.asarray(inputs[name]).dtype == np.float64 else 1e-5
        np.testing.assert_allclose(grads[name], expected, rtol=tol, atol=tol / 10)
        assert np.shape(grads[name]) == np.shape(inputs[name])


def test_ties_split_the_gradient_evenly() -> None:
    vjp = NUMPY["maximum"].vjp
    g = np.ones_like(TIES)
    left, right = vjp(g, np.maximum(TIES, 2.0), TIES, np.full_like(TIES, 2.0))
    np.testing.assert_array_equal(left + right, g)
    assert left[1, 0] == right[1, 0] == 0.5


def _jax_forward(op: str) -> Callable[..., object]:
    # JAX's own functions for ops outside the shared table.
    jax = pytest.importorskip("jax")
    own: dict[str, Callable[..., object]] = {
        "gelu": lambda input, approximate: jax.nn.gelu(input, approximate=approximate),
        "cast": lambda input, dtype: input.astype(dtype),
        "softmax": lambda input, axis: jax.nn.softmax(input, axis=axis),
        "log_softmax": lambda input, axis: jax.nn.log_softmax(input, axis=axis),
        "squared_error": lambda input, target: jax.numpy.square(input - target),
        "absolute_error": lambda input, target: jax.numpy.abs(input - target),
    }
    return own.get(op) or array_api.lowerings(jax.numpy)[op].forward


@pytest.mark.parametrize(("op", "inputs"), CASES, ids=CASE_IDS)
def test_declared_rule_matches_jax_autodiff(op: str, inputs: dict[str, object]) -> None:
    # The same rule evaluated with jax.numpy, against jax.vjp of JAX's own function.
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    names = _float_names(inputs)
    rules = PRIMITIVES[op].grad_rules
    forward = _jax_forward(op)
    arrays = {
        k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in inputs.items()
    }

    def f(*floats: object) -> object:
        return forward(**{**arrays, **dict(zip(names, floats, strict=True))})

    output, pullback = jax.vjp(f, *(arrays[n] for n in names))
    g = jnp.asarray(rng.standard_normal(output.shape))
    expected = dict(zip(names, pullback(g), strict=True))
    for name in names:
        if name not in rules:
            continue
        got = rules[name](jnp, g, output, *arrays.values())
        got = reduce_to(np.asarray(got), inputs[name])
        assert got.dtype == np.asarray(expected[name]).dtype, (op, name)
        np.testing.assert_allclose(got, expected[name], rtol=1e-6, atol=1e-9)


# Ops with a rule whose NumPy VJP stays hand-written, and why (each is checked against
# the rule in tests/backends/test_fused_vjps.py).
FUSED = {
    "power": "no warnings at 0 ** e and b < 0; float32 kept with Python-float bases",
    "gelu": "the exact form evaluates erf directly (the rule recovers cdf as y / x)",
    "cast": "no gradient through a cast to int (a rule cannot say None)",
    "variance": "no warning for the NaN of N == correction",
    "matrix_multiply": "a shared 2-D weight folds the batch into one GEMM",
}


@pytest.mark.parametrize("op", DECLARED)
def test_numpy_uses_the_declared_rule(op: str) -> None:
    # Ops with a declared rule have no hand-written NumPy VJP, unless it pays.
    if op in FUSED:
        assert not NUMPY[op].vjp.__qualname__.startswith("vjp_from_rules.")
        return
    assert NUMPY[op].vjp.__qualname__.startswith("vjp_from_rules.")
    if op in array_api.lowerings(np):
        assert NUMPY[op].named
        assert NUMPY[op].forward.__qualname__.startswith("lowerings.")
