"""The C generator's plan: workspace regions shared by lifetime, per-op facts read
from the lowering records (the generic modules name no operator), and element-wise
VJP templates generated from the primitives' grad_rules."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mithril_c")

import mithril_core as ml  # noqa: E402
from mithril_core import models as mm  # noqa: E402
from mithril_core.models import IOKey, Model  # noqa: E402

RNG = np.random.default_rng(3)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> Path:
    path = tmp_path_factory.getbasetemp() / "mithril_c_cache"
    monkeypatch.setenv("MITHRIL_C_CACHE", str(path))
    return path


def _workspace(pm: Any) -> int:
    sizes = re.findall(r"ws \+ (\d+)", pm.code)
    return max(map(int, sizes), default=0)


def test_workspace_regions_are_reused_after_the_last_reader() -> None:
    # Eight softmaxes in a row: each intermediate is dead once the next is computed,
    # so two regions (input and output of the running softmax) suffice.
    model = Model()
    model += mm.Softmax(axis=-1)(input="input")
    for _ in range(6):
        model += mm.Softmax(axis=-1)
    model += mm.Softmax(axis=-1)(output=IOKey("output"))
    backend = ml.CBackend(dtype=ml.float64)
    pm = ml.compile(
        model, backend, shapes={"input": [64, 64]}, data_keys={"input"}, inference=True
    )
    assert _workspace(pm) <= 64 * 64  # the second region starts at most here
    x = RNG.standard_normal((64, 64))
    expected = x
    for _ in range(8):
        e = np.exp(expected - expected.max(axis=-1, keepdims=True))
        expected = e / e.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(pm.evaluate({}, {"input": x})["output"], expected)


def test_training_keeps_what_the_backward_reads() -> None:
    model = Model()
    model += mm.Softmax(axis=-1)(input="input")
    for _ in range(4):
        model += mm.Softmax(axis=-1)
    model += mm.Softmax(axis=-1)(output=IOKey("output"))
    pm = ml.compile(model, ml.CBackend(dtype=ml.float64), shapes={"input": [8, 5]})
    x, seed = RNG.standard_normal((8, 5)), RNG.standard_normal((8, 5))
    _, grads = pm.evaluate({"input": x}, output_gradients={"output": seed})
    np_pm = ml.compile(
        model, ml.NumpyBackend(dtype=ml.float64), shapes={"input": [8, 5]}
    )
    _, expected = np_pm.evaluate({"input": x}, output_gradients={"output": seed})
    np.testing.assert_allclose(grads["input"], expected["input"], rtol=1e-10)


def test_generic_modules_name_no_operator() -> None:
    import mithril_c

    from mithril_core.plugins import get_registry

    ops = set(get_registry().lowerings("c"))
    root = Path(mithril_c.__file__).parent
    for name in ("_plan.py", "_emit.py", "_fuse.py", "_codegen.py"):
        text = (root / name).read_text()
        named = {s for s in re.findall(r"\"([a-z_0-9]+)\"", text) if s in ops}
        assert not named, f"{name} names {sorted(named)}"


# The hand-written templates the generated ones replaced.
_BEFORE = {
    "add": ("{g}", "{g}"),
    "subtract": ("{g}", "(-{g})"),
    "multiply": ("{g} * {1}", "{g} * {0}"),
    "divide": ("{g} / {1}", "-{g} * {y} / {1}"),
    "power": (
        "{g} * mc_power_base_grad({0}, {1})",
        "{g} * mc_power_exponent_grad({0}, {1}, {y})",
    ),
    "negate": ("(-{g})",),
    "absolute": ("{g} * mc_sign({0})",),
    "exponential": ("{g} * {y}",),
    "log": ("{g} / {0}",),
    "sqrt": ("(real)0.5 * {g} / {y}",),
    "sine": ("{g} * MC_COS({0})",),
    "cosine": ("-{g} * MC_SIN({0})",),
    "sigmoid": ("{g} * {y} * (1 - {y})",),
    "tanh": ("{g} * (1 - {y} * {y})",),
    "leaky_relu": ("({0} > 0 ? {g} : {g} * {1})", None),
    "squared_error": ("2 * {g} * ({0} - {1})", "-(2 * {g} * ({0} - {1}))"),
    "absolute_error": ("{g} * mc_sign({0} - {1})", "-({g} * mc_sign({0} - {1}))"),
}


def _one_op(op: str) -> tuple[Model, dict[str, np.ndarray]]:
    from mithril_core.primitives import CORE_PRIMITIVES

    primitive = next(p for p in CORE_PRIMITIVES if p.op_name == op)
    names = list(primitive.grad_rules)
    model = Model()
    model += primitive()(**{n: IOKey(n) for n in names}, output=IOKey("output"))
    # Positive data: log, sqrt and power's base are defined there.
    return model, {n: RNG.uniform(0.5, 2.0, (3, 4)) for n in names}


@pytest.mark.parametrize("op", sorted(_BEFORE))
def test_generated_vjp_matches_the_hand_written_one(op: str, monkeypatch: Any) -> None:
    from mithril_c.lowerings._symbolic import vjp_templates

    from mithril_core.plugins import get_registry
    from mithril_core.primitives import CORE_PRIMITIVES
    from mithril_core.primitives.lowering import Lowering

    table = dict(get_registry().lowerings("c"))
    generated = table[op]
    model, data = _one_op(op)
    primitive = next(p for p in CORE_PRIMITIVES if p.op_name == op)
    assert generated.vjp == vjp_templates(primitive.grad_rules)  # generated
    shapes = {k: list(v.shape) for k, v in data.items()}
    seed = RNG.standard_normal((3, 4))
    results = []
    for entry in (
        generated,
        Lowering(generated.forward, _BEFORE[op], options=generated.options),
    ):
        monkeypatch.setitem(get_registry()._lowerings, "c", {**table, op: entry})
        pm = ml.compile(model, ml.CBackend(dtype=ml.float64), shapes=shapes)
        results.append(pm.evaluate(data, output_gradients={"output": seed})[1])
    for key in data:
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-12)


def _linear_step(pm: Any, params: dict[str, np.ndarray], x: np.ndarray) -> tuple:
    seed = np.ones((64, 256))
    out, grads = pm.evaluate(params, {"input": x}, output_gradients={"output": seed})
    w, b = params["linear_0_weight"], params["linear_0_bias"]
    expected = {
        "output": x @ w.T + b,
        "linear_0_weight": seed.T @ x,
        "linear_0_bias": seed.sum(axis=0),
        "input": seed @ w,
    }
    return out, grads, expected


def test_gradients_are_written_into_the_arrays_returned() -> None:
    # No workspace copy per gradient: the backward writes og[] pointers the runtime
    # points at the arrays it returns; nothing a caller holds is written again.
    model = Model()
    model |= mm.Linear(256)(input="input", output=IOKey("output"))
    shapes = {"input": [64, 128]}  # results of 64 KiB or more are reused
    pm = ml.compile(model, ml.CBackend(dtype=ml.float64), shapes=shapes)
    for key in ("linear_0_weight", "linear_0_bias", "input"):
        assert f"gradient of {key} (returned)" in pm.code
    params = {
        "linear_0_weight": RNG.standard_normal((256, 128)),
        "linear_0_bias": RNG.standard_normal(256),
    }
    x1, x2, x3 = (RNG.standard_normal((64, 128)) for _ in range(3))
    out1, grads1, expected1 = _linear_step(pm, params, x1)
    kept = {k: v.copy() for k, v in (out1 | grads1).items()}
    # The first call's results are held: the second call gets other arrays.
    out2, grads2, expected2 = _linear_step(pm, params, x2)
    for key, value in (out2 | grads2).items():
        np.testing.assert_allclose(value, expected2[key], rtol=1e-12)
        first = out1.get(key, grads1.get(key))
        assert not np.shares_memory(value, first), key
        np.testing.assert_array_equal(first, kept[key])
        np.testing.assert_allclose(first, expected1[key], rtol=1e-12)
    # A view keeps its array from being written again.
    row = grads2["linear_0_weight"][0]
    row_values = row.copy()
    held = (*out1.values(), *grads1.values(), *out2.values(), *grads2.values())
    addresses = {v.ctypes.data for v in held}
    del held, value, first
    del out1, grads1, out2, grads2
    out3, grads3, expected3 = _linear_step(pm, params, x3)
    assert not np.shares_memory(grads3["linear_0_weight"], row)
    np.testing.assert_array_equal(row, row_values)
    # Results nobody holds are reused (no fresh memory, no page faults) ...
    reused = {v.ctypes.data for v in (*out3.values(), *grads3.values())}
    assert reused & addresses
    for key, value in (out3 | grads3).items():
        np.testing.assert_allclose(value, expected3[key], rtol=1e-12)
    # ... but never one a caller froze or reshaped in place.
    out3["output"].flags.writeable = False
    grads3["input"].shape = (128, 64)
    del out3, grads3, row
    out4, grads4, expected4 = _linear_step(pm, params, x1)
    assert out4["output"].flags.writeable
    assert grads4["input"].shape == (64, 128)
    np.testing.assert_allclose(out4["output"], expected4["output"], rtol=1e-12)
    np.testing.assert_allclose(grads4["input"], expected4["input"], rtol=1e-12)
    inference = pm.evaluate(params, {"input": x2})["output"]
    np.testing.assert_allclose(inference, expected2["output"], rtol=1e-12)
    assert not np.shares_memory(inference, out4["output"])
    # Results kept for good (two calls' worth) do not stop a loop from reusing.
    kept_for_good = [out4, grads4, _linear_step(pm, params, x2)]
    weights = []
    for x in (x1, x2, x3, x1):
        _, grads, expected = _linear_step(pm, params, x)
        np.testing.assert_allclose(
            grads["linear_0_weight"], expected["linear_0_weight"], rtol=1e-12
        )
        weights.append(grads["linear_0_weight"].ctypes.data)
        del grads
    assert len(set(weights[1:])) == 1
    np.testing.assert_allclose(out4["output"], expected4["output"], rtol=1e-12)
    np.testing.assert_allclose(grads4["input"], expected4["input"], rtol=1e-12)
    _, held, held_expected = kept_for_good[2]
    for key, value in held.items():
        np.testing.assert_allclose(value, held_expected[key], rtol=1e-12)
