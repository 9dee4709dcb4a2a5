"""Core benchmarks on the NumPy backend (issue: core).

(a) build + compile time of an MLP and of stacks of transformer-like blocks;
(b) evaluate and evaluate-with-gradients time of a 3x256 MLP vs hand-written NumPy;
(c) peak memory (tracemalloc) of compiling the 12-block stack and of one forward pass
    vs the hand-written forward.

Run: python benchmarks/bench_core.py
"""

from __future__ import annotations

import gc
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _models import mlp, transformer_stack  # noqa: E402

import mithril_core as ml  # noqa: E402

BATCH, WIDTH = 64, 256


def paired(ours, reference, rounds=15, number=50):
    """Best per-call times of ``ours`` and ``reference``, timed in alternating
    batches so that load from elsewhere on the machine hits both alike."""
    ours(), reference()  # warm up
    best = [float("inf"), float("inf")]
    gc.disable()
    try:
        for _ in range(rounds):
            for i, fn in enumerate((ours, reference)):
                start = time.perf_counter()
                for _ in range(number):
                    fn()
                best[i] = min(best[i], (time.perf_counter() - start) / number)
    finally:
        gc.enable()
    return best[0], best[1]


def compile_times():
    print("== (a) build + compile time (NumPy backend)")
    start = time.perf_counter()
    model = mlp(WIDTH, 3)
    built = time.perf_counter()
    ml.compile(
        model, ml.NumpyBackend(), shapes={"input": [BATCH, WIDTH]}, data_keys={"input"}
    )
    print(
        f"mlp 3x{WIDTH}: build {built - start:.3f} s, "
        f"compile {time.perf_counter() - built:.3f} s"
    )
    print(
        f"{'blocks':>6} {'build s':>8} {'compile s':>10} {'total s':>8} {'s/block':>8}"
    )
    for n in (1, 2, 4, 8, 12, 24):
        gc.collect()
        start = time.perf_counter()
        model = transformer_stack(n)
        built = time.perf_counter()
        ml.compile(
            model, ml.NumpyBackend(), shapes={"input": [2, 16, 64]}, data_keys={"input"}
        )
        done = time.perf_counter()
        total = done - start
        print(
            f"{n:>6} {built - start:>8.3f} {done - built:>10.3f} "
            f"{total:>8.3f} {total / n:>8.4f}"
        )


def handwritten(params, x):
    h = np.maximum(x @ params["layer_0_weight"].T + params["layer_0_bias"], 0)
    h = np.maximum(h @ params["layer_1_weight"].T + params["layer_1_bias"], 0)
    return h @ params["layer_2_weight"].T + params["layer_2_bias"]


def handwritten_grad(params, x, g):
    w0, w1, w2 = (
        params["layer_0_weight"],
        params["layer_1_weight"],
        params["layer_2_weight"],
    )
    z0 = x @ w0.T + params["layer_0_bias"]
    h0 = np.maximum(z0, 0)
    z1 = h0 @ w1.T + params["layer_1_bias"]
    h1 = np.maximum(z1, 0)
    out = h1 @ w2.T + params["layer_2_bias"]
    grads = {"layer_2_weight": g.T @ h1, "layer_2_bias": g.sum(0)}
    g1 = (g @ w2) * (z1 > 0)
    grads["layer_1_weight"] = g1.T @ h0
    grads["layer_1_bias"] = g1.sum(0)
    g0 = (g1 @ w1) * (z0 > 0)
    grads["layer_0_weight"] = g0.T @ x
    grads["layer_0_bias"] = g0.sum(0)
    return out, grads


def evaluate_times():
    print(f"\n== (b) NumPy evaluate, 3x{WIDTH} MLP, batch {BATCH} (float32)")
    backend = ml.NumpyBackend()
    pm = ml.compile(
        mlp(WIDTH, 3), backend, shapes={"input": [BATCH, WIDTH]}, data_keys={"input"}
    )
    params = {k: v.astype(np.float32) for k, v in pm.randomize_params().items()}
    x = np.random.default_rng(0).standard_normal((BATCH, WIDTH)).astype(np.float32)
    g = np.ones((BATCH, WIDTH), np.float32)
    data = {"input": x}
    ours, ref = paired(
        lambda: pm.evaluate(params, data), lambda: handwritten(params, x)
    )
    print(
        f"forward:        mithril {ours * 1e6:8.1f} us  "
        f"hand-written {ref * 1e6:8.1f} us  ratio {ours / ref:.3f}"
    )
    grads_in = {"output": g}
    ours_g, ref_g = paired(
        lambda: pm.evaluate(params, data, output_gradients=grads_in),
        lambda: handwritten_grad(params, x, g),
    )
    print(
        f"with gradients: mithril {ours_g * 1e6:8.1f} us  "
        f"hand-written {ref_g * 1e6:8.1f} us  ratio {ours_g / ref_g:.3f}"
    )


def memory():
    print("\n== (c) peak memory (tracemalloc)")
    tracemalloc.start()
    model = transformer_stack(12)
    pm = ml.compile(
        model, ml.NumpyBackend(), shapes={"input": [8, 128, 64]}, data_keys={"input"}
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"build + compile 12 blocks: peak {peak / 2**20:.1f} MiB")

    backend = ml.NumpyBackend()
    pm = ml.compile(
        mlp(1024, 3), backend, shapes={"input": [512, 1024]}, data_keys={"input"}
    )
    params = pm.randomize_params()
    x = np.ones((512, 1024), np.float32)
    data = {"input": x}
    pm.evaluate(params, data)
    handwritten(params, x)
    tracemalloc.start()
    pm.evaluate(params, data)
    _, ours = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tracemalloc.start()
    handwritten(params, x)
    _, ref = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(
        f"forward 3x1024 MLP, batch 512: mithril {ours / 2**20:.1f} MiB, "
        f"hand-written {ref / 2**20:.1f} MiB, ratio {ours / ref:.2f}"
    )


if __name__ == "__main__":
    compile_times()
    evaluate_times()
    memory()
