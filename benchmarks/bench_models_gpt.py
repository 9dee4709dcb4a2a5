"""GPT-2 benchmarks: compiled mithril_core models vs the ``transformers`` module.

(a) build + compile time of GPT-2 small config (2 layers, 64 wide) and of the 12-layer
    GPT-2 (n_embd 768, n_head 12, vocab 50257, block 1024); target under 2 s;
(b) forward time of the small config: Torch backend (jit and no jit) vs the
    ``transformers`` ``GPT2LMHeadModel`` in eager mode, and NumPy vs Torch;
(c) forward time of the 12-layer GPT-2 on Torch (no jit) vs ``transformers``.

Weights are random (built from a config; nothing is downloaded). Run:
    python benchmarks/bench_models_gpt.py [--skip-large]
"""

from __future__ import annotations

import gc
import sys
import time

import numpy as np
import torch
from _timing import best_of_each
from transformers import GPT2Config, GPT2LMHeadModel

import mithril_core as ml
from mithril_core.models import gpt2

SMALL = {"vocab_size": 128, "n_positions": 32, "n_layer": 2, "n_head": 2, "n_embd": 64}
LARGE = {
    "vocab_size": 50257,
    "n_positions": 1024,
    "n_layer": 12,
    "n_head": 12,
    "n_embd": 768,
}


def build(config):
    return gpt2(
        vocab_size=config["vocab_size"],
        block_size=config["n_positions"],
        n_layer=config["n_layer"],
        n_head=config["n_head"],
        n_embd=config["n_embd"],
    )


def hf_model(config):
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**config)).eval()


def compile_gpt(config, backend, shape, **options):
    gc.collect()
    start = time.perf_counter()
    model = build(config)
    built = time.perf_counter()
    pm = ml.compile(
        model,
        backend,
        shapes={"input": shape},
        data_keys={"input"},
        inference=True,
        **options,
    )
    done = time.perf_counter()
    return pm, built - start, done - built


def params_for(pm, hf, backend):
    state = {k.replace(".", "_"): v for k, v in hf.state_dict().items()}
    return {k: backend.array(state[k].numpy()) for k in pm.input_keys if k != "input"}


def compile_times():
    print("== (a) build + compile time (inference, shapes known)")
    print(
        f"{'model':<22} {'backend':<8} {'build s':>8} {'compile s':>10} {'total s':>8}"
    )
    for label, config, shape in (
        ("gpt2 2x64", SMALL, [4, 32]),
        ("gpt2 12x768 (124M)", LARGE, [1, 64]),
    ):
        for name in ("numpy", "torch"):
            backend = ml.backend(name, dtype=ml.float32)
            _, build_s, compile_s = compile_gpt(config, backend, shape, jit=False)
            total = build_s + compile_s
            flag = "" if config is SMALL or total < 2.0 else "  (over the 2 s target)"
            print(
                f"{label:<22} {name:<8} {build_s:>8.3f} {compile_s:>10.3f} "
                f"{total:>8.3f}{flag}"
            )


def small_forward():
    print("\n== (b) forward, GPT-2 2x64, batch 4 x 32 tokens, float32, CPU")
    hf = hf_model(SMALL)
    ids = np.random.default_rng(0).integers(0, SMALL["vocab_size"], (4, 32))
    ids_t = torch.tensor(ids)

    def hf_forward():
        with torch.no_grad():
            return hf(ids_t).logits.numpy()

    fns = {"transformers eager": hf_forward}
    for name, jit in (("torch", False), ("torch", True), ("numpy", False)):
        backend = ml.backend(name, dtype=ml.float32)
        pm, _, _ = compile_gpt(SMALL, backend, [4, 32], jit=jit)
        params = params_for(pm, hf, backend)
        data = {"input": backend.array(ids)}

        def forward(pm=pm, params=params, data=data, backend=backend):
            return backend.to_numpy(pm.evaluate(params, data)["logits"])

        fns[f"mithril {name}{' jit' if jit else ''}"] = forward
    times = best_of_each(fns, number=50)
    reference = hf_forward()
    t_hf = times["transformers eager"]
    print(f"{'':<22} {'ms':>8} {'vs transformers':>16} {'max |diff|':>11}")
    for label, seconds in times.items():
        diff = np.abs(np.asarray(fns[label]()) - reference).max()
        print(
            f"{label:<22} {seconds * 1e3:>8.3f} {seconds / t_hf:>15.2f}x {diff:>11.2e}"
        )
    ratio = times["mithril numpy"] / times["mithril torch"]
    print(f"NumPy / Torch (no jit): {ratio:.2f}x")


def large_forward():
    print("\n== (c) forward, GPT-2 12x768, batch 1 x 64 tokens, float32, CPU")
    hf = hf_model(LARGE)
    ids = np.random.default_rng(0).integers(0, LARGE["vocab_size"], (1, 64))
    ids_t = torch.tensor(ids)

    def hf_forward():
        with torch.no_grad():
            return hf(ids_t).logits.numpy()

    backend = ml.backend("torch", dtype=ml.float32)
    pm, _, _ = compile_gpt(LARGE, backend, [1, 64], jit=False)
    params = params_for(pm, hf, backend)
    data = {"input": backend.array(ids)}

    def ml_forward():
        return backend.to_numpy(pm.evaluate(params, data)["logits"])

    times = best_of_each(
        {"transformers eager": hf_forward, "mithril torch": ml_forward},
        repeat=5,
        number=3,
    )
    diff = np.abs(ml_forward() - hf_forward()).max()
    t_hf, t_ml = times["transformers eager"], times["mithril torch"]
    print(f"transformers eager     {t_hf * 1e3:>8.2f} ms")
    print(
        f"mithril torch          {t_ml * 1e3:>8.2f} ms  {t_ml / t_hf:.2f}x  "
        f"max |diff| {diff:.2e}"
    )


if __name__ == "__main__":
    compile_times()
    small_forward()
    if "--skip-large" not in sys.argv:
        large_forward()
