"""Data-parallel step time on CPU devices: unsharded vs 2- and 4-way (issue: scale).

One training step = jitted forward + backward (``evaluate`` with gradients) of an MLP
with a mean-squared-error loss, plus the SGD update, for a fixed global batch.

* JAX: runs in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
  (4 host "devices"); ``JaxBackend(device_mesh=(n,))`` splits the batch over the first
  n of them, parameters replicated, gradients all-reduced by XLA.
* Torch (``--torch``): 2 gloo processes via ``run_parallel``, DTensor data parallel
  (eager), vs one unsharded eager process.

Be honest about what this measures: the forced host devices and the processes share
the same CPU cores (and XLA's CPU thread pool), so there is no extra compute to gain;
the numbers show the *overhead* of partitioning and all-reduces, not a speed-up. Real
scaling needs real devices (GPUs / TPUs / hosts).

Run: python benchmarks/bench_sharding.py [--quick] [--torch]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BATCH, IN, HIDDEN, OUT = 256, 512, 2048, 512
LR = 1e-3


def mlp_with_loss(hidden: int):
    from mithril_core.models import IOKey, Linear, Mean, Model, Multiply, Relu, Subtract

    model = Model()
    model |= Linear(hidden)(input="input", output="h0")
    model |= Relu()(input="h0", output="h1")
    model |= Linear(hidden)(input="h1", output="h2")
    model |= Relu()(input="h2", output="h3")
    model |= Linear(OUT)(input="h3", output=IOKey("output"))
    model |= Subtract()(left="output", right="target", output="diff")
    model |= Multiply()(left="diff", right="diff", output="square")
    model |= Mean()(input="square", output=IOKey("loss"))
    return model


def step_time(backend, shardings, hidden, steps, jit=True):
    """Median seconds per training step (after 2 warm-up steps) and the last loss."""
    import numpy as np

    import mithril_core as ml

    pm = ml.compile(
        mlp_with_loss(hidden),
        backend,
        shapes={"input": [BATCH, IN], "target": [BATCH, OUT]},
        data_keys={"input", "target"},
        jit=jit,
        shardings=shardings,
    )
    rng = np.random.default_rng(0)
    specs = shardings or {}

    def put(key, value):
        return backend.array(value, sharding=specs.get(key))

    params = {k: put(k, backend.to_numpy(v)) for k, v in pm.randomize_params().items()}
    data = {
        "input": put("input", rng.standard_normal((BATCH, IN))),
        "target": put("target", rng.standard_normal((BATCH, OUT))),
    }
    seed = {"loss": backend.ones(())}
    times = []
    loss = None
    for _ in range(steps + 2):
        start = time.perf_counter()
        outputs, grads = pm.evaluate(params, data, seed)
        params = {k: params[k] - LR * grads[k] for k in params}
        loss = float(backend.to_numpy(outputs["loss"]))  # waits for the step
        times.append(time.perf_counter() - start)
    return float(np.median(times[2:])), loss


def jax_child(hidden: int, steps: int) -> None:
    import jax

    import mithril_core as ml

    rows = []
    plain = ml.JaxBackend(dtype=ml.float32)
    seconds, loss = step_time(plain, None, hidden, steps)
    rows.append({"layout": "unsharded (1 device)", "s": seconds, "loss": loss})
    for n in (2, 4):
        backend = ml.JaxBackend(dtype=ml.float32, device_mesh=(n,))
        shardings = {"input": ("data", None), "target": ("data", None)}
        seconds, loss = step_time(backend, shardings, hidden, steps)
        rows.append({"layout": f"data parallel x{n}", "s": seconds, "loss": loss})
    print("ROWS " + json.dumps({"devices": len(jax.devices()), "rows": rows}))


def torch_worker(hidden: int, steps: int):
    import torch

    import mithril_core as ml

    torch.set_num_threads(1)
    backend = ml.TorchBackend(dtype=ml.float32, device_mesh=(2,))
    shardings = {"input": ("data", None), "target": ("data", None)}
    return step_time(backend, shardings, hidden, steps, jit=False)


def run_torch(hidden: int, steps: int) -> None:
    import torch
    from mithril_torch.distributed import run_parallel

    import mithril_core as ml

    print(f"\n== Torch, eager, global batch {BATCH}, MLP {IN}-{hidden}-{hidden}-{OUT}")
    seconds, loss = step_time(
        ml.TorchBackend(dtype=ml.float32), None, hidden, steps, jit=False
    )
    print(
        f"{'unsharded (1 process, ' + str(torch.get_num_threads()) + ' threads)':<42}"
        f" {seconds * 1e3:9.1f} ms/step  loss {loss:.6f}"
    )
    results = run_parallel(torch_worker, 2, hidden, steps)
    seconds = max(r[0] for r in results)
    print(
        f"{'DTensor data parallel x2 (1 thread each)':<42} {seconds * 1e3:9.1f} ms/step"
        f"  loss {results[0][1]:.6f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller MLP, fewer steps")
    parser.add_argument("--torch", action="store_true", help="also Torch DTensor x2")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    hidden, steps = (512, 5) if args.quick else (HIDDEN, 10)
    if args.child:
        jax_child(hidden, steps)
        return
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
        + " --xla_force_host_platform_device_count=4",
    }
    command = [sys.executable, __file__, "--child"] + (
        ["--quick"] if args.quick else []
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(done.stdout, done.stderr, file=sys.stderr)
        raise SystemExit(done.returncode)
    line = next(x for x in done.stdout.splitlines() if x.startswith("ROWS "))
    found = json.loads(line[len("ROWS ") :])
    print(
        f"== JAX, jitted, global batch {BATCH}, MLP {IN}-{hidden}-{hidden}-{OUT} "
        f"(fwd+bwd+SGD), {found['devices']} forced host devices on "
        f"{os.cpu_count()} CPU cores"
    )
    base = found["rows"][0]["s"]
    for row in found["rows"]:
        print(
            f"{row['layout']:<42} {row['s'] * 1e3:9.1f} ms/step  "
            f"x{base / row['s']:.2f} vs unsharded  loss {row['loss']:.6f}"
        )
    print(
        "(the host devices share the same cores: a ratio below 1 is the cost of "
        "partitioning + all-reduce, not a property of real multi-device runs)"
    )
    if args.torch:
        run_torch(hidden, steps)


if __name__ == "__main__":
    main()
