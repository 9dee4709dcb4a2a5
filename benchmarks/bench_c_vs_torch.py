"""C backend vs PyTorch eager on the CPU (issue #13 items 2-4).

Cases (float32; random weights, made once by PyTorch and shared through a file):

- ``resnet18-b1`` / ``resnet18-b8``: ResNet-18 inference, 224 x 224, batch 1 / 8;
- ``gpt2-4x256`` / ``gpt2-12x768``: GPT-2 inference, batch 1 x 128 tokens, 4 layers
  n_embd 256 n_head 4 / 12 layers n_embd 768 n_head 12, vocabulary 50257;
- ``train-resnet18``: ResNet-18 batch 8 at 64 x 64, forward + backward (output
  gradient all ones) + SGD step (lr 1e-3, no momentum);
- ``train-gpt2-4x256``: the same for the 4-layer GPT-2.

Each side of each case runs in a fresh process that imports only its own framework
(the C side never imports torch): it times the call (best over rounds of the mean of
several calls), writes its output for the parent to compare, and reports its peak
resident memory (``VmHWM`` of /proc/self/status at the end of the process, where
Linux has it: ``ru_maxrss`` also counts the parent's memory when it was forked; for
the C side, compile, weights and calls together). Threads: PyTorch's default
(``torch.get_num_threads()``) and the C backend's default (``CBackend(threads=None)``)
unless ``--c-threads`` / ``--torch-threads`` say otherwise. The machine may be shared:
repeat and take the best.

Each side runs ``--repeat`` times (default 3), alternating with the other side, and
keeps its best run.

Run: python benchmarks/bench_c_vs_torch.py [--quick] [--cases a,b] [--c-threads N]
     [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _timing import best_of  # noqa: E402

VOCAB = 50257
GPT = {
    "gpt2-4x256": {"n_layer": 4, "n_head": 4, "n_embd": 256},
    "gpt2-12x768": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}
TOKENS = 128
CASES = (
    "resnet18-b1",
    "resnet18-b8",
    "gpt2-4x256",
    "gpt2-12x768",
    "train-resnet18",
    "train-gpt2-4x256",
)
LR = 1e-3


def _spec(case: str) -> dict[str, Any]:
    """model kind, input shape, training flag and GPT config of ``case``."""
    train = case.startswith("train-")
    name = case.removeprefix("train-")
    if name.startswith("resnet18"):
        shape = (8, 3, 64, 64) if train else (int(name[-1]), 3, 224, 224)
        return {"kind": "resnet", "shape": shape, "train": train}
    return {"kind": "gpt", "shape": (1, TOKENS), "train": train, "gpt": GPT[name]}


def _gpt_config(sizes: dict[str, int]) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB,
        "n_positions": 1024,
        **sizes,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


def _rounds(spec: dict[str, Any], quick: bool) -> tuple[int, int]:
    big = spec["kind"] == "gpt" and spec["gpt"]["n_embd"] == 768
    if quick:
        return (2, 1) if big or spec["shape"][0] == 8 else (3, 2)
    return (3, 2) if big else (5, 3)


# -- weights and data (parent process) -------------------------------------------------


def make_inputs(case: str, workdir: Path) -> None:
    """Weights (PyTorch's initialisation, seed 0) and input data for ``case``."""
    import torch

    spec = _spec(case)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    if spec["kind"] == "resnet":
        from bench_models_resnet import TorchResNet18

        model = TorchResNet18()
        data = rng.standard_normal(spec["shape"]).astype(np.float32)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(**_gpt_config(spec["gpt"])))
        data = rng.integers(0, VOCAB, spec["shape"]).astype(np.int64)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    np.savez(workdir / f"{case}.weights.npz", **state)
    np.save(workdir / f"{case}.input.npy", data)


# -- one side (child process) ----------------------------------------------------------


def run_torch(case: str, workdir: Path, quick: bool, threads: int) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    spec = _spec(case)
    weights = dict(np.load(workdir / f"{case}.weights.npz"))
    data = torch.from_numpy(np.load(workdir / f"{case}.input.npy"))
    if spec["kind"] == "resnet":
        from bench_models_resnet import TorchResNet18

        model = TorchResNet18()

        def call() -> torch.Tensor:
            return model(data)
    else:
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(**_gpt_config(spec["gpt"])))

        def call() -> torch.Tensor:
            return model(data).logits

    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    repeat, number = _rounds(spec, quick)
    result: dict[str, Any] = {"threads": torch.get_num_threads()}
    if not spec["train"]:
        model.eval()

        def forward() -> torch.Tensor:
            with torch.no_grad():
                return call()

        np.save(workdir / f"{case}.torch.npy", forward().numpy())
        result["seconds"] = best_of(forward, repeat, number)
    else:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        # GPT-2: a block's weight (transformers ties lm_head to the embedding).
        first = (
            model.conv1.weight
            if spec["kind"] == "resnet"
            else model.transformer.h[0].mlp.c_fc.weight
        )
        out = call()
        out.backward(torch.ones_like(out))
        np.save(workdir / f"{case}.torch.npy", out.detach().numpy())
        np.save(workdir / f"{case}.torch.grad.npy", first.grad.numpy())

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            y = call()
            y.backward(torch.ones_like(y))
            optimizer.step()

        result["seconds"] = best_of(step, repeat, number)
    return result


def run_c(case: str, workdir: Path, quick: bool, threads: int) -> dict[str, Any]:
    import mithril_core as ml
    from mithril_core.models import gpt2, resnet18
    from mithril_core.models.gpt import gpt2_state_dict

    spec = _spec(case)
    options = {"threads": threads} if threads else {}
    backend = ml.backend("c", dtype=ml.float32, **options)
    weights = dict(np.load(workdir / f"{case}.weights.npz"))
    data = np.load(workdir / f"{case}.input.npy")
    start = time.perf_counter()
    if spec["kind"] == "resnet":
        model, out_key = resnet18(1000), "output"
    else:
        g = spec["gpt"]
        model = gpt2(VOCAB, 1024, g["n_layer"], g["n_head"], g["n_embd"])
        out_key = "logits"
        weights = gpt2_state_dict(weights)
    pm = ml.compile(
        model,
        backend,
        shapes={"input": list(spec["shape"])},
        data_keys={"input"},
        inference=not spec["train"],
    )
    params = pm.load_weights(weights)
    del weights
    inputs = {"input": data}
    pm.evaluate(params, inputs)
    result: dict[str, Any] = {
        "compile_s": time.perf_counter() - start,
        "threads": getattr(backend, "threads", 1),
    }
    repeat, number = _rounds(spec, quick)
    if not spec["train"]:
        out = pm.evaluate(params, inputs)[out_key]
        np.save(workdir / f"{case}.c.npy", out)
        result["seconds"] = best_of(lambda: pm.evaluate(params, inputs), repeat, number)
    else:
        seed = {out_key: np.ones(pm.evaluate(params, inputs)[out_key].shape, "f4")}
        first = (
            "conv1_weight"
            if spec["kind"] == "resnet"
            else "transformer_h_0_mlp_c_fc_weight"
        )
        out, grads = pm.evaluate(params, inputs, output_gradients=seed)
        np.save(workdir / f"{case}.c.npy", out[out_key])
        np.save(workdir / f"{case}.c.grad.npy", grads[first])

        def step() -> None:
            _, grads = pm.evaluate(params, inputs, output_gradients=seed)
            for key, grad in grads.items():
                if grad is not None:
                    np.multiply(grad, LR, out=grad)
                    np.subtract(params[key], grad, out=params[key])

        result["seconds"] = best_of(step, repeat, number)
    return result


def child(side: str, case: str, workdir: Path, quick: bool, threads: int) -> None:
    run = run_torch if side == "torch" else run_c
    result = run(case, workdir, quick, threads)
    result["maxrss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result))


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (its own address space; Linux's
    ``ru_maxrss`` keeps the parent's peak across fork and exec), else ru_maxrss."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- parent ----------------------------------------------------------------------------


def side(name: str, case: str, workdir: Path, args: argparse.Namespace) -> dict:
    threads = args.torch_threads if name == "torch" else args.c_threads
    command = [sys.executable, __file__, "--child", name, case, str(workdir)]
    command += ["--threads", str(threads)] + (["--quick"] if args.quick else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        msg = f"{case} ({name}) failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        raise RuntimeError(msg)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _best(kept: dict, new: dict) -> dict:
    return new if not kept or new["seconds"] < kept["seconds"] else kept


def _diff(workdir: Path, case: str, suffix: str) -> float:
    a = np.load(workdir / f"{case}.torch{suffix}.npy")
    b = np.load(workdir / f"{case}.c{suffix}.npy")
    scale = max(float(np.abs(a).max()), 1e-6)
    return float(np.abs(a - b).max()) / scale


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument(
        "--repeat", type=int, default=3, help="fresh processes per side, alternating"
    )
    parser.add_argument("--c-threads", type=int, default=0, help="0: the default")
    parser.add_argument("--torch-threads", type=int, default=0, help="0: the default")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, case, workdir = args.child
        child(name, case, Path(workdir), args.quick, args.threads)
        return
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    print(
        f"== C backend vs PyTorch eager, float32, CPU ({os.cpu_count()} CPUs); "
        "time per call, best of rounds; each side in a fresh process"
    )
    header = (
        f"{'case':<18} {'torch ms':>9} {'c ms':>9} {'c/torch':>8} {'thr t/c':>8} "
        f"{'rss torch MB':>12} {'rss c MB':>9} {'c compile s':>11} {'max rel diff':>12}"
    )
    print(header)
    with tempfile.TemporaryDirectory(prefix="bench_c_vs_torch-") as tmp:
        workdir = Path(tmp)
        for case in cases:
            make_inputs(case, workdir)
            # Sides alternate in fresh processes; each keeps its best run (the
            # machine may be shared: a burst of other work slows one run, not all).
            t, c = {}, {}
            for _ in range(args.repeat):
                t = _best(t, side("torch", case, workdir, args))
                c = _best(c, side("c", case, workdir, args))
            diff = _diff(workdir, case, "")
            note = ""
            if case.startswith("train-"):
                note = f" (grad {_diff(workdir, case, '.grad'):.1e})"
            print(
                f"{case:<18} {t['seconds'] * 1e3:>9.2f} {c['seconds'] * 1e3:>9.2f} "
                f"{c['seconds'] / t['seconds']:>8.3f} "
                f"{t['threads']:>4}/{c['threads']:<3} "
                f"{t['maxrss_mb']:>12.0f} {c['maxrss_mb']:>9.0f} "
                f"{c['compile_s']:>11.1f} {diff:>12.1e}{note}",
                flush=True,
            )
            for path in workdir.glob(f"{case}.*"):
                path.unlink()


if __name__ == "__main__":
    main()
