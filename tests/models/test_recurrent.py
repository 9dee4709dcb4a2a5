"""RNNCell, LSTMCell, RNN and LSTM (many-to-one) against torch.nn on every installed
backend, outputs and gradients (weights copied from the torch modules' state dicts)."""

from functools import cache

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models.recurrent import LSTM, RNN, LSTMCell, RNNCell
from mithril_core.plugins import get_registry

torch = pytest.importorskip("torch")

rng = np.random.default_rng(5)
B, IN, H, T = 3, 4, 5, 6


@cache
def make_backend(name: str):
    return ml.backend(name, dtype=ml.float32)


def skip_without_lowerings(model, backend_name):
    """Skip (naming the ops) when ``backend_name`` lacks a lowering ``model`` needs."""
    model._ensure_built()
    # Calls that compile removes (Buffer) need no lowering.
    needed = {p.op_name for p, _ in model.primitives() if not p.forwarded_input({})}
    missing = sorted(needed - set(get_registry().lowerings(backend_name)))
    if missing:
        pytest.skip(f"{backend_name} has no lowering for {', '.join(missing)}")


def state_dict(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def evaluate(backend_name, model, shapes, data, params, output, grad_out):
    skip_without_lowerings(model, backend_name)
    backend = make_backend(backend_name)
    # torch.compile costs seconds per model; the GPT-2 tests cover the jit path.
    jit = backend_name != "torch"
    pm = ml.compile(model, backend, shapes=shapes, data_keys=set(data), jit=jit)
    assert set(pm.trainable_keys) == set(params)
    outputs, grads = pm.evaluate(
        {k: backend.array(v) for k, v in params.items()},
        {k: backend.array(v) for k, v in data.items()},
        output_gradients={output: backend.array(grad_out)},
    )
    as_np = {k: np.asarray(backend.to_numpy(v)) for k, v in outputs.items()}
    return as_np, {k: np.asarray(backend.to_numpy(v)) for k, v in grads.items()}


def torch_grads(module):
    return {k: p.grad.numpy() for k, p in module.named_parameters()}


def assert_close(actual, expected, **kw):
    kw = {"rtol": 1e-4, "atol": 1e-5} | kw
    assert set(actual) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(actual[key], value, err_msg=key, **kw)


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def test_rnn_cell_matches_torch(backend_name):
    torch.manual_seed(0)
    module = torch.nn.RNNCell(IN, H)
    x, h = randn(B, IN), randn(B, H)
    grad = randn(B, H)
    expected = module(torch.tensor(x), torch.tensor(h))
    (expected * torch.tensor(grad)).sum().backward()
    out, grads = evaluate(
        backend_name,
        RNNCell(H),
        {"input": [B, IN]},
        {"input": x, "h_prev": h},
        state_dict(module),
        "h_new",
        grad,
    )
    np.testing.assert_allclose(out["h_new"], expected.detach().numpy(), rtol=1e-5)
    assert_close(grads, torch_grads(module))


def test_lstm_cell_matches_torch(backend_name):
    torch.manual_seed(0)
    module = torch.nn.LSTMCell(IN, H)
    x, h, c = randn(B, IN), randn(B, H), randn(B, H)
    grad = randn(B, H)
    h_new, c_new = module(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
    (h_new * torch.tensor(grad)).sum().backward()
    out, grads = evaluate(
        backend_name,
        LSTMCell(H),
        {"input": [B, IN]},
        {"input": x, "h_prev": h, "c_prev": c},
        state_dict(module),
        "h_new",
        grad,
    )
    np.testing.assert_allclose(out["h_new"], h_new.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(out["c_new"], c_new.detach().numpy(), atol=1e-6)
    assert_close(grads, torch_grads(module))


def test_lstm_cell_layout():
    pm = ml.compile(
        LSTMCell(H),
        ml.NumpyBackend(),
        shapes={"input": [B, IN]},
        data_keys={"input", "h_prev", "c_prev"},
    )
    assert {k: pm.shapes[k] for k in pm.trainable_keys} == {
        "weight_ih": [4 * H, IN], "weight_hh": [4 * H, H],
        "bias_ih": [4 * H], "bias_hh": [4 * H],
    }  # fmt: skip
    assert set(pm.output_keys) == {"h_new", "c_new"}


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_many_to_one_matches_torch(backend_name, kind):
    torch.manual_seed(0)
    module_cls, model_cls = {"lstm": (torch.nn.LSTM, LSTM), "rnn": (torch.nn.RNN, RNN)}[
        kind
    ]
    module = module_cls(IN, H, batch_first=True)
    x, grad = randn(B, T, IN), randn(B, H)
    _, state = module(torch.tensor(x))
    h_n = state[0] if kind == "lstm" else state
    (h_n[0] * torch.tensor(grad)).sum().backward()
    out, grads = evaluate(
        backend_name,
        model_cls(H, T),
        {"input": [B, T, IN]},
        {"input": x},
        state_dict(module),
        "output",
        grad,
    )
    np.testing.assert_allclose(out["output"], h_n[0].detach().numpy(), atol=1e-5)
    assert_close(grads, torch_grads(module), atol=1e-4)


def test_masked_lstm_matches_packed_sequences(backend_name):
    torch.manual_seed(0)
    module = torch.nn.LSTM(IN, H, batch_first=True)
    lengths = [T, 3, 1]
    mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.float32)
    x, grad = randn(B, T, IN), randn(B, H)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        torch.tensor(x), lengths, batch_first=True, enforce_sorted=False
    )
    _, (h_n, _) = module(packed)
    (h_n[0] * torch.tensor(grad)).sum().backward()
    out, grads = evaluate(
        backend_name,
        LSTM(H, T, masked=True),
        {"input": [B, T, IN]},
        {"input": x, "mask": mask},
        state_dict(module),
        "output",
        grad,
    )
    np.testing.assert_allclose(out["output"], h_n[0].detach().numpy(), atol=1e-5)
    assert_close(grads, torch_grads(module), atol=1e-4)


def test_lstm_state_dict_keys_load_unchanged():
    module = torch.nn.LSTM(IN, H, batch_first=True)
    pm = ml.compile(
        LSTM(H, T), ml.NumpyBackend(), shapes={"input": [B, T, IN]}, data_keys={"input"}
    )
    expected = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert {k: pm.shapes[k] for k in pm.trainable_keys} == expected


def test_many_to_one_rejects_zero_steps():
    with pytest.raises(ValueError, match="num_steps"):
        LSTM(H, 0)


def test_long_unrolled_rnn_builds_and_matches_numpy():
    # Adding the final state pulls in every pending step call: 120 steps once hit
    # Python's recursion limit (one nested add per call).
    steps = 120
    model = RNN(hidden_size=H, num_steps=steps)
    backend = ml.NumpyBackend(dtype=ml.float64)
    pm = ml.compile(model, backend, shapes={"input": [B, steps, IN]}, jit=False)
    params = {
        "weight_ih_l0": rng.normal(size=(H, IN)) * 0.3,
        "weight_hh_l0": rng.normal(size=(H, H)) * 0.3,
        "bias_ih_l0": rng.normal(size=H) * 0.1,
        "bias_hh_l0": rng.normal(size=H) * 0.1,
    }
    x = rng.normal(size=(B, steps, IN))
    h = np.zeros((B, H))
    for t in range(steps):
        h = np.tanh(
            x[:, t] @ params["weight_ih_l0"].T
            + params["bias_ih_l0"]
            + h @ params["weight_hh_l0"].T
            + params["bias_hh_l0"]
        )
    out = pm.evaluate(params, {"input": x})["output"]
    np.testing.assert_allclose(out, h, rtol=1e-10)
