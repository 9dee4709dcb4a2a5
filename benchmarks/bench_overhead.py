"""Fixed per-call overhead of ``evaluate`` on a one-op model (issue #13 item 5).

``Sine`` on 4 floats, compiled for each backend given; the time of one evaluate minus
the time of the op itself called directly (``np.sin`` on the same array: for 4 floats
the kernel is a few nanoseconds on every backend). Best of ``--repeat`` rounds of
``--number`` calls. Targets: NumPy <= 5 us, C <= 5 us.

Run: python benchmarks/bench_overhead.py [--backends numpy,c] [--repeat 30]
"""

from __future__ import annotations

import argparse

import numpy as np
from _timing import best_of

import mithril_core as ml
from mithril_core.models import IOKey, Model, Sine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="numpy,c")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    model = Model()
    model |= Sine()(input="input", output=IOKey("output"))
    x = np.linspace(-1.0, 1.0, 4, dtype=np.float32)
    kernel = best_of(lambda: np.sin(x), args.repeat, args.number)
    print(f"np.sin on 4 floats: {kernel * 1e6:.2f} us")
    for name in args.backends.split(","):
        backend = ml.backend(name)
        pm = ml.compile(model, backend, shapes={"input": [4]}, data_keys={"input"})
        data = {"input": backend.array(x)}
        out = pm.evaluate({}, data)["output"]
        np.testing.assert_allclose(backend.to_numpy(out), np.sin(x), rtol=1e-6)
        total = best_of(
            lambda pm=pm, data=data: pm.evaluate({}, data), args.repeat, args.number
        )
        print(
            f"{name:>6}: evaluate {total * 1e6:.2f} us, overhead "
            f"{(total - kernel) * 1e6:.2f} us (target <= 5 us)"
        )


if __name__ == "__main__":
    main()
