"""The guide's library-based examples (``attention_block``, ``transformer_block``,
``lstm_cell``) as written, ``mithril`` spelled ``mithril_core``, on every installed
backend, against PyTorch references (outputs and gradients)."""

from functools import cache

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import (
    Add,
    Buffer,
    Concat,
    Gelu,
    IOKey,
    LayerNorm,
    Linear,
    Model,
    MultiHeadAttention,
    Sigmoid,
    Softmax,
    Split,
    Tanh,
)
from mithril_core.plugins import get_registry

torch = pytest.importorskip("torch")
F = torch.nn.functional

rng = np.random.default_rng(3)


# -- the guide's code ----------------------------------------------------------------


def attention_block(dim: int, num_heads: int):
    block = Model(name="attention_block")

    # Layer normalization
    block += LayerNorm()(input="input", output="norm_out")

    # Multi-head attention
    block |= MultiHeadAttention(dim, num_heads)(
        query="norm_out", key="norm_out", value="norm_out", output="attn_out"
    )

    # Residual connection
    block |= Add()(left="input", right="attn_out", output=IOKey("output"))

    return block


def transformer_block(
    dim: int, num_heads: int, mlp_dim: int, dropout_rate: float = 0.1
):
    block = Model()

    # Layer normalization and self-attention
    block |= LayerNorm()(input="input", output="norm1")

    # Custom attention implementation
    attn = Model(name="self_attention")
    attn |= Linear(dim * 3, name="qkv")(input="norm1", output="qkv")
    attn |= Split(split_size=dim, axis=-1)(input="qkv", output="qkv_split")

    # Process query, key, value and compute attention
    # (the guide's "..." gap, filled in:)
    # `attn(input=...)` below binds a terminal named "input": alias it to "norm1".
    attn |= Buffer()(input=IOKey("input"), output="norm1")
    B, T, _ = attn.norm1.shape
    head_dim = dim // num_heads

    def heads(x):
        return x.reshape(B, T, num_heads, head_dim).transpose(0, 2, 1, 3)

    q, k, v = (heads(attn.qkv_split[i]) for i in range(3))
    weights = Softmax(axis=-1)((q @ k.transpose(0, 1, 3, 2)) * head_dim**-0.5)
    context = (weights @ v).transpose(0, 2, 1, 3).reshape(B, T, dim)
    attn |= Linear(dim, name="proj")(input=context, output=IOKey("output"))

    block |= attn(input="norm1", output="attn_out")
    block |= Add()(left="input", right="attn_out", output="attn_residual")

    # MLP block
    block |= LayerNorm()(input="attn_residual", output="norm2")
    block |= Linear(mlp_dim)(input="norm2", output="mlp1")
    block |= Gelu()(input="mlp1", output="mlp_act")
    block |= Linear(dim)(input="mlp_act", output="mlp_out")
    block |= Add()(left="attn_residual", right="mlp_out", output=IOKey("output"))

    return block


def lstm_cell(input_dim: int, hidden_dim: int):
    cell = Model(name="lstm_cell")

    # LSTM gates
    input = IOKey("input", shape=[None, input_dim])
    h_prev = IOKey("h_prev", shape=[None, hidden_dim])
    c_prev = IOKey("c_prev", shape=[None, hidden_dim])

    # Concatenate input and previous hidden state
    cell |= Concat(axis=1)(input=[input, h_prev], output="combined")

    # Calculate gates
    cell |= Linear(hidden_dim * 4, name="gates")(input="combined", output="gates")
    cell |= Split(split_size=hidden_dim, axis=1)(input="gates", output="split_gates")

    i = Sigmoid()(cell.split_gates[0])
    f = Sigmoid()(cell.split_gates[1])
    g = Tanh()(cell.split_gates[2])
    o = Sigmoid()(cell.split_gates[3])

    # Update cell state and hidden state
    c_new = f * c_prev + i * g
    h_new = o * Tanh()(c_new)

    cell |= Buffer()(c_new, output=IOKey("c_new"))
    cell |= Buffer()(h_new, output=IOKey("h_new"))

    return cell


# -- harness -------------------------------------------------------------------------


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


def run(backend_name, model, shapes, data, params, output, grad_out):
    """Compile, evaluate with an output gradient; NumPy outputs and gradients."""
    skip_without_lowerings(model, backend_name)
    backend = make_backend(backend_name)
    pm = ml.compile(
        model,
        backend,
        shapes=shapes,
        data_keys=set(data),
        jit=backend_name != "torch",  # torch.compile: seconds per model
    )
    assert set(pm.trainable_keys) == set(params)
    for key, value in params.items():
        assert pm.shapes[key] == list(value.shape), key
    outputs, grads = pm.evaluate(
        {k: backend.array(v) for k, v in params.items()},
        {k: backend.array(v) for k, v in data.items()},
        output_gradients={output: backend.array(grad_out)},
    )
    as_np = {k: np.asarray(backend.to_numpy(v)) for k, v in outputs.items()}
    return as_np, {k: np.asarray(backend.to_numpy(v)) for k, v in grads.items()}


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def leaf(array):
    return torch.tensor(array, dtype=torch.float64, requires_grad=True)


def check_grads(grads, tparams, **kw):
    kw = {"rtol": 1e-3, "atol": 1e-4} | kw
    assert set(grads) == set(tparams)
    for key, value in tparams.items():
        np.testing.assert_allclose(grads[key], value.grad.numpy(), err_msg=key, **kw)


def layer_norm(x, p, name):
    return F.layer_norm(x, x.shape[-1:], p[f"{name}_weight"], p[f"{name}_bias"])


def linear(x, p, name):
    return x @ p[f"{name}_weight"].T + p[f"{name}_bias"]


# -- tests ---------------------------------------------------------------------------

DIM, HEADS, BATCH, LENGTH = 16, 4, 2, 5


def test_attention_block_matches_torch(backend_name):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(DIM, HEADS, batch_first=True).double()
    sd = {k: v.numpy().astype(np.float32) for k, v in mha.state_dict().items()}
    wq, wk, wv = np.split(sd["in_proj_weight"], 3)
    bq, bk, bv = np.split(sd["in_proj_bias"], 3)
    prefix = "multi_head_attention_0_"
    params = {
        "layer_norm_0_weight": 1 + randn(DIM, scale=0.1),
        "layer_norm_0_bias": randn(DIM, scale=0.1),
        f"{prefix}query_proj_weight": wq, f"{prefix}query_proj_bias": bq,
        f"{prefix}key_proj_weight": wk, f"{prefix}key_proj_bias": bk,
        f"{prefix}value_proj_weight": wv, f"{prefix}value_proj_bias": bv,
        f"{prefix}out_proj_weight": sd["out_proj.weight"],
        f"{prefix}out_proj_bias": sd["out_proj.bias"],
    }  # fmt: skip
    x, grad = randn(BATCH, LENGTH, DIM), randn(BATCH, LENGTH, DIM)

    # Reference: the same block with torch's MultiheadAttention (float64).
    mha.load_state_dict(
        {k: torch.tensor(v, dtype=torch.float64) for k, v in sd.items()}
    )
    ln = {k: leaf(params[k]) for k in ("layer_norm_0_weight", "layer_norm_0_bias")}
    xt = torch.tensor(x, dtype=torch.float64)
    h = layer_norm(xt, ln, "layer_norm_0")
    expected = xt + mha(h, h, h, need_weights=False)[0]
    (expected * torch.tensor(grad, dtype=torch.float64)).sum().backward()

    out, grads = run(
        backend_name,
        attention_block(DIM, HEADS),
        {"input": [BATCH, LENGTH, DIM]},
        {"input": x},
        params,
        "output",
        grad,
    )
    np.testing.assert_allclose(
        out["output"], expected.detach().numpy(), rtol=1e-4, atol=1e-5
    )
    check_grads({k: grads[k] for k in ln}, ln)
    g_in = mha.in_proj_weight.grad.numpy()
    np.testing.assert_allclose(
        np.concatenate(
            [grads[f"{prefix}{n}_proj_weight"] for n in ("query", "key", "value")]
        ),
        g_in,
        rtol=1e-3,
        atol=1e-4,
    )
    np.testing.assert_allclose(
        grads[f"{prefix}out_proj_weight"],
        mha.out_proj.weight.grad.numpy(),
        rtol=1e-3,
        atol=1e-4,
    )


def test_transformer_block_matches_torch(backend_name):
    mlp_dim = 32
    shapes = {
        "layer_norm_0_weight": (DIM,), "layer_norm_0_bias": (DIM,),
        "self_attention_qkv_weight": (3 * DIM, DIM),
        "self_attention_qkv_bias": (3 * DIM,),
        "self_attention_proj_weight": (DIM, DIM), "self_attention_proj_bias": (DIM,),
        "layer_norm_1_weight": (DIM,), "layer_norm_1_bias": (DIM,),
        "linear_0_weight": (mlp_dim, DIM), "linear_0_bias": (mlp_dim,),
        "linear_1_weight": (DIM, mlp_dim), "linear_1_bias": (DIM,),
    }  # fmt: skip
    params = {k: randn(*s, scale=0.3) for k, s in shapes.items()}
    x, grad = randn(BATCH, LENGTH, DIM), randn(BATCH, LENGTH, DIM)

    p = {k: leaf(v) for k, v in params.items()}
    xt = torch.tensor(x, dtype=torch.float64)
    h = layer_norm(xt, p, "layer_norm_0")
    q, k, v = linear(h, p, "self_attention_qkv").split(DIM, dim=-1)

    def heads(t):
        return t.reshape(BATCH, LENGTH, HEADS, DIM // HEADS).transpose(1, 2)

    context = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
    context = context.transpose(1, 2).reshape(BATCH, LENGTH, DIM)
    x1 = xt + linear(context, p, "self_attention_proj")
    mlp = F.gelu(linear(layer_norm(x1, p, "layer_norm_1"), p, "linear_0"))
    expected = x1 + linear(mlp, p, "linear_1")
    (expected * torch.tensor(grad, dtype=torch.float64)).sum().backward()

    out, grads = run(
        backend_name,
        transformer_block(DIM, HEADS, mlp_dim),
        {"input": [BATCH, LENGTH, DIM]},
        {"input": x},
        params,
        "output",
        grad,
    )
    np.testing.assert_allclose(
        out["output"], expected.detach().numpy(), rtol=1e-4, atol=1e-4
    )
    check_grads(grads, p, atol=1e-3)


def test_lstm_cell_matches_torch_lstm_cell(backend_name):
    input_dim, hidden = 3, 5
    torch.manual_seed(0)
    module = torch.nn.LSTMCell(input_dim, hidden)
    sd = {k: v.numpy() for k, v in module.state_dict().items()}
    # The guide's one Linear over [input, h_prev] is torch's two products side by side.
    params = {
        "gates_weight": np.concatenate([sd["weight_ih"], sd["weight_hh"]], axis=1),
        "gates_bias": sd["bias_ih"] + sd["bias_hh"],
    }
    x, h, c = randn(4, input_dim), randn(4, hidden), randn(4, hidden)
    grad = randn(4, hidden)
    h_new, c_new = module(torch.tensor(x), (torch.tensor(h), torch.tensor(c)))
    (h_new * torch.tensor(grad)).sum().backward()

    out, grads = run(
        backend_name,
        lstm_cell(input_dim, hidden),
        {"input": [4, input_dim]},
        {"input": x, "h_prev": h, "c_prev": c},
        params,
        "h_new",
        grad,
    )
    np.testing.assert_allclose(out["h_new"], h_new.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(out["c_new"], c_new.detach().numpy(), atol=1e-6)
    g_w = np.concatenate(
        [module.weight_ih.grad.numpy(), module.weight_hh.grad.numpy()], axis=1
    )
    np.testing.assert_allclose(grads["gates_weight"], g_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        grads["gates_bias"], module.bias_ih.grad.numpy(), rtol=1e-4, atol=1e-5
    )
