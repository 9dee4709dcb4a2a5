"""The lowering record (#12 item 5), the checked merge, the shared array-API table and
the gradient rules declared on primitives (#12 item 4).

Declared rules are checked against central finite differences of a float64 NumPy
reference, and (when installed) against JAX and PyTorch autograd of their own
functions, never against our VJPs.
"""

from __future__ import annotations

import inspect

import numpy as np
import pluggy
import pytest

import mithril_core as ml
from mithril_core import hookspecs
from mithril_core.backends import array_api
from mithril_core.backends.numpy.lowerings import LOWERINGS as NUMPY
from mithril_core.backends.numpy.lowerings._utils import vjp_from_rules
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


def test_record_still_reads_as_a_tuple_for_unconverted_consumers() -> None:
    record = Lowering(_double, _double_vjp)
    forward, vjp = record
    assert (forward, vjp) == (_double, _double_vjp)
    assert record[0] is _double and record[1] is _double_vjp and len(record) == 2
    assert record(3) == 3
    with_options = Lowering("t", None, options={"raw": (0,)})
    assert len(with_options) == 3 and with_options[2] == {"raw": (0,)}


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
}

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


def _numeric(op: str, inputs: dict[str, object], name: str, g: np.ndarray) -> object:
    forward = array_api.lowerings(np)[op].forward
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


@pytest.mark.parametrize("op", DECLARED)
def test_declared_rule_matches_finite_differences(op: str) -> None:
    inputs = RULE_INPUTS[op]
    forward = array_api.lowerings(np)[op].forward
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
        np.testing.assert_allclose(grads[name], expected, rtol=1e-6, atol=1e-7)
        assert np.shape(grads[name]) == np.shape(inputs[name])


def test_ties_split_the_gradient_evenly() -> None:
    vjp = NUMPY["maximum"].vjp
    g = np.ones_like(TIES)
    left, right = vjp(g, np.maximum(TIES, 2.0), TIES, np.full_like(TIES, 2.0))
    np.testing.assert_array_equal(left + right, g)
    assert left[1, 0] == right[1, 0] == 0.5


@pytest.mark.parametrize("op", DECLARED)
def test_declared_rule_matches_jax_autodiff(op: str) -> None:
    # The same rule evaluated with jax.numpy, against jax.vjp of JAX's own function.
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    inputs = RULE_INPUTS[op]
    names = _float_names(inputs)
    rules = PRIMITIVES[op].grad_rules
    forward = array_api.lowerings(jnp)[op].forward
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
        got = np.asarray(got)
        shape = np.shape(inputs[name])
        lead = got.ndim - len(shape)
        got = got.sum(axis=tuple(range(lead))) if lead else got
        np.testing.assert_allclose(got, expected[name], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("op", DECLARED)
def test_numpy_uses_the_declared_rule(op: str) -> None:
    # Element-wise ops with a declared rule have no hand-written NumPy VJP any more.
    assert NUMPY[op].named
    assert NUMPY[op].forward.__qualname__.startswith("lowerings.")
    assert NUMPY[op].vjp.__qualname__.startswith("vjp_from_rules.")
