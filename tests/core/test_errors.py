"""Errors name the key or model path, the expected and the given shape/dtype."""

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.errors import (
    DtypeError,
    InputKeyError,
    MissingBackendError,
    ModelConnectionError,
    ShapeError,
)
from mithril_core.models import Add, IOKey, Linear, Model, Relu


def test_shape_conflict_at_composition_names_path_shapes_and_line():
    model = Model(name="custom_mlp")
    model |= Linear(8)(input=IOKey("input", shape=[None, 4]), output="hidden")
    with pytest.raises(ShapeError) as info:
        model |= Linear(3)(  # the line reported below
            input="hidden", weight=IOKey("w", shape=[3, 5]), output=IOKey("output")
        )
    message = str(info.value)
    assert message.startswith(
        "custom_mlp.linear_1.weight: shape [3, 8] conflicts with [3, 5]"
    )
    assert "from custom_mlp.w" in message
    assert f"{__file__}:" in message


def test_broadcast_conflict_names_primitive_and_terminal_shapes():
    model = Model(name="net")
    with pytest.raises(ShapeError) as info:
        model |= Add()(
            left=IOKey("a", shape=[3, 4]), right=IOKey("b", shape=[5]), output="c"
        )
    message = str(info.value)
    assert "net.add_0: cannot broadcast dims [4, 5]" in message
    assert "left: [3, 4]" in message and "right: [5]" in message


def test_compile_shape_conflict_names_key():
    model = Model()
    model |= Linear(8)(input=IOKey("input", shape=[None, 4]), output=IOKey("output"))
    with pytest.raises(
        ShapeError,
        match=r"input: shape \[2, 5\] given to compile conflicts with \[None, 4\]",
    ):
        ml.compile(model, ml.NumpyBackend(), shapes={"input": [2, 5]})


def test_unknown_compile_key():
    model = Model()
    model |= Relu()(input="x", output=IOKey("y"))
    with pytest.raises(InputKeyError, match="unknown key 'z'.*known keys: x"):
        ml.compile(model, ml.NumpyBackend(), data_keys={"z"})


@pytest.fixture
def linear_pm():
    model = Model(name="net")
    model |= Linear(8)(input=IOKey("input", shape=[None, 4]), output=IOKey("output"))
    pm = ml.compile(model, ml.NumpyBackend(), data_keys={"input"})
    return pm, pm.randomize_params()


def test_missing_key(linear_pm):
    pm, params = linear_pm
    with pytest.raises(InputKeyError, match=r"missing keys \['input'\]"):
        pm.evaluate(params, {})


def test_unexpected_key(linear_pm):
    pm, params = linear_pm
    with pytest.raises(InputKeyError, match=r"unexpected keys \['extra'\]"):
        pm.evaluate(params, {"input": np.ones((2, 4), np.float32), "extra": 1})


def test_wrong_shape(linear_pm):
    pm, params = linear_pm
    with pytest.raises(
        ShapeError, match=r"input: expected shape \[None, 4\], got \[2, 5\]"
    ):
        pm.evaluate(params, {"input": np.ones((2, 5), np.float32)})


def test_wrong_rank_is_not_broadcast(linear_pm):
    pm, params = linear_pm
    with pytest.raises(
        ShapeError, match=r"input: expected shape \[None, 4\], got \[4\]"
    ):
        pm.evaluate(params, {"input": np.ones(4, np.float32)})


def test_float64_data_for_float32_model_is_an_error(linear_pm):
    pm, params = linear_pm
    with pytest.raises(DtypeError, match="input: expected dtype float32, got float64"):
        pm.evaluate(params, {"input": np.ones((2, 4))})


def test_int_data_for_float_input_is_an_error(linear_pm):
    pm, params = linear_pm
    with pytest.raises(
        DtypeError,
        match=r"linear_0_weight: expected a Tensor\[float\] array, got dtype int64",
    ):
        pm.evaluate(
            {**params, "linear_0_weight": np.ones((8, 4), np.int64)},
            {"input": np.ones((2, 4), np.float32)},
        )


def test_unknown_terminal_lists_terminals():
    with pytest.raises(
        ModelConnectionError,
        match=r"has no terminal 'inp'; its terminals are \['input', 'output'\]",
    ):
        Relu()(inp="x")


def test_two_producers_for_one_connection():
    model = Model(name="net")
    model |= Relu()(input="x", output="y")
    with pytest.raises(ModelConnectionError, match="already the output of net.relu_0"):
        model |= Relu()(input="x", output="y")


def test_missing_backend_names_distribution():
    with pytest.raises(MissingBackendError, match=r"'mithril-tpu'") as info:
        ml.backend("tpu")
    assert "python -m pip install -r requirements-dev.txt" in str(info.value)


def test_randomize_needs_known_shapes():
    model = Model()
    model += Linear(3)(input="input", output=IOKey("output"))
    pm = ml.compile(model, ml.NumpyBackend(), data_keys={"input"})
    with pytest.raises(ShapeError, match=r"linear_0_weight: \[3, None\]"):
        pm.randomize_params()
