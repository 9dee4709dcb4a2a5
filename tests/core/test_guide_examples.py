"""The user guide's examples, as written (import spelled mithril_core), checked against
hand-written float64 NumPy."""

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import (
    Buffer,
    Concat,
    IOKey,
    Linear,
    Model,
    Operator,
    Relu,
    Sigmoid,
    Split,
    Tanh,
)

rng = np.random.default_rng(7)


def custom_mlp(input_dim: int, hidden_dims: list[int], output_dim: int):
    model = Model(name="custom_mlp")
    model += Linear(hidden_dims[0])(input="input")
    model += Relu()
    for i in range(1, len(hidden_dims)):
        model += Linear(hidden_dims[i])
        model += Relu()
    model += Linear(output_dim)(output=IOKey("output"))
    return model


def fusion_model(text_dim: int, image_dim: int, output_dim: int):
    model = Model()
    text_input = IOKey("text_input", shape=[None, text_dim])
    image_input = IOKey("image_input", shape=[None, image_dim])
    model |= Linear(512, name="text_encoder")(input=text_input, output="text_features")
    model |= Linear(512, name="image_encoder")(
        input=image_input, output="image_features"
    )
    model |= Concat(axis=1)(
        input=["text_features", "image_features"], output="fused_features"
    )
    model |= Linear(output_dim)(input="fused_features", output=IOKey("output"))
    return model


def multi_task_model(input_dim: int):
    model = Model()
    model |= Linear(512, name="backbone")(input="input", output="features")
    model |= Relu()(input="features", output="activated_features")
    model |= Linear(1, name="regression_head")(
        input="activated_features", output=IOKey("regression_output")
    )
    model |= Linear(10, name="classification_head")(
        input="activated_features", output=IOKey("classification_output")
    )
    return model


class ChannelShuffle(Operator):
    def __init__(self, groups: int, name: str | None = None):
        super().__init__(name=name)
        self.groups = groups

    def create_model(self):
        model = Model()
        input = IOKey("input")  # Expected shape: [B, C, H, W]
        B, C, H, W = input.shape
        x = input.reshape(B, self.groups, C // self.groups, H, W)
        x = x.transpose(0, 2, 1, 3, 4)
        x = x.reshape(B, C, H, W)
        model |= Buffer()(x, output=IOKey("output"))
        return model


def lstm_cell(input_dim: int, hidden_dim: int):
    cell = Model(name="lstm_cell")
    input = IOKey("input", shape=[None, input_dim])
    h_prev = IOKey("h_prev", shape=[None, hidden_dim])
    c_prev = IOKey("c_prev", shape=[None, hidden_dim])
    cell |= Concat(axis=1)(input=[input, h_prev], output="combined")
    cell |= Linear(hidden_dim * 4, name="gates")(input="combined", output="gates")
    cell |= Split(split_size=hidden_dim, axis=1)(input="gates", output="split_gates")
    i = Sigmoid()(cell.split_gates[0])
    f = Sigmoid()(cell.split_gates[1])
    g = Tanh()(cell.split_gates[2])
    o = Sigmoid()(cell.split_gates[3])
    c_new = f * c_prev + i * g
    h_new = o * Tanh()(c_new)
    cell |= Buffer()(c_new, output=IOKey("c_new"))
    cell |= Buffer()(h_new, output=IOKey("h_new"))
    return cell


def linear(x, params, name):
    return x @ params[f"{name}_weight"].T + params[f"{name}_bias"]


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


@pytest.fixture
def backend():
    return ml.NumpyBackend(dtype=ml.float64)


def test_custom_mlp_matches_numpy_with_gradients(backend):
    model = custom_mlp(6, [16, 8], 3)
    pm = ml.compile(model, backend, shapes={"input": [5, 6]}, data_keys={"input"})
    assert set(pm.trainable_keys) == {
        "linear_0_weight", "linear_0_bias", "linear_1_weight", "linear_1_bias",
        "linear_2_weight", "linear_2_bias",
    }  # fmt: skip
    assert pm.shapes["linear_0_weight"] == [16, 6]
    assert pm.shapes["linear_2_weight"] == [3, 8]
    params = pm.randomize_params(seed=1)
    x = rng.standard_normal((5, 6))
    h1 = np.maximum(linear(x, params, "linear_0"), 0)
    h2 = np.maximum(linear(h1, params, "linear_1"), 0)
    expected = linear(h2, params, "linear_2")
    grad_out = rng.standard_normal((5, 3))
    outputs, grads = pm.evaluate(
        params, {"input": x}, output_gradients={"output": grad_out}
    )
    np.testing.assert_allclose(outputs["output"], expected, rtol=1e-12)
    # Hand-written backward pass.
    np.testing.assert_allclose(grads["linear_2_bias"], grad_out.sum(0), rtol=1e-12)
    np.testing.assert_allclose(grads["linear_2_weight"], grad_out.T @ h2, rtol=1e-12)
    g_h2 = (grad_out @ params["linear_2_weight"]) * (h2 > 0)
    np.testing.assert_allclose(grads["linear_1_weight"], g_h2.T @ h1, rtol=1e-12)
    g_h1 = (g_h2 @ params["linear_1_weight"]) * (h1 > 0)
    np.testing.assert_allclose(grads["linear_0_weight"], g_h1.T @ x, rtol=1e-12)
    np.testing.assert_allclose(grads["linear_0_bias"], g_h1.sum(0), rtol=1e-12)


def test_fusion_model(backend):
    model = fusion_model(12, 20, 4)
    pm = ml.compile(
        model,
        backend,
        shapes={"text_input": [3, 12], "image_input": [3, 20]},
        data_keys={"text_input", "image_input"},
    )
    assert pm.shapes["text_encoder_weight"] == [512, 12]
    assert pm.shapes["image_encoder_weight"] == [512, 20]
    assert pm.shapes["linear_0_weight"] == [4, 1024]
    params = pm.randomize_params()
    text, image = rng.standard_normal((3, 12)), rng.standard_normal((3, 20))
    fused = np.concatenate(
        [linear(text, params, "text_encoder"), linear(image, params, "image_encoder")],
        axis=1,
    )
    out = pm.evaluate(params, {"text_input": text, "image_input": image})
    np.testing.assert_allclose(out["output"], linear(fused, params, "linear_0"))


def test_multi_task_model(backend):
    model = multi_task_model(7)
    pm = ml.compile(model, backend, shapes={"input": [2, 7]}, data_keys={"input"})
    assert set(pm.output_keys) == {"regression_output", "classification_output"}
    params = pm.randomize_params()
    x = rng.standard_normal((2, 7))
    feats = np.maximum(linear(x, params, "backbone"), 0)
    out = pm.evaluate(params, {"input": x})
    np.testing.assert_allclose(
        out["regression_output"], linear(feats, params, "regression_head")
    )
    np.testing.assert_allclose(
        out["classification_output"], linear(feats, params, "classification_head")
    )
    assert out["classification_output"].shape == (2, 10)


def test_channel_shuffle_folds_shape_arithmetic(backend):
    pm = ml.compile(ChannelShuffle(groups=3), backend, shapes={"input": [2, 6, 4, 5]})
    x = rng.standard_normal((2, 6, 4, 5))
    out = pm.evaluate({}, {"input": x})["output"]
    expected = x.reshape(2, 3, 2, 4, 5).transpose(0, 2, 1, 3, 4).reshape(2, 6, 4, 5)
    np.testing.assert_array_equal(out, expected)
    # The shape expressions were resolved at compile time: plain tuples in the code.
    assert "reshape(input, (2, 3, 2, 4, 5))" in pm.code
    assert "shape(" not in pm.code.replace("reshape(", "")


def test_channel_shuffle_rejects_indivisible_channels(backend):
    with pytest.raises(ml.ShapeError, match="reshape"):
        ml.compile(ChannelShuffle(groups=4), backend, shapes={"input": [1, 6, 2, 2]})


def test_lstm_cell_matches_numpy_with_gradients(backend):
    cell = lstm_cell(3, 5)
    pm = ml.compile(
        cell,
        backend,
        shapes={"input": [4, 3]},
        data_keys={"input", "h_prev", "c_prev"},
    )
    assert pm.shapes["gates_weight"] == [20, 8]
    params = pm.randomize_params(seed=3)
    x, h, c = (rng.standard_normal((4, n)) for n in (3, 5, 5))
    gates = linear(np.concatenate([x, h], axis=1), params, "gates")
    i, f, g, o = np.split(gates, 4, axis=1)
    c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h_new = sigmoid(o) * np.tanh(c_new)
    out = pm.evaluate(params, {"input": x, "h_prev": h, "c_prev": c})
    np.testing.assert_allclose(out["c_new"], c_new, rtol=1e-12)
    np.testing.assert_allclose(out["h_new"], h_new, rtol=1e-12)

    # Gradient of sum(h_new * G) w.r.t. the gate bias, by central differences.
    grad_h = rng.standard_normal((4, 5))
    _, grads = pm.evaluate(
        params,
        {"input": x, "h_prev": h, "c_prev": c},
        output_gradients={"h_new": grad_h},
    )

    def loss(bias):
        gates = np.concatenate([x, h], axis=1) @ params["gates_weight"].T + bias
        i, f, g, o = np.split(gates, 4, axis=1)
        c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        return np.sum(sigmoid(o) * np.tanh(c_new) * grad_h)

    eps = 1e-6
    numeric = np.zeros(20)
    for k in range(20):
        step = np.zeros(20)
        step[k] = eps
        numeric[k] = (
            loss(params["gates_bias"] + step) - loss(params["gates_bias"] - step)
        ) / (2 * eps)
    np.testing.assert_allclose(grads["gates_bias"], numeric, rtol=1e-6, atol=1e-9)
