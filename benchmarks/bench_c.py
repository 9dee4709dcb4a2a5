"""C backend vs NumPy backend (issue: C backend).

(a) forward and forward+backward of a 3x256 MLP (batch 64, input 256), float32;
(b) an element-wise chain of 20 ops on 1M float32s, forward and forward+backward.

Prints time per call and the ratio C / NumPy (below 1: C is faster). Targets: MLP
ratio <= 1.0; chain forward at least 3x faster (ratio <= 0.33).

Run: python benchmarks/bench_c.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _models import mlp  # noqa: E402
from _timing import best_of  # noqa: E402

import mithril_core as ml  # noqa: E402
from mithril_core import models as mm  # noqa: E402
from mithril_core.models import IOKey, Model  # noqa: E402

BATCH, WIDTH = 64, 256
CHAIN = 1_000_000


def chain(length: int = 20) -> Model:
    """add, multiply, subtract, divide, maximum, minimum, relu, abs, negate, tanh,
    sigmoid ...: a typical activation/normalisation tail, same shape throughout."""
    x = IOKey("input")
    steps = [
        lambda v: v * 0.5,
        lambda v: v + x,
        mm.Relu(),
        lambda v: v - 0.25,
        mm.Absolute(),
        lambda v: v * x,
        lambda v: v / 3.0,
        mm.Negate(),
        lambda v: v + 1.0,
        mm.Tanh(),
        lambda v: v * v,
        lambda v: v + x,
        mm.Sigmoid(),
        lambda v: v - x,
        lambda v: v * 2.0,
        mm.Relu(),
        lambda v: v + 0.5,
        lambda v: v * x,
        mm.Absolute(),
        lambda v: v + 1.0,
    ]
    assert len(steps) == length
    y = x
    for step in steps:
        y = step(y)
    model = Model()
    model |= mm.Buffer()(input=y, output=IOKey("output"))
    return model


CASES: dict[str, tuple[Callable[[], Model], list[int], set[str]]] = {
    f"mlp 3x{WIDTH} batch {BATCH}": (lambda: mlp(WIDTH, 3), [BATCH, WIDTH], {"input"}),
    "elementwise chain 20 x 1M": (chain, [CHAIN], set()),
}


def compiled(case: str, backend_name: str) -> tuple[Any, Any, Any, Any]:
    model_fn, shape, data_keys = CASES[case]
    backend = ml.backend(backend_name, dtype=ml.float32)
    pm = ml.compile(model_fn(), backend, shapes={"input": shape}, data_keys=data_keys)
    params = pm.randomize_params(seed=0)
    params.pop("input", None)
    data = {"input": backend.array(np.random.default_rng(0).standard_normal(shape))}
    out = pm.evaluate(params, data)["output"]
    grads = {"output": backend.array(np.ones(out.shape))}
    return pm, params, data, grads


def time_one(case: str, backend_name: str) -> None:
    """Times of one backend, printed as JSON (run in its own process)."""
    pm, params, data, grads = compiled(case, backend_name)
    number = 200 if case.startswith("mlp") else 5
    forward = best_of(partial(pm.evaluate, params, data), number=number)
    both = best_of(
        partial(pm.evaluate, params, data, output_gradients=grads), number=number
    )
    print(json.dumps([forward, both]))


def measure(case: str) -> None:
    # Each backend is timed in a fresh process (NumPy's and the C backend's OpenBLAS
    # thread pools would compete in one), before this process starts either pool.
    times = {}
    for name in ("numpy", "c"):
        result = subprocess.run(
            [sys.executable, __file__, "--time", case, name],
            capture_output=True,
            text=True,
            check=True,
        )
        times[name] = json.loads(result.stdout.strip().splitlines()[-1])
    outputs = [
        pm.evaluate(params, data)["output"]
        for pm, params, data, _ in (compiled(case, n) for n in ("numpy", "c"))
    ]
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    for i, what in enumerate(("forward", "forward+backward")):
        numpy_t, c_t = times["numpy"][i], times["c"][i]
        print(
            f"{case:<28} {what:<17} numpy {numpy_t * 1e6:10.1f} us   "
            f"c {c_t * 1e6:10.1f} us   c/numpy {c_t / numpy_t:5.2f}  "
            f"(c {numpy_t / c_t:4.1f}x faster)"
        )


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--time":
        time_one(sys.argv[2], sys.argv[3])
        return
    print("== C backend vs NumPy backend (float32, best of 7, one process each)")
    for case in CASES:
        measure(case)


if __name__ == "__main__":
    main()
