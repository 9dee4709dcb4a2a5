"""Composition is a transaction: a failing ``|=`` / ``+=`` leaves the model exactly
as it was — its definition (``to_dict``), its canonical terminals, and what it
compiles to — and the model keeps working afterwards."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.errors import MithrilError
from mithril_core.models import (
    Add,
    IOKey,
    Linear,
    MatrixMultiply,
    Model,
    Relu,
    Sigmoid,
    Tanh,
    Tensor,
)


def build() -> Model:
    m = Model()
    m |= MatrixMultiply()(
        left=IOKey("x", shape=[3, 4]), right=IOKey("w0", shape=[4, 5]), output="y"
    )
    m += Relu()(output=IOKey("r"))
    return m


def snapshot(m: Model) -> tuple[str, str, str, tuple[str, ...], tuple[str, ...]]:
    pm = ml.compile(m, ml.NumpyBackend(dtype=ml.float64))
    return (
        json.dumps(m.to_dict(), sort_keys=True),
        m.cin.display_name(),
        m.cout.display_name(),
        pm.input_keys,
        pm.output_keys,
    )


def _functional_conflict(m: Model) -> None:
    # A pending call (a sigmoid of a fresh input) is pulled in by the failing step.
    s = Sigmoid()(IOKey("u", shape=[3, 5]))
    m |= Add()(left=s, right=IOKey("x"), output=IOKey("bad"))


STEPS: dict[str, Callable[[Model], None]] = {
    # The example: a shape conflict after new names were registered.
    "matmul_inner_dims": lambda m: m.__ior__(
        MatrixMultiply()(left="y", right=IOKey("w", shape=[6, 6]), output=IOKey("z"))
    ),
    "output_shape": lambda m: m.__iadd__(
        Linear(7)(input="x", output=IOKey("q", shape=[3, 8]))
    ),
    "rank": lambda m: m.__ior__(
        Add()(left=IOKey("x", shape=[2, 2, 2]), right="w0", output=IOKey("s"))
    ),
    "second_producer": lambda m: m.__ior__(
        Add()(left="r", right=IOKey("b"), output="y")
    ),
    "duplicate_child_name": lambda m: m.__ior__(
        Relu(name="matrix_multiply_0")(input="r", output=IOKey("t"))
    ),
    "type": lambda m: m.__ior__(
        Sigmoid()(input="r", output=IOKey("k", type=Tensor[int]))
    ),
    "chain_into_conflict": lambda m: m.__iadd__(
        MatrixMultiply()(right=IOKey("w2", shape=[7, 2]), output=IOKey("z2"))
    ),
    "functional_dependencies": _functional_conflict,
}


@pytest.mark.parametrize("step", list(STEPS), ids=list(STEPS))
def test_failed_step_leaves_model_unchanged(step: str) -> None:
    m = build()
    before = snapshot(m)
    with pytest.raises(MithrilError):
        STEPS[step](m)
    assert snapshot(m) == before
    # A model that never saw the step compiles to the same code.
    assert (
        ml.compile(m, ml.NumpyBackend()).code
        == ml.compile(build(), ml.NumpyBackend()).code
    )


def test_model_keeps_working_after_failures() -> None:
    m = build()
    for step in STEPS.values():
        with pytest.raises(MithrilError):
            step(m)
    # The names the failed steps used are free again, and the chain still extends.
    m |= MatrixMultiply()(left="r", right=IOKey("w", shape=[5, 6]), output=IOKey("z"))
    m += Tanh()(output=IOKey("out"))
    pm = ml.compile(m, ml.NumpyBackend(dtype=ml.float64))
    assert pm.input_keys == ("x", "w0", "w")
    assert pm.output_keys == ("r", "z", "out")
    rng = np.random.default_rng(0)
    x, w0, w = rng.normal(size=(3, 4)), rng.normal(size=(4, 5)), rng.normal(size=(5, 6))
    out = pm.evaluate({"w0": w0, "w": w}, {"x": x})
    expected = np.tanh(np.maximum(x @ w0, 0) @ w)
    np.testing.assert_allclose(out["out"], expected, rtol=1e-12)
    assert [c._child_name for c in m.children] == [
        "matrix_multiply_0",
        "relu_0",
        "matrix_multiply_1",
        "tanh_0",
    ]


def test_failed_step_frees_the_child_and_its_iokeys() -> None:
    m = build()
    child = MatrixMultiply()
    key = IOKey("w", shape=[6, 6])
    with pytest.raises(MithrilError):
        m |= child(left="y", right=key, output=IOKey("z"))
    assert child._parent is None
    assert key.model is None
    assert "w" not in m.terminal_names() and "z" not in m.terminal_names()
    # The same key fits elsewhere once the shape agrees.
    other = Model()
    other |= Relu()(input=IOKey("w", shape=[6, 6]), output=IOKey("o"))
    assert ml.compile(other, ml.NumpyBackend()).shapes["o"] == [6, 6]


def test_failed_step_releases_shape_rules() -> None:
    # A rolled-back matmul must not keep watching the parent's dims: a later, valid
    # step that fixes those dims must not wake its rule (which would raise).
    m = Model()
    m |= Relu()(input=IOKey("a"), output=IOKey("b"))
    with pytest.raises(MithrilError):
        m |= MatrixMultiply()(
            left="b", right=IOKey("w", shape=[3, 4]), output=IOKey("c", shape=[2, 5])
        )
    m |= Relu()(input="b", output=IOKey("e", shape=[2, 7]))
    pm = ml.compile(m, ml.NumpyBackend())
    assert pm.shapes["a"] == [2, 7]


def test_failed_step_keeps_the_operator_child_usable() -> None:
    # Linear builds its inner model lazily; a failed add must not undo that build.
    m = build()
    linear = Linear(7)
    with pytest.raises(MithrilError):
        m |= linear(input="r", output=IOKey("q", shape=[3, 8]))
    m |= linear(input="r", output=IOKey("q"))
    pm = ml.compile(m, ml.NumpyBackend(dtype=ml.float64))
    assert pm.shapes["linear_0_weight"] == [7, 5]
    rng = np.random.default_rng(1)
    params = {
        "w0": rng.normal(size=(4, 5)),
        "linear_0_weight": rng.normal(size=(7, 5)),
        "linear_0_bias": rng.normal(size=7),
    }
    x = rng.normal(size=(3, 4))
    out = pm.evaluate(params, {"x": x})
    relu = np.maximum(x @ params["w0"], 0)
    expected = relu @ params["linear_0_weight"].T + params["linear_0_bias"]
    np.testing.assert_allclose(out["q"], expected, rtol=1e-12)


def test_model_without_a_free_input_says_so() -> None:
    m = Model()
    m |= Add()(left=1.0, right=2.0, output=IOKey("y"))
    with pytest.raises(MithrilError, match="has no canonical input: every connection"):
        _ = m.cin
