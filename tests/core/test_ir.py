"""The physical IR is frozen and holds no logical objects; compile leaves the user's
model as it was without copying it; re-specialising to new input shapes is a core
function on the IR."""

from __future__ import annotations

import dataclasses
import gc
import sys

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.logical import types as ty
from mithril_core.logical.connection import Connection
from mithril_core.logical.model import BaseModel
from mithril_core.models import IOKey, Linear, Model, Relu
from mithril_core.physical import flat, ir
from mithril_core.primitives import Reshape, Shape


def _mlp() -> Model:
    model = Model()
    model |= Linear(8)(input="input")
    model += Relu()
    model += Linear(3)(output=IOKey("output"))
    return model


def _reachable_from(roots: list[object], limit: int = 200_000) -> list[object]:
    seen: dict[int, object] = {}
    stack = list(roots)
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen[id(obj)] = obj
        stack.extend(gc.get_referents(obj))
    return list(seen.values())


def test_ir_holds_no_logical_object_and_is_frozen():
    pm = ml.compile(_mlp(), ml.NumpyBackend(), shapes={"input": [4, 5]})
    graph = pm.graph
    assert isinstance(graph, ir.Graph)
    reached = _reachable_from([graph])
    assert not [o for o in reached if isinstance(o, Connection | BaseModel)]
    node = graph.nodes[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.op = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.output.constant = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        graph.inputs["x"] = node.output  # type: ignore[index]
    matmul = next(n for n in graph.nodes if n.op == "matrix_multiply")
    assert matmul.input_names == ("left", "right")
    assert matmul.input("left") is graph.inputs["input"]
    assert matmul.flops == 2 * 4 * 5 * 8


def test_compile_leaves_the_model_unchanged_and_compiles_again():
    model = _mlp()
    before = repr(model.connections()["input"].shape)
    first = ml.compile(model, ml.NumpyBackend(), shapes={"input": [4, 5]})
    assert repr(model.connections()["input"].shape) == before
    # A second compile with other shapes: the first did not pin the model's dims.
    second = ml.compile(model, ml.NumpyBackend(), shapes={"input": [2, 7]})
    assert first.shapes["linear_0_weight"] == [8, 5]
    assert second.shapes["linear_0_weight"] == [8, 7]
    # Compile with inference=True sets no flag on the model either.
    ml.compile(model, ml.NumpyBackend(), shapes={"input": [1, 3]}, inference=True)
    third = ml.compile(model, ml.NumpyBackend(), shapes={"input": [2, 9]})
    params = third.randomize_params(seed=0)
    x = np.random.default_rng(0).normal(size=(2, 9)).astype(np.float32)
    out = third.evaluate(params, {"input": x})["output"]
    w0, b0 = params["linear_0_weight"], params["linear_0_bias"]
    w1, b1 = params["linear_1_weight"], params["linear_1_bias"]
    expected = np.maximum(x @ w0.T + b0, 0) @ w1.T + b1
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_a_failed_compile_leaves_the_model_unchanged():
    model = _mlp()
    with pytest.raises(ml.ShapeError):
        ml.compile(model, ml.NumpyBackend(), shapes={"input": [4, 5], "output": [4, 2]})
    pm = ml.compile(model, ml.NumpyBackend(), shapes={"input": [4, 5]})
    assert pm.shapes["output"] == [4, 3]


def test_a_deep_model_compiles_without_raising_the_recursion_limit():
    limit = sys.getrecursionlimit()
    model = Model()
    model |= Relu()(input="input")
    for _ in range(1500):
        model += Relu()
    model += Relu()(output=IOKey("output"))
    sys.setrecursionlimit(1000)
    try:
        pm = ml.compile(model, ml.NumpyBackend(), shapes={"input": [2]})
    finally:
        sys.setrecursionlimit(limit)
    out = pm.evaluate({}, {"input": np.array([-1.0, 2.0], dtype=np.float32)})
    np.testing.assert_array_equal(out["output"], [0.0, 2.0])


def test_specialize_solves_the_rules_again_on_the_ir():
    model = Model()
    model |= Shape()(input="input", output="shape")
    model |= Reshape()(input="input", shape=(-1,), output=IOKey("flat"))
    pm = ml.compile(model, ml.NumpyBackend(), shapes={"input": [None, 3]})
    graph = pm.graph
    assert graph.inputs["input"].shape() == [None, 3]
    assert graph.outputs["flat"].shape() == [None]
    specialised = flat.specialize(graph, ("input",), (((4, 3), "f"),))
    assert specialised.inputs["input"].shape() == [4, 3]
    assert specialised.outputs["flat"].shape() == [12]
    assert specialised.inputs["input"].types == frozenset({ty.TENSOR_FLOAT})
    # The compiled IR is untouched.
    assert graph.outputs["flat"].shape() == [None]
    with pytest.raises(ml.ShapeError, match=r"input: an array of shape \[4, 2\]"):
        flat.specialize(graph, ("input",), (((4, 2), "f"),))


def test_train_model_copies_a_deep_model_without_raising_the_recursion_limit():
    from mithril_core.models import SquaredError
    from mithril_core.training import TrainModel

    model = Model()
    model |= Relu()(input="input")
    for _ in range(1500):
        model += Relu()
    model += Relu()(output=IOKey("output"))
    exposed = sorted(model.exposed())
    children = len(model.children)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        train = TrainModel(model)
        train.add_loss(SquaredError(), input="output", target="target")
    finally:
        sys.setrecursionlimit(limit)
    # The user's model is not changed by wrapping it.
    assert sorted(model.exposed()) == exposed
    assert len(model.children) == children
    assert model.parent_model is None
    pm = ml.compile(train, ml.NumpyBackend(), shapes={"input": [2]})
    x = np.array([-1.0, 2.0], dtype=np.float32)
    out = pm.evaluate({}, {"input": x, "target": np.zeros(2, np.float32)})
    np.testing.assert_allclose(out["final_cost"], (0.0 + 4.0) / 2, rtol=1e-6)


def test_specialize_gives_an_input_no_call_reads_the_data_shape():
    from mithril_core.models import Buffer

    model = Model()
    model |= Buffer()(input="input", output=IOKey("output"))
    pm = ml.compile(model, ml.NumpyBackend())
    assert not pm.graph.nodes and pm.graph.inputs["input"].shape() is None
    specialised = flat.specialize(pm.graph, ("input",), (((2, 5), "f"),))
    assert specialised.inputs["input"].shape() == [2, 5]
    assert specialised.outputs["output"] is specialised.inputs["input"]
    assert specialised.inputs["input"].types == frozenset({ty.TENSOR_FLOAT})
