"""Torch and JAX backends on an accelerator (or the CPU): GPT-2 inference and
forward + backward, against Hugging Face's ``GPT2LMHeadModel`` in PyTorch eager with
the same weights (outputs checked equal first).

Rows: ``hf-torch`` (the hand-written baseline), ``mithril-torch`` (``jit=False``: the
generated Python calling torch ops), ``mithril-torch-jit`` (``torch.compile``),
``mithril-jax`` (``jax.jit``). Time per call: best of rounds of the mean of several
synchronized calls (``torch.cuda.synchronize`` / ``block_until_ready``). Ratios are
against ``hf-torch``.

Run: python benchmarks/bench_device.py [--device cuda] [--small] [--no-jit]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from _timing import best_of

VOCAB = 50257


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="4 x 256, 2 x 64 tokens")
    parser.add_argument("--no-jit", action="store_true", help="skip torch.compile")
    args = parser.parse_args()

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    import mithril_core as ml
    from mithril_core.models import gpt2
    from mithril_core.models.gpt import gpt2_state_dict

    layers, heads, embd, batch, tokens = (
        (4, 4, 256, 2, 64) if args.small else (12, 12, 768, 8, 128)
    )
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=1024,
        n_layer=layers,
        n_head=heads,
        n_embd=embd,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    device = torch.device(args.device)
    hf = GPT2LMHeadModel(config).to(device).eval()
    state = {k: v.detach().cpu().numpy() for k, v in hf.state_dict().items()}
    ids = np.random.default_rng(0).integers(0, VOCAB, (batch, tokens))
    ids_t = torch.from_numpy(ids).to(device)
    grad = np.random.default_rng(1).standard_normal((batch, tokens, VOCAB))
    grad = grad.astype(np.float32)
    grad_t = torch.from_numpy(grad).to(device)

    def torch_sync(_: Any) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def hf_forward() -> Any:
        with torch.no_grad():
            return hf(ids_t).logits

    params_hf = list(hf.parameters())

    def hf_backward() -> Any:
        logits = hf(ids_t).logits
        return torch.autograd.grad(logits, params_hf, grad_t)

    reference = hf_forward().cpu().numpy()
    rows: list[tuple[str, float, float, float]] = []
    hf_times = (
        best_of(hf_forward, 5, 5, sync=torch_sync),
        best_of(hf_backward, 5, 5, sync=torch_sync),
    )
    rows.append(("hf-torch", *hf_times, 0.0))

    def mithril(name: str, backend: Any, jit: bool, sync: Callable[[Any], None]):
        model = gpt2(VOCAB, 1024, layers, heads, embd)
        start = time.perf_counter()
        pm = ml.compile(
            model,
            backend,
            shapes={"input": [batch, tokens]},
            data_keys={"input"},
            inference=False,
            jit=jit,
        )
        params = pm.load_weights(gpt2_state_dict(state))
        data = {"input": backend.array(ids)}
        seed = {"logits": backend.array(grad)}
        out = pm.evaluate(params, data)["logits"]
        sync(out)
        compiled = time.perf_counter() - start
        got = backend.to_numpy(out)
        diff = np.abs(got - reference).max() / np.abs(reference).max()
        assert diff < 1e-3, f"{name}: relative difference {diff:.2e}"
        forward = best_of(lambda: pm.evaluate(params, data)["logits"], 5, 5, sync=sync)
        backward = best_of(
            lambda: pm.evaluate(params, data, output_gradients=seed)[1], 5, 5, sync=sync
        )
        rows.append((name, forward, backward, compiled))

    torch_device = args.device
    mithril(
        "mithril-torch", ml.backend("torch", device=torch_device), False, torch_sync
    )
    if not args.no_jit:
        mithril(
            "mithril-torch-jit",
            ml.backend("torch", device=torch_device),
            True,
            torch_sync,
        )
    import jax

    def jax_sync(value: Any) -> None:
        jax.block_until_ready(value)

    jax_device = "gpu" if args.device.startswith("cuda") else args.device
    mithril("mithril-jax", ml.backend("jax", device=jax_device), True, jax_sync)

    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(
        f"== GPT-2 {layers} x {embd}, batch {batch} x {tokens} tokens, float32, "
        f"{name}; torch {torch.__version__}, jax {jax.__version__}"
    )
    print(
        f"{'row':<20} {'forward ms':>11} {'ratio':>6} {'fwd+bwd ms':>11} "
        f"{'ratio':>6} {'compile s':>10}"
    )
    for row, fwd, bwd, compiled in rows:
        print(
            f"{row:<20} {fwd * 1e3:>11.2f} {fwd / hf_times[0]:>6.2f} "
            f"{bwd * 1e3:>11.2f} {bwd / hf_times[1]:>6.2f} {compiled:>10.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
