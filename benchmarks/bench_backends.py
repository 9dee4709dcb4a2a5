"""Per-backend evaluate time of compiled models vs hand-written code (issue: Backend
plugins).

For each backend, a 3x256 MLP (batch 64) and a 4-block transformer stack (dim 64, 4
heads, batch 8 x 32 tokens) from ``_models.py`` are compiled with ``jit=True`` and timed
against a hand-written implementation of the same computation in the same framework:

* torch: a plain ``nn.Module`` (``nn.Linear`` layers), eager and ``torch.compile``-d;
  gradients from ``torch.autograd.grad`` (mithril ``jit=False`` is shown vs eager too);
* jax: a ``jax.jit`` function; gradients from ``jax.jit`` of ``jax.vjp``;
* mlx: an ``mx.compile`` function; gradients from ``mx.compile`` of ``mx.vjp``.

"evaluate" is ``pm.evaluate(params, data)``; "gradients" is
``pm.evaluate(params, data, {"output": g})``: the outputs plus the gradient of every
parameter for the output gradient ``g``, which is what the baselines compute too. The
hand-written code gets the same weights (``pm.randomize_params(seed=0)``) and its
outputs and gradients are asserted equal (allclose) to mithril's before anything is
timed. The layer norm of the stack is written as the model writes it (mean, variance,
sqrt; no affine), so both sides run the same operations.

Timing: warm-up calls, then 15 rounds (4 with ``--quick``) of single calls
(synchronized: ``block_until_ready`` / ``mx.eval``; torch on the CPU is synchronous)
that interleave mithril and the baselines call by call; each round keeps the median per
function and the figure is the best round; the garbage collector is off meanwhile, as
in ``timeit``. Ratios are mithril / hand-written (target <= 1.05). On a machine shared
with other work, ``--threads 1`` gives steadier figures.

Run: python benchmarks/bench_backends.py [--backends torch,jax,mlx] [--quick]
     [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _models import mlp, transformer_stack  # noqa: E402

import mithril_core as ml  # noqa: E402

MLP_BATCH, MLP_WIDTH, MLP_DEPTH = 64, 256, 3
STACK_BLOCKS, DIM, HEADS = 4, 64, 4
STACK_SHAPE = (8, 32, DIM)
EPS = 1e-5


def models() -> dict[str, tuple[Any, list[int], list[str]]]:
    """name -> (logical model, input shape, linear layers in order)."""
    layers = [f"layer_{i}" for i in range(MLP_DEPTH)]
    linears = [
        f"block_{i}_{name}"
        for i in range(STACK_BLOCKS)
        for name in ("query", "key", "value", "proj", "fc1", "fc2")
    ]
    return {
        f"mlp {MLP_DEPTH}x{MLP_WIDTH}": (
            mlp(MLP_WIDTH, MLP_DEPTH),
            [MLP_BATCH, MLP_WIDTH],
            layers,
        ),
        f"stack {STACK_BLOCKS} blocks": (
            transformer_stack(STACK_BLOCKS, DIM, HEADS),
            list(STACK_SHAPE),
            linears,
        ),
    }


# -- timing ----------------------------------------------------------------------------
def compare(
    fns: dict[str, Callable[[], Any]], rounds: int, round_s: float = 0.25
) -> dict[str, float]:
    """Best-of-``rounds`` median seconds per call of each function. Calls interleave
    (one call of each function in turn, the order rotating), so that load from other
    processes and drift of the machine hit every function alike; a round makes as many
    calls (5 to 50) as fit in about ``round_s`` seconds."""
    items = list(fns.items())
    estimate = 0.0
    for _, fn in items:
        fn()  # warm-up: compile and first run
        start = time.perf_counter()
        for _ in range(3):
            fn()
        estimate += (time.perf_counter() - start) / 3
    calls = max(5, min(50, round(round_s / estimate)))
    best = dict.fromkeys(fns, math.inf)
    gc.collect()
    gc.disable()  # as timeit does: a collection would land on whoever allocated last
    try:
        for _ in range(rounds):
            times: dict[str, list[float]] = {name: [] for name in fns}
            for i in range(calls):
                for name, fn in items[i % len(items) :] + items[: i % len(items)]:
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            for name, found in times.items():
                best[name] = min(best[name], statistics.median(found))
    finally:
        gc.enable()
    return best


def check_close(what: str, ours: Any, ref: Any, rtol: float, atol: float) -> None:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape or not np.allclose(ours, ref, rtol=rtol, atol=atol):
        error = np.max(np.abs(ours - ref)) if ours.shape == ref.shape else "shape"
        msg = f"{what}: mithril and the hand-written code differ (max |diff| {error})."
        raise AssertionError(msg)


# -- torch -----------------------------------------------------------------------------
def torch_baselines(name: str, params: dict[str, np.ndarray], linears: list[str]):
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linears = nn.ModuleDict()
            for layer in linears:
                out_f, in_f = params[f"{layer}_weight"].shape
                self.linears[layer] = nn.Linear(in_f, out_f)
            with torch.no_grad():
                for key, value in self.named_parameters():
                    value.copy_(torch.from_numpy(params[mithril_key(key)]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            lin = self.linears
            if name.startswith("mlp"):
                for i in range(MLP_DEPTH - 1):
                    x = torch.relu(lin[f"layer_{i}"](x))
                return lin[f"layer_{MLP_DEPTH - 1}"](x)
            for i in range(STACK_BLOCKS):
                x = self.block(x, f"block_{i}_")
            return x

        def block(self, x: torch.Tensor, p: str) -> torch.Tensor:
            lin = self.linears
            B, T, D = x.shape
            hd = D // HEADS
            h = layer_norm(x)
            q = lin[p + "query"](h).reshape(B, T, HEADS, hd).transpose(1, 2)
            k = lin[p + "key"](h).reshape(B, T, HEADS, hd).transpose(1, 2)
            v = lin[p + "value"](h).reshape(B, T, HEADS, hd).transpose(1, 2)
            scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            attn = torch.softmax(scores, dim=-1) @ v
            x2 = x + lin[p + "proj"](attn.transpose(1, 2).reshape(B, T, D))
            return x2 + lin[p + "fc2"](F.gelu(lin[p + "fc1"](layer_norm(x2))))

    def layer_norm(x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, correction=0)
        return (x - mean) / torch.sqrt(var + EPS)

    def mithril_key(key: str) -> str:
        return key.removeprefix("linears.").replace(".", "_")

    def make(module: Callable[[Any], Any], net: nn.Module):
        names = [mithril_key(k) for k, _ in net.named_parameters()]
        weights = [p for _, p in net.named_parameters()]

        def forward(x: Any) -> Any:
            with torch.no_grad():
                return module(x)

        def gradients(x: Any, g: Any) -> Any:
            out = module(x)
            found = torch.autograd.grad(out, weights, grad_outputs=g)
            return out.detach(), dict(zip(names, found, strict=True))

        return forward, gradients

    net = Net()
    return {
        "eager": make(net, net),
        "torch.compile": make(torch.compile(net), net),
    }


# -- jax -------------------------------------------------------------------------------
def jax_baselines(name: str, params: dict[str, np.ndarray], linears: list[str]):
    import jax
    import jax.numpy as jnp

    def linear(p: dict[str, Any], layer: str, x: Any) -> Any:
        return x @ p[f"{layer}_weight"].T + p[f"{layer}_bias"]

    def layer_norm(x: Any) -> Any:
        mean = x.mean(-1, keepdims=True)
        var = x.var(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + EPS)

    def block(p: dict[str, Any], x: Any, b: str) -> Any:
        B, T, D = x.shape
        hd = D // HEADS
        h = layer_norm(x)

        def heads(layer: str) -> Any:
            return (
                linear(p, b + layer, h).reshape(B, T, HEADS, hd).transpose(0, 2, 1, 3)
            )

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hd))
        attn = jax.nn.softmax(scores, axis=-1) @ v
        attn = attn.transpose(0, 2, 1, 3).reshape(B, T, D)
        x2 = x + linear(p, b + "proj", attn)
        mlp_out = jax.nn.gelu(linear(p, b + "fc1", layer_norm(x2)), approximate=False)
        return x2 + linear(p, b + "fc2", mlp_out)

    def forward(p: dict[str, Any], x: Any) -> Any:
        if name.startswith("mlp"):
            for i in range(MLP_DEPTH - 1):
                x = jax.nn.relu(linear(p, f"layer_{i}", x))
            return linear(p, f"layer_{MLP_DEPTH - 1}", x)
        for i in range(STACK_BLOCKS):
            x = block(p, x, f"block_{i}_")
        return x

    def gradients(p: dict[str, Any], x: Any, g: Any) -> Any:
        out, pullback = jax.vjp(lambda p: forward(p, x), p)
        return out, pullback(g)[0]

    weights = {k: jax.device_put(v) for k, v in params.items()}
    jit_forward, jit_gradients = jax.jit(forward), jax.jit(gradients)
    return {
        "jax.jit": (
            lambda x: jit_forward(weights, x),
            lambda x, g: jit_gradients(weights, x, g),
        )
    }


# -- mlx -------------------------------------------------------------------------------
def mlx_baselines(name: str, params: dict[str, np.ndarray], linears: list[str]):
    import mlx.core as mx

    def linear(p: dict[str, Any], layer: str, x: Any) -> Any:
        return x @ p[f"{layer}_weight"].T + p[f"{layer}_bias"]

    def layer_norm(x: Any) -> Any:
        mean = mx.mean(x, axis=-1, keepdims=True)
        var = mx.var(x, axis=-1, keepdims=True)
        return (x - mean) / mx.sqrt(var + EPS)

    def gelu(x: Any) -> Any:
        return x * (1 + mx.erf(x / math.sqrt(2.0))) / 2

    def block(p: dict[str, Any], x: Any, b: str) -> Any:
        B, T, D = x.shape
        hd = D // HEADS
        h = layer_norm(x)

        def heads(layer: str) -> Any:
            out = linear(p, b + layer, h).reshape(B, T, HEADS, hd)
            return out.transpose(0, 2, 1, 3)

        q, k, v = heads("query"), heads("key"), heads("value")
        scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(hd))
        attn = mx.softmax(scores, axis=-1) @ v
        attn = attn.transpose(0, 2, 1, 3).reshape(B, T, D)
        x2 = x + linear(p, b + "proj", attn)
        return x2 + linear(p, b + "fc2", gelu(linear(p, b + "fc1", layer_norm(x2))))

    def forward(p: dict[str, Any], x: Any) -> Any:
        if name.startswith("mlp"):
            for i in range(MLP_DEPTH - 1):
                x = mx.maximum(linear(p, f"layer_{i}", x), 0)
            return linear(p, f"layer_{MLP_DEPTH - 1}", x)
        for i in range(STACK_BLOCKS):
            x = block(p, x, f"block_{i}_")
        return x

    keys = list(params)

    def gradients(p: dict[str, Any], x: Any, g: Any) -> Any:
        def differentiable(*values: Any) -> list[Any]:
            return [forward(dict(zip(keys, values, strict=True)), x)]

        (out,), found = mx.vjp(differentiable, [p[k] for k in keys], [g])
        return out, dict(zip(keys, found, strict=True))

    weights = {k: mx.array(v) for k, v in params.items()}
    compiled_forward, compiled_gradients = mx.compile(forward), mx.compile(gradients)

    def run_forward(x: Any) -> Any:
        out = compiled_forward(weights, x)
        mx.eval(out)
        return out

    def run_gradients(x: Any, g: Any) -> Any:
        out, found = compiled_gradients(weights, x, g)
        mx.eval(out, found)
        return out, found

    return {"mx.compile": (run_forward, run_gradients)}


BASELINES = {"torch": torch_baselines, "jax": jax_baselines, "mlx": mlx_baselines}


def synchronize(backend_name: str) -> Callable[[Any], Any]:
    if backend_name == "jax":
        import jax

        return jax.block_until_ready
    if backend_name == "mlx":
        import mlx.core as mx

        def wait(value: Any) -> Any:
            mx.eval(value)
            return value

        return wait
    return lambda value: value


def bench_backend(backend_name: str, rounds: int) -> list[tuple]:
    backend = ml.backend(backend_name)
    sync = synchronize(backend_name)

    def run(fn: Callable[..., Any], *args: Any) -> Any:
        return sync(fn(*args))

    rows = []
    for model_name, (model, shape, linears) in models().items():
        pm = ml.compile(model, backend, shapes={"input": shape}, data_keys={"input"})
        params = pm.randomize_params(seed=0)
        np_params = {k: backend.to_numpy(v) for k, v in params.items()}
        rng = np.random.default_rng(1)
        x = backend.array(rng.standard_normal(shape).astype(np.float32))
        data = {"input": x}
        out_shape = tuple(backend.array_info(pm.evaluate(params, data)["output"])[0])
        g = backend.array(rng.standard_normal(out_shape).astype(np.float32))
        seed = {"output": g}

        variants = {"mithril jit": pm}
        if backend_name == "torch":
            variants["mithril no-jit"] = ml.compile(
                model, backend, shapes={"input": shape}, data_keys={"input"}, jit=False
            )
        baselines = BASELINES[backend_name](model_name, np_params, linears)

        # Same computation before timing: outputs and every gradient.
        for variant_name, variant in variants.items():
            ours_fwd = backend.to_numpy(variant.evaluate(params, data)["output"])
            ours_out, ours_grads = variant.evaluate(params, data, seed)
            ours_out = backend.to_numpy(ours_out["output"])
            for base_name, (forward, gradients) in baselines.items():
                what = f"{backend_name} {model_name}: {variant_name} vs {base_name}"
                ref_fwd = backend.to_numpy(forward(x))
                ref_out, ref_grads = gradients(x, g)
                check_close(what, ours_fwd, ref_fwd, 1e-4, 1e-5)
                check_close(what, ours_out, backend.to_numpy(ref_out), 1e-4, 1e-5)
                if set(ref_grads) != set(ours_grads):
                    msg = f"{what}: gradient keys differ"
                    raise AssertionError(msg)
                for key, value in ref_grads.items():
                    ours_grad = backend.to_numpy(ours_grads[key])
                    ref_grad = backend.to_numpy(value)
                    check_close(f"{what}: d/d{key}", ours_grad, ref_grad, 1e-3, 1e-4)

        forwards = {
            name: partial(run, v.evaluate, params, data) for name, v in variants.items()
        }
        forwards |= {name: partial(run, f, x) for name, (f, _) in baselines.items()}
        backwards = {
            name: partial(run, v.evaluate, params, data, seed)
            for name, v in variants.items()
        }
        backwards |= {name: partial(run, f, x, g) for name, (_, f) in baselines.items()}
        for pass_name, fns in (("evaluate", forwards), ("gradients", backwards)):
            times = compare(fns, rounds)
            for base_name in baselines:
                for variant in variants:
                    if variant == "mithril no-jit" and base_name != "eager":
                        continue
                    rows.append(
                        (
                            backend_name,
                            model_name,
                            pass_name,
                            variant,
                            times[variant],
                            base_name,
                            times[base_name],
                        )
                    )
    return rows


def print_rows(rows: list[tuple]) -> None:
    header = (
        f"{'backend':<7} {'model':<16} {'pass':<9} {'mithril':<14} {'us':>8}  "
        f"{'hand-written':<14} {'us':>8}  {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for backend, model, pass_name, variant, ours, base, ref in rows:
        ratio = ours / ref
        flag = "" if ratio <= 1.05 else "  > 1.05"
        print(
            f"{backend:<7} {model:<16} {pass_name:<9} {variant:<14} "
            f"{ours * 1e6:>8.1f}  {base:<14} {ref * 1e6:>8.1f}  {ratio:>6.3f}{flag}"
        )


def limit_threads(threads: int, backends: list[str]) -> None:
    # Before the frameworks are imported: their thread pools read these once.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'}"
        + f" intra_op_parallelism_threads={threads}"
    )
    if "torch" in backends:
        import torch

        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="torch,jax,mlx")
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per framework (default: each framework's own default); "
        "1 gives steadier figures on a shared machine",
    )
    args = parser.parse_args()
    backends = [name.strip() for name in args.backends.split(",")]
    if args.threads is not None:
        limit_threads(args.threads, backends)
    rounds = 4 if args.quick else 15
    warnings.simplefilter("ignore", UserWarning)  # torch.compile's chatter
    rows = []
    for name in backends:
        rows += bench_backend(name, rounds)
    versions = ", ".join(f"{name} {framework_version(name)}" for name in backends)
    threads = args.threads if args.threads is not None else "framework default"
    print(f"# {versions}; threads: {threads}; {os.cpu_count()} CPUs")
    print_rows(rows)


def framework_version(backend_name: str) -> str:
    from importlib.metadata import version

    return version({"mlx": "mlx", "jax": "jax", "torch": "torch"}[backend_name])


if __name__ == "__main__":
    main()
