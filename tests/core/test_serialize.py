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


# -- the class registry and constructor arguments --------------------------------------

# Arguments for every registered library class whose constructor needs some, by the
# last part of its document name; every other one is built with no arguments.
SIMPLE_ARGS = {
    "attention:MultiHeadAttention": {"embed_dim": 8, "num_heads": 2},
    "attention:TransformerBlock": {"dim": 8, "num_heads": 2, "mlp_dim": 16},
    "composites:MLP": {"activations": [None], "dimensions": [4]},
    "conv:Convolution1D": {"out_channels": 4, "kernel_size": 3},
    "conv:Convolution2D": {"out_channels": 4, "kernel_size": 3},
    "gpt:Conv1D": {"dimension": 4},
    "gpt:GPT2Attention": {"n_embd": 8, "n_head": 2},
    "gpt:GPT2Block": {"n_embd": 8, "n_head": 2},
    "gpt:PositionEmbedding": {"block_size": 4, "n_embd": 8},
    "norms:GroupNorm": {"num_groups": 2},
    "recurrent:RNNCell": {"hidden_size": 4},
    "recurrent:LSTMCell": {"hidden_size": 4},
    "recurrent:RNN": {"hidden_size": 4, "num_steps": 3},
    "recurrent:LSTM": {"hidden_size": 4, "num_steps": 3},
    "resnet:BasicBlock": {"planes": 4},
    "resnet:Bottleneck": {"planes": 4},
    "resnet:ResNet": {"depth": 18, "num_classes": 3},
    "nn:MaxPool2D": {"kernel_size": 2},
    "nn:AvgPool2D": {"kernel_size": 2},
    "nn:AdaptiveAvgPool2D": {"output_size": 1},
    "nn:Pad": {"pad_width": [(0, 0), (1, 1)]},
    "shape:Split": {"split_size": 2},
    "shape:ToList": {"n": 2},
    "shape:ToTuple": {"n": 3},
    "state:DimFromValue": {"axis": 0},
}


def _library_classes():
    from mithril_core.plugins import get_registry

    return sorted(
        (name, cls)
        for name, cls in get_registry().model_classes.items()
        if name.startswith("mithril_core.")
    )


def test_registry_holds_every_public_library_model():
    import mithril_core.models as models
    from mithril_core.models.gpt import GPT2Block, PositionEmbedding
    from mithril_core.plugins import document_name, get_registry
    from mithril_core.primitives import CORE_PRIMITIVES
    from mithril_core.training import L1, L2, TrainModel

    registered = get_registry().model_classes
    public = [
        value
        for value in (getattr(models, name) for name in models.__all__)
        if isinstance(value, type)
        and issubclass(value, models.BaseModel)
        and value not in (models.BaseModel, Model, models.Operator, models.Primitive)
    ]
    expected = [*public, *CORE_PRIMITIVES, GPT2Block, PositionEmbedding, L1, L2]
    expected.append(TrainModel)
    for cls in expected:
        assert registered[document_name(cls)] is cls
    # The abstract bases are not buildable from a document.
    for base in (models.BaseModel, Model, models.Operator, models.Primitive):
        assert document_name(base) not in registered


@pytest.mark.parametrize(("name", "cls"), _library_classes(), ids=lambda v: "")
def test_every_registered_library_class_round_trips(name, cls):
    from mithril_core.training import TrainModel

    if cls is TrainModel:
        from mithril_core.models import SquaredError

        model = TrainModel(stacked())
        model.add_loss(SquaredError(), input="output", target="target")
    else:
        model = cls(**SIMPLE_ARGS.get(name.rpartition(".")[2], {}))
    text = json.dumps(model.to_dict())
    assert json.loads(text)["class"] == name
    rebuilt = Model.from_dict(json.loads(text))
    assert type(rebuilt) is type(model)
    assert json.dumps(rebuilt.to_dict()) == text


def test_unknown_constructor_argument_names_class_and_argument():
    from mithril_core.errors import ModelDocumentError

    data = Linear(7).to_dict()
    data["args"]["activation"] = "relu"
    with pytest.raises(ModelDocumentError) as info:
        Model.from_dict(data)
    assert str(info.value) == (
        "args.activation: mithril_core.models.composites:Linear has no argument "
        "'activation'; its arguments are dimension, use_bias, name."
    )


def test_missing_required_argument_is_named():
    from mithril_core.errors import ModelDocumentError

    data = {"class": "mithril_core.models.norms:GroupNorm", "args": {}}
    with pytest.raises(ModelDocumentError, match="needs the argument 'num_groups'"):
        Model.from_dict(data)


def test_constructor_refusal_is_a_document_error_naming_the_place():
    from mithril_core.errors import ModelDocumentError

    model = Model()
    model += Linear(3)(input="input", output=IOKey("output"))
    data = model.to_dict()
    data["children"][0]["model"] = {
        "class": "mithril_core.models.resnet:ResNet",
        "args": {"depth": 7},
    }
    with pytest.raises(ModelDocumentError) as info:
        Model.from_dict(data)
    assert str(info.value).startswith(
        "children[0].model: mithril_core.models.resnet:ResNet refused the arguments: "
        "ValueError: ResNet: depth 7 is not one of"
    )
    assert isinstance(info.value.__cause__, ValueError)


def test_classes_must_be_model_classes():
    from mithril_core.errors import MithrilTypeError

    with pytest.raises(MithrilTypeError, match="is not a model class"):
        Model.from_dict(Linear(2).to_dict(), classes=[dict])


def test_dtype_arguments_decode_only_to_known_dtypes():
    from mithril_core.errors import ModelDocumentError
    from mithril_core.models import Cast

    assert Model.from_dict(Cast(dtype=ml.float16).to_dict()).to_dict() == {
        "class": "mithril_core.primitives.elementwise:Cast",
        "args": {"dtype": {"__dtype__": "float16"}},
    }
    assert Model.from_dict(Cast(dtype="int32").to_dict()).to_dict()["args"] == {
        "dtype": "int32"
    }
    for value in ("float128", {"__dtype__": "object"}):
        data = {"class": "mithril_core.primitives.elementwise:Cast"}
        data["args"] = {"dtype": value}
        with pytest.raises(
            ModelDocumentError, match=r"^args\.dtype[._dtype]*: unknown dtype"
        ):
            Model.from_dict(data)


def test_array_constants_round_trip_exactly():
    from mithril_core.models import Add

    for value in (
        np.arange(6, dtype=np.int32).reshape(2, 3),
        np.array([[0.5, -np.inf], [np.nan, 1e300]]),
        np.array([True, False]),
        np.zeros((2, 0), dtype=np.float32),
        np.array(7, dtype=np.uint8),
    ):
        model = Model()
        model += Add(right=value)(left="input", output=IOKey("output"))
        data = json.loads(json.dumps(model.to_dict()))
        rebuilt = Model.from_dict(data)
        stored = rebuilt._children[0].attributes["right"]
        assert stored.dtype == value.dtype
        np.testing.assert_array_equal(stored, value)
        assert json.dumps(rebuilt.to_dict()) == json.dumps(data)
