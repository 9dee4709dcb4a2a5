"""MultiHeadAttention, TransformerBlock and gpt2 against PyTorch and transformers, on
every installed backend (float32, atol 1e-4 for GPT-2 logits)."""

import re
from functools import cache

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import Model
from mithril_core.models.attention import MultiHeadAttention, TransformerBlock
from mithril_core.models.gpt import gpt2
from mithril_core.plugins import get_registry

torch = pytest.importorskip("torch")
F = torch.nn.functional

rng = np.random.default_rng(11)


@cache
def make_backend(name: str, dtype: str = "float32"):
    return ml.backend(name, dtype=getattr(ml, dtype))


def jit_for(backend_name: str) -> bool:
    # torch.compile costs many seconds per model: one GPT-2 test covers torch's jit.
    return backend_name != "torch"


def skip_without_lowerings(model: Model, backend_name: str) -> None:
    """Skip (naming the ops) when ``backend_name`` lacks a lowering ``model`` needs."""
    model._ensure_built()
    # Calls that compile removes (Buffer) need no lowering.
    needed = {p.op_name for p, _ in model.primitives() if not p.forwarded_input({})}
    missing = sorted(needed - set(get_registry().lowerings(backend_name)))
    if missing:
        pytest.skip(f"{backend_name} has no lowering for {', '.join(missing)}")


def to_numpy(backend, tree):
    return {k: np.asarray(backend.to_numpy(v)) for k, v in tree.items()}


def on_backend(backend, arrays):
    return {k: backend.array(np.asarray(v)) for k, v in arrays.items()}


# -- MultiHeadAttention --------------------------------------------------------------


def mha_params_from_torch(module) -> dict[str, np.ndarray]:
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    wq, wk, wv = np.split(sd["in_proj_weight"], 3)
    bq, bk, bv = np.split(sd["in_proj_bias"], 3)
    return {
        "query_proj_weight": wq, "query_proj_bias": bq,
        "key_proj_weight": wk, "key_proj_bias": bk,
        "value_proj_weight": wv, "value_proj_bias": bv,
        "out_proj_weight": sd["out_proj.weight"], "out_proj_bias": sd["out_proj.bias"],
    }  # fmt: skip


def torch_mha_grads(module, q, k, v, grad_out, causal):
    """Output and parameter gradients of ``sum(mha(q, k, v) * grad_out)``, float64."""
    module = module.double()
    module.zero_grad()
    mask = None
    if causal:
        t, s = q.shape[1], k.shape[1]
        mask = torch.ones(t, s, dtype=torch.bool).triu(1)
    out, _ = module(
        *(torch.tensor(a, dtype=torch.float64) for a in (q, k, v)),
        attn_mask=mask,
        need_weights=False,
    )
    (out * torch.tensor(grad_out)).sum().backward()
    gw = module.in_proj_weight.grad.numpy()
    gb = module.in_proj_bias.grad.numpy()
    grads = {
        "out_proj_weight": module.out_proj.weight.grad.numpy(),
        "out_proj_bias": module.out_proj.bias.grad.numpy(),
    }
    for part, w, b in zip(
        ("query", "key", "value"), np.split(gw, 3), np.split(gb, 3), strict=True
    ):
        grads[f"{part}_proj_weight"], grads[f"{part}_proj_bias"] = w, b
    return out.detach().numpy(), grads


@pytest.mark.parametrize(
    ("causal", "source_len"),
    [(False, 5), (True, 5), (False, 3)],
    ids=["self", "causal", "cross"],
)
def test_multi_head_attention_matches_torch(backend_name, causal, source_len):
    embed, heads, batch, length = 16, 4, 2, 5
    model = MultiHeadAttention(embed, heads, is_causal=causal)
    skip_without_lowerings(model, backend_name)
    backend = make_backend(backend_name)
    pm = ml.compile(
        model,
        backend,
        shapes={
            "query": [batch, length, embed],
            "key": [batch, source_len, embed],
            "value": [batch, source_len, embed],
        },
        data_keys={"query", "key", "value"},
        jit=jit_for(backend_name),
    )
    torch.manual_seed(0)
    module = torch.nn.MultiheadAttention(embed, heads, batch_first=True)
    params = mha_params_from_torch(module)
    assert set(pm.trainable_keys) == set(params)
    assert all(pm.shapes[k] == list(v.shape) for k, v in params.items())
    q = rng.standard_normal((batch, length, embed)).astype(np.float32)
    k = rng.standard_normal((batch, source_len, embed)).astype(np.float32)
    v = rng.standard_normal((batch, source_len, embed)).astype(np.float32)
    grad_out = rng.standard_normal((batch, length, embed))
    expected, expected_grads = torch_mha_grads(module, q, k, v, grad_out, causal)

    outputs, grads = pm.evaluate(
        on_backend(backend, params),
        on_backend(backend, {"query": q, "key": k, "value": v}),
        output_gradients={"output": backend.array(grad_out.astype(np.float32))},
    )
    out = to_numpy(backend, outputs)["output"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    grads = to_numpy(backend, grads)
    assert set(grads) == set(expected_grads)
    for key, value in expected_grads.items():
        np.testing.assert_allclose(grads[key], value, rtol=1e-3, atol=1e-4, err_msg=key)


def test_multi_head_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


# -- TransformerBlock ----------------------------------------------------------------


def torch_block(x, p, heads, causal):
    def linear(h, name):
        return h @ p[f"{name}_weight"].T + p[f"{name}_bias"]

    def ln(h, name):
        return F.layer_norm(h, h.shape[-1:], p[f"{name}_weight"], p[f"{name}_bias"])

    batch, length, dim = x.shape
    h = ln(x, "ln_1")

    def split(t):
        return t.reshape(batch, length, heads, dim // heads).transpose(1, 2)

    q, k, v = (split(linear(h, f"attn_{n}_proj")) for n in ("query", "key", "value"))
    a = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    a = a.transpose(1, 2).reshape(batch, length, dim)
    x = x + linear(a, "attn_out_proj")
    h = F.gelu(linear(ln(x, "ln_2"), "mlp_fc"))
    return x + linear(h, "mlp_proj")


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_transformer_block_matches_torch(backend_name, causal):
    dim, heads, mlp_dim, batch, length = 16, 2, 32, 2, 6
    model = TransformerBlock(dim, heads, mlp_dim, causal=causal)
    skip_without_lowerings(model, backend_name)
    backend = make_backend(backend_name)
    pm = ml.compile(
        model,
        backend,
        shapes={"input": [batch, length, dim]},
        data_keys={"input"},
        jit=jit_for(backend_name),
    )
    assert pm.shapes["mlp_fc_weight"] == [mlp_dim, dim]
    assert pm.shapes["attn_query_proj_weight"] == [dim, dim]
    assert {k for k in pm.trainable_keys if k.startswith("ln_")} == {
        "ln_1_weight", "ln_1_bias", "ln_2_weight", "ln_2_bias",
    }  # fmt: skip
    params = {
        k: rng.standard_normal(pm.shapes[k]).astype(np.float32) * 0.3
        for k in pm.trainable_keys
    }
    x = rng.standard_normal((batch, length, dim)).astype(np.float32)
    grad_out = rng.standard_normal((batch, length, dim)).astype(np.float32)

    tparams = {
        k: torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for k, v in params.items()
    }
    expected = torch_block(torch.tensor(x, dtype=torch.float64), tparams, heads, causal)
    (expected * torch.tensor(grad_out, dtype=torch.float64)).sum().backward()

    outputs, grads = pm.evaluate(
        on_backend(backend, params),
        on_backend(backend, {"input": x}),
        output_gradients={"output": backend.array(grad_out)},
    )
    out = to_numpy(backend, outputs)["output"]
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-4, atol=1e-4)
    grads = to_numpy(backend, grads)
    for key, value in tparams.items():
        np.testing.assert_allclose(
            grads[key], value.grad.numpy(), rtol=1e-3, atol=1e-3, err_msg=key
        )


def test_transformer_block_dropout_is_identity_in_inference():
    dim, batch, length = 8, 2, 3
    plain = TransformerBlock(dim, 2, 16)
    dropped = TransformerBlock(dim, 2, 16, dropout=0.5)
    backend = make_backend("numpy", "float64")
    shapes = {"input": [batch, length, dim]}
    pm_plain = ml.compile(plain, backend, shapes=shapes, inference=True)
    pm_drop = ml.compile(dropped, backend, shapes=shapes, inference=True)
    params = pm_plain.randomize_params(seed=2)
    x = {"input": rng.standard_normal((batch, length, dim))}
    np.testing.assert_allclose(
        pm_drop.evaluate(params, x)["output"], pm_plain.evaluate(params, x)["output"]
    )


# -- GPT-2 ---------------------------------------------------------------------------

CONFIG = {"n_layer": 2, "n_head": 2, "n_embd": 64, "vocab_size": 128, "n_positions": 32}


@cache
def hf_gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(**CONFIG)
    model = transformers.GPT2LMHeadModel(config).eval()
    state = {k.replace(".", "_"): v.numpy() for k, v in model.state_dict().items()}
    return model, state


def ml_gpt2():
    return gpt2(
        vocab_size=CONFIG["vocab_size"],
        block_size=CONFIG["n_positions"],
        n_layer=CONFIG["n_layer"],
        n_head=CONFIG["n_head"],
        n_embd=CONFIG["n_embd"],
    )


def hf_state_without_buffers(state):
    # Older transformers keep the causal mask as `attn.bias`/`attn.masked_bias` buffers.
    buffer = re.compile(r"transformer_h_\d+_attn_(masked_)?bias")
    return {k: v for k, v in state.items() if not buffer.fullmatch(k)}


def test_gpt2_keys_and_shapes_are_hf_state_dict_keys():
    _, state = hf_gpt2()
    state = hf_state_without_buffers(state)
    model = ml_gpt2()
    skip_without_lowerings(model, "numpy")
    pm = ml.compile(
        model,
        make_backend("numpy"),
        shapes={"input": [2, 7]},
        data_keys={"input"},
        inference=True,
    )
    params = set(pm.input_keys) - {"input"}
    assert params == set(state)
    assert {k: pm.shapes[k] for k in params} == {
        k: list(v.shape) for k, v in state.items()
    }
    assert pm.output_keys == ("logits",) or list(pm.output_keys) == ["logits"]
    assert pm.shapes["logits"] == [2, 7, CONFIG["vocab_size"]]


@pytest.mark.parametrize("length", [7, 32], ids=["short", "full"])
def test_gpt2_logits_match_transformers(backend_name, length):
    check_gpt2_logits(backend_name, length, jit=jit_for(backend_name))


def test_gpt2_logits_match_transformers_torch_jit():
    if "torch" not in ml.available_backends():
        pytest.skip("mithril-torch is not installed")
    check_gpt2_logits("torch", 7, jit=True)


def check_gpt2_logits(backend_name, length, jit):
    model = ml_gpt2()
    skip_without_lowerings(model, backend_name)
    hf, state = hf_gpt2()
    backend = make_backend(backend_name)
    pm = ml.compile(
        model,
        backend,
        shapes={"input": [2, length]},
        data_keys={"input"},
        inference=True,
        jit=jit,
    )
    params = {k: state[k] for k in pm.input_keys if k != "input"}
    ids = rng.integers(0, CONFIG["vocab_size"], (2, length))
    with torch.no_grad():
        expected = hf(torch.tensor(ids)).logits.numpy()
    out = pm.evaluate(on_backend(backend, params), {"input": backend.array(ids)})
    logits = to_numpy(backend, out)["logits"]
    assert logits.shape == (2, length, CONFIG["vocab_size"])
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_gpt2_rejects_sequences_longer_than_block_size():
    with pytest.raises(ml.ShapeError, match="33"):
        ml.compile(
            ml_gpt2(),
            make_backend("numpy"),
            shapes={"input": [1, CONFIG["n_positions"] + 1]},
            data_keys={"input"},
        )


def test_gpt2_gradients_match_transformers(backend_name):
    model = ml_gpt2()
    skip_without_lowerings(model, backend_name)
    hf, state = hf_gpt2()
    backend = make_backend(backend_name)
    length = 6
    pm = ml.compile(
        model,
        backend,
        shapes={"input": [2, length]},
        data_keys={"input"},
        jit=jit_for(backend_name),
    )
    ids = rng.integers(0, CONFIG["vocab_size"], (2, length))
    grad_logits = rng.standard_normal((2, length, CONFIG["vocab_size"]))

    hf64 = type(hf)(hf.config).double().eval()
    hf64.load_state_dict(hf.state_dict())
    logits = hf64(torch.tensor(ids)).logits
    (logits * torch.tensor(grad_logits)).sum().backward()
    expected = {
        name.replace(".", "_"): p.grad.numpy() for name, p in hf64.named_parameters()
    }

    params = {k: state[k] for k in pm.trainable_keys}
    _, grads = pm.evaluate(
        on_backend(backend, params),
        {"input": backend.array(ids)},
        output_gradients={"logits": backend.array(grad_logits.astype(np.float32))},
    )
    grads = to_numpy(backend, grads)
    # HF ties lm_head to wte: its one parameter gets both gradients.
    tied = grads.pop("transformer_wte_weight") + grads.pop("lm_head_weight")
    np.testing.assert_allclose(
        tied, expected.pop("transformer_wte_weight"), rtol=1e-3, atol=1e-3
    )
    assert set(grads) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(grads[key], value, rtol=1e-3, atol=1e-3, err_msg=key)


def test_gpt2_loads_hf_state_dict_and_checkpoint_file(tmp_path):
    from mithril_core.models.gpt import gpt2_state_dict

    hf, _ = hf_gpt2()
    backend = make_backend("numpy")
    model = ml_gpt2()
    skip_without_lowerings(model, "numpy")
    pm = ml.compile(
        model,
        backend,
        shapes={"input": [1, 5]},
        data_keys={"input"},
        inference=True,
    )
    ids = rng.integers(0, CONFIG["vocab_size"], (1, 5))
    with torch.no_grad():
        expected = hf(torch.tensor(ids)).logits.numpy()

    params = pm.load_weights(hf.state_dict())
    logits = pm.evaluate(params, {"input": ids})["logits"]
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)

    # A checkpoint file without lm_head (tied) and with GPT2Model keys (no prefix).
    safetensors_torch = pytest.importorskip("safetensors.torch")
    base = {
        k.removeprefix("transformer."): v.contiguous()
        for k, v in hf.state_dict().items()
        if k != "lm_head.weight"
    }
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(base, str(path))
    params = pm.load_weights(gpt2_state_dict(path))
    logits = pm.evaluate(params, {"input": ids})["logits"]
    np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)
