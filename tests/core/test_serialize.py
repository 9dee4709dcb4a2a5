"""Model definitions round-trip through plain dicts and JSON exactly."""

import json

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import (
    MLP,
    BatchNorm2D,
    Buffer,
    Concat,
    IOKey,
    LayerNorm,
    Linear,
    Model,
    Relu,
    Sigmoid,
    Split,
    Tanh,
)


def lstm_like():
    cell = Model(name="cell")
    x = IOKey("input", shape=[None, 3])
    h = IOKey("h_prev", shape=[None, 4])
    cell |= Concat(axis=1)(input=[x, h], output="combined")
    cell |= Linear(8, name="gates")(input="combined", output="gates")
    cell |= Split(split_size=4, axis=1)(input="gates", output="parts")
    new = Sigmoid()(cell.parts[0]) * Tanh()(cell.parts[1]) + h
    cell |= Buffer()(new, output=IOKey("h_new"))
    return cell


def stacked():
    model = Model(name="net")
    model += MLP([Relu(), None], [16, 8])(input="input")
    model += LayerNorm()
    model += Linear(2, use_bias=False)(output=IOKey("output"))
    return model


def conv_free_bn():
    model = Model()
    model += BatchNorm2D(3, name="bn")(input="input", output=IOKey("output"))
    return model


CASES = [
    (lstm_like, {"input": [2, 3], "h_prev": [2, 4]}),
    (stacked, {"input": [5, 6]}),
    (conv_free_bn, {"input": [2, 3, 4, 4]}),
]


@pytest.mark.parametrize(("build", "shapes"), CASES)
def test_round_trip_is_exact(build, shapes):
    model = build()
    data = model.to_dict()
    text = json.dumps(data)
    rebuilt = Model.from_dict(json.loads(text))
    assert json.dumps(rebuilt.to_dict()) == text

    backend = ml.NumpyBackend(dtype=ml.float64)
    original = ml.compile(model, backend, shapes=shapes)
    again = ml.compile(rebuilt, backend, shapes=shapes)
    assert original.input_keys == again.input_keys
    assert original.output_keys == again.output_keys
    assert original.shapes == again.shapes
    assert original.code == again.code
    params = original.randomize_params(seed=4)
    rng = np.random.default_rng(0)
    for key in original.input_keys:
        if key not in params:
            params[key] = rng.standard_normal(original.shapes[key])
    first, second = original.evaluate(params), again.evaluate(params)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


def test_library_model_is_stored_by_class_and_arguments():
    data = Linear(7, use_bias=False, name="proj").to_dict()
    assert data == {
        "class": "mithril_core.models.composites:Linear",
        "args": {"dimension": 7, "use_bias": False, "name": "proj"},
    }


def test_symbolic_constructor_arguments_are_refused():
    from mithril_core.models import Reshape

    x = IOKey("input")
    with pytest.raises(TypeError, match="symbolic"):
        Reshape(shape=x.shape).to_dict()


def _library_models():
    from mithril_core.models import (
        LSTM,
        RNN,
        Convolution1D,
        Convolution2D,
        GroupNorm,
        LSTMCell,
        MultiHeadAttention,
        RMSNorm,
        RNNCell,
        TransformerBlock,
        gpt2,
        resnet18,
        resnet50,
    )

    return [
        (lambda: resnet18(num_classes=10), {"input": [1, 3, 32, 32]}),
        (lambda: resnet50(num_classes=5), {"input": [1, 3, 32, 32]}),
        (
            lambda: gpt2(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16),
            {"input": [2, 8]},
        ),
        (
            lambda: MultiHeadAttention(16, 4),
            {"query": [2, 5, 16], "key": [2, 6, 16], "value": [2, 6, 16]},
        ),
        (lambda: TransformerBlock(16, 2, 32, causal=True), {"input": [2, 5, 16]}),
        (
            lambda: LSTM(6, num_steps=3, masked=True),
            {"input": [2, 3, 4], "mask": [2, 3]},
        ),
        (lambda: RNN(6, num_steps=3), {"input": [2, 3, 4]}),
        (lambda: LSTMCell(6), {"input": [2, 4], "h_prev": [2, 6], "c_prev": [2, 6]}),
        (lambda: RNNCell(6), {"input": [2, 4], "h_prev": [2, 6]}),
        (lambda: Convolution2D(3, 8, stride=2, padding=1), {"input": [1, 2, 9, 9]}),
        (lambda: Convolution1D(3, 4, padding="same"), {"input": [2, 2, 7]}),
        (lambda: GroupNorm(2), {"input": [2, 4, 3, 3]}),
        (lambda: RMSNorm(), {"input": [2, 5]}),
    ]


@pytest.mark.parametrize(
    ("build", "shapes"), _library_models(), ids=lambda v: "" if callable(v) else None
)
def test_library_models_round_trip_through_json_files(build, shapes, tmp_path):
    model = build()
    path = tmp_path / "model.json"
    text = model.to_json(path)
    rebuilt = Model.from_json(path)
    assert rebuilt.to_json() == text
    assert type(rebuilt) is type(model)

    backend = ml.NumpyBackend(dtype=ml.float64)
    original = ml.compile(model, backend, shapes=shapes, inference=True)
    again = ml.compile(rebuilt, backend, shapes=shapes, inference=True)
    assert original.shapes == again.shapes
    assert original.code == again.code
    params = original.randomize_params(seed=1)
    rng = np.random.default_rng(0)
    for key in original.input_keys:
        if key not in params:
            shape = original.shapes[key]
            is_token_ids = isinstance(rebuilt, Model) and rebuilt.name == "gpt2"
            params[key] = (
                rng.integers(0, 50, size=shape)
                if is_token_ids
                else rng.standard_normal(shape)
            )
    first, second = original.evaluate(params), again.evaluate(params)
    assert set(first) == set(second)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
