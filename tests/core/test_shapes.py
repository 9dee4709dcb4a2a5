"""Symbolic shape and type inference at composition and compile time."""

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import (
    Add,
    ArgMax,
    Buffer,
    Concat,
    IOKey,
    Linear,
    MatrixMultiply,
    Mean,
    Model,
    Relu,
    Reshape,
    Sigmoid,
    Split,
    Sum,
    Transpose,
)


def shape_of(conn):
    return conn.find().shape_node.values()


def test_shapes_flow_forward_at_composition():
    model = Model()
    model |= Linear(8)(input=IOKey("input", shape=[None, 4]), output="hidden")
    model |= Relu()(input="hidden", output=IOKey("output"))
    assert shape_of(model.hidden) == [None, 8]
    assert shape_of(model.output) == [None, 8]
    assert shape_of(model.children[0].weight) == [8, 4]


def test_shapes_flow_backward_from_outputs():
    model = Model()
    model |= Relu()(input="x", output=IOKey("y", shape=[2, 3]))
    assert shape_of(model.x) == [2, 3]


def test_named_dims_are_shared_across_terminals():
    model = Model()
    model |= MatrixMultiply()(left=IOKey("a", shape=[None, 5]), right="b", output="c")
    model |= Add()(left="c", right=IOKey("bias", shape=[7]), output=IOKey("out"))
    pm = ml.compile(model, ml.NumpyBackend(), shapes={"a": [3, 5], "b": [5, 7]})
    assert pm.shapes["out"] == [3, 7]


def test_broadcasting_rule():
    model = Model()
    model |= Add()(
        left=IOKey("a", shape=[4, 1, 3]), right=IOKey("b", shape=[5, 1]), output="c"
    )
    assert shape_of(model.c) == [4, 5, 3]


def test_broadcast_with_unknown_rank_keeps_known_suffix():
    model = Model()
    model |= Add()(left="a", right=IOKey("b", shape=[6]), output="c")
    pm = ml.compile(model, ml.NumpyBackend(), shapes={"a": [2, 3, 6]})
    assert pm.shapes["c"] == [2, 3, 6]


@pytest.mark.parametrize(
    ("axis", "keepdim", "expected"),
    [
        (None, False, []),
        (1, False, [2, 4]),
        ((0, 2), True, [1, 3, 1]),
        (-1, False, [2, 3]),
    ],
)
def test_reduction_shapes(axis, keepdim, expected):
    model = Model()
    model |= Sum(axis=axis, keepdim=keepdim)(
        input=IOKey("x", shape=[2, 3, 4]), output="y"
    )
    assert shape_of(model.y) == expected


def test_reduction_axis_out_of_range_is_reported():
    model = Model(name="net")
    with pytest.raises(
        ml.ShapeError, match="net.mean_0: axis 3 is out of range for rank 2"
    ):
        model |= Mean(axis=3)(input=IOKey("x", shape=[2, 3]), output="y")


def test_reshape_infers_minus_one_and_checks_size():
    model = Model()
    model |= Reshape(shape=(-1, 6))(input=IOKey("x", shape=[2, 3, 4]), output="y")
    assert shape_of(model.y) == [4, 6]
    other = Model()
    with pytest.raises(ml.ShapeError, match="cannot reshape"):
        other |= Reshape(shape=(5, -1))(input=IOKey("x", shape=[2, 3]), output="y")


def test_transpose_is_bidirectional():
    model = Model()
    model |= Transpose(axes=(1, 0, 2))(input="x", output=IOKey("y", shape=[3, 2, 5]))
    assert shape_of(model.x) == [2, 3, 5]


def test_concat_and_split():
    model = Model()
    model |= Concat(axis=1)(
        input=[IOKey("a", shape=[2, 3]), IOKey("b", shape=[2, 5])], output="c"
    )
    model |= Split(split_size=4, axis=1)(input="c", output="parts")
    first = model.parts[0]
    last = model.parts[1]
    model |= Buffer()(first, output=IOKey("first"))
    model |= Buffer()(last, output=IOKey("last"))
    assert shape_of(model.c) == [2, 8]
    assert shape_of(first) == [2, 4]


def test_shape_unpacking_and_arithmetic_fold_into_constants():
    x = IOKey("x")
    b, c, h, w = x.shape
    y = x.reshape(b, c * h, w // 2, 2)
    model = Model()
    model |= Buffer()(y, output=IOKey("y"))
    pm = ml.compile(model, ml.NumpyBackend(), shapes={"x": [2, 3, 4, 6]})
    assert pm.shapes["y"] == [2, 12, 3, 2]
    assert "reshape(x, (2, 12, 3, 2))" in pm.code


def test_functional_style_pulls_in_dependencies():
    x = IOKey("x", shape=[3, 4])
    y = Sigmoid()(x) * 2.0 + x
    model = Model()
    model |= Buffer()(y, output=IOKey("y"))
    pm = ml.compile(model, ml.NumpyBackend(dtype=ml.float64))
    data = np.random.default_rng(0).standard_normal((3, 4))
    out = pm.evaluate({"x": data})["y"]
    np.testing.assert_allclose(out, 2.0 / (1 + np.exp(-data)) + data)


def test_types_are_inferred():
    model = Model()
    model |= ArgMax(axis=1)(input=IOKey("x", shape=[2, 3]), output=IOKey("idx"))
    model |= Buffer()(model.x > 0.5, output=IOKey("mask"))
    pm = ml.compile(model, ml.NumpyBackend(dtype=ml.float64), data_keys={"x"})
    out = pm.evaluate({}, {"x": np.array([[0.1, 0.9, 0.3], [0.7, 0.2, 0.6]])})
    assert out["idx"].dtype == np.int64
    np.testing.assert_array_equal(out["idx"], [1, 0])
    assert out["mask"].dtype == np.bool_


def test_type_conflict_is_reported():
    model = Model(name="net")
    model |= ArgMax(axis=0)(input=IOKey("x", shape=[3]), output="idx")
    with pytest.raises(ml.MithrilError, match="type"):
        model |= Sigmoid()(input="y", output=IOKey("idx", type=ml.models.Tensor[float]))


def test_auto_names_are_stable_and_readable():
    def build():
        model = Model()
        model += Linear(3)(input="input")
        model += Relu()
        model += Linear(2)(output=IOKey("output"))
        return model

    keys = [
        ml.compile(build(), ml.NumpyBackend(), shapes={"input": [1, 2]}).input_keys
        for _ in range(2)
    ]
    assert keys[0] == keys[1]
    assert set(keys[0]) == {
        "input", "linear_0_weight", "linear_0_bias", "linear_1_weight", "linear_1_bias"
    }  # fmt: skip


def test_same_model_compiles_with_different_shapes():
    model = Model()
    model += Linear(3)(input="input", output=IOKey("output"))
    small = ml.compile(model, ml.NumpyBackend(), shapes={"input": [1, 2]})
    large = ml.compile(model, ml.NumpyBackend(), shapes={"input": [5, 7]})
    assert small.shapes["linear_0_weight"] == [3, 2]
    assert large.shapes["linear_0_weight"] == [3, 7]


def test_canonical_connections():
    model = Model()
    model += Linear(3)(input="input")
    model += Relu()
    assert model.cin is model.input
    outer = Model()
    outer += model(input="input")
    outer += Sigmoid()(output=IOKey("output"))
    pm = ml.compile(outer, ml.NumpyBackend(), shapes={"input": [2, 2]})
    assert pm.shapes["output"] == [2, 3]
