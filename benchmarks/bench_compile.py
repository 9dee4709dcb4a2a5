"""Build + compile time of GPT on the NumPy backend as the depth grows (issue #13).

GPT with n_embd 64, 2 heads, vocab 256, block 64, at L = 4, 12, 24, 48 layers; each
build runs in a fresh process (best of ``--repeat``). Prints build, compile and total
seconds per depth, then the growth slope from L=12 to L=48 on a log-log scale
(1.0 is linear) and the time of ``import mithril_core``.

Targets: L=12 total < 0.3 s; slope <= 1.05; import < 0.15 s.

Run: python benchmarks/bench_compile.py [--repeat 3] [--depths 4 12 24 48]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

_CHILD = """
import gc, json, sys, time
import mithril_core as ml
from mithril_core.models import gpt2
n_layer = int(sys.argv[1])
backend = ml.NumpyBackend()
gc.collect()
start = time.perf_counter()
model = gpt2(vocab_size=256, block_size=64, n_layer=n_layer, n_head=2, n_embd=64)
built = time.perf_counter()
pm = ml.compile(model, backend, shapes={"input": [1, 64]}, data_keys={"input"})
done = time.perf_counter()
print(json.dumps({"build": built - start, "compile": done - built,
                  "nodes": len(pm.graph.nodes)}))
"""

_IMPORT = """
import time
start = time.perf_counter()
import mithril_core
print(time.perf_counter() - start)
"""


def run_child(n_layer: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(n_layer)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def import_time(repeat: int) -> float:
    times = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", _IMPORT], capture_output=True, text=True, check=True
        ).stdout
        times.append(float(out.strip()))
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 12, 24, 48])
    args = parser.parse_args()
    print(f"{'layers':>6} {'nodes':>6} {'build s':>8} {'compile s':>10} {'total s':>8}")
    totals: dict[int, float] = {}
    for depth in args.depths:
        runs = [run_child(depth) for _ in range(args.repeat)]
        best = min(runs, key=lambda r: r["build"] + r["compile"])
        totals[depth] = best["build"] + best["compile"]
        print(
            f"{depth:>6} {int(best['nodes']):>6} {best['build']:>8.3f} "
            f"{best['compile']:>10.3f} {totals[depth]:>8.3f}"
        )
    if 12 in totals and 48 in totals:
        slope = math.log(totals[48] / totals[12]) / math.log(4)
        print(f"growth slope L=12 -> L=48 (log-log): {slope:.3f} (target <= 1.05)")
    if 12 in totals:
        print(f"L=12 build + compile: {totals[12]:.3f} s (target < 0.3 s)")
    print(f"import mithril_core: {import_time(args.repeat):.3f} s (target < 0.15 s)")


if __name__ == "__main__":
    main()
