"""The C backend's thread count: ``CBackend(threads=...)``, ``MITHRIL_C_THREADS`` and
the physical-core default; and that parallel kernels give the one-thread results
(forward and gradients) on conv, pooling, matmul, softmax, reductions, attention,
strided copies and fused element-wise loops, each big enough to be split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mithril_c")

import mithril_core as ml  # noqa: E402
from mithril_core import models as mm  # noqa: E402
from mithril_core.errors import CompileError  # noqa: E402
from mithril_core.models import IOKey, Model  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> None:
    path = tmp_path_factory.getbasetemp() / "mithril_c_cache"
    monkeypatch.setenv("MITHRIL_C_CACHE", str(path))


def _conv() -> Model:
    model = Model()
    model |= mm.Convolution2D(16, 3, padding=1)(input=IOKey("input"), output="c1")
    model |= mm.Relu()(input="c1", output="r1")
    model |= mm.MaxPool2D(2)(input="r1", output="p1")
    model |= mm.Convolution2D(32, 3, stride=2, padding=1)(input="p1", output="c2")
    model |= mm.AvgPool2D(2)(input="c2", output="p2")
    model |= mm.Sigmoid()(input="p2", output=IOKey("output"))
    return model


def _matmul() -> Model:
    model = Model()
    model |= mm.Linear(384)(input=IOKey("input"), output="h")
    model |= mm.Gelu()(input="h", output="a")
    model |= mm.Linear(256)(input="a", output=IOKey("output"))
    return model


def _softmax() -> Model:
    model = Model()
    model |= mm.Softmax(axis=-1)(input=IOKey("input"), output="s")
    model |= mm.LogSoftmax(axis=1)(input="s", output=IOKey("output"))
    return model


def _reductions() -> Model:
    model = Model()
    x = IOKey("input")
    model |= mm.Sum(axis=0)(input=x, output=IOKey("column_sums"))
    model |= mm.Mean(axis=-1)(input=x, output=IOKey("row_means"))
    model |= mm.Variance(axis=(0, 2))(input=x, output=IOKey("variance"))
    model |= mm.Max(axis=1)(input=x, output=IOKey("maximum"))
    return model


def _elementwise() -> Model:
    x = IOKey("input")
    y = (mm.Tanh()(x * 0.5 + 1.0) * x - mm.Exponential()(x) * 0.1) / 3.0
    model = Model()
    model |= mm.Sigmoid()(input=y, output=IOKey("output"))
    return model


def _attention() -> Model:
    model = Model()
    q, k, v = IOKey("query"), IOKey("key"), IOKey("value")
    model |= mm.ScaledDotProduct(is_causal=True)(
        query=q, key=k, value=v, output="attention"
    )
    model |= mm.Transpose(axes=(0, 2, 1, 3))(input="attention", output="swapped")
    model |= mm.Tanh()(input="swapped", output=IOKey("output"))
    return model


CASES: dict[str, tuple[Callable[[], Model], dict[str, list[int]]]] = {
    "conv_pool": (_conv, {"input": [4, 8, 32, 32]}),
    "matmul": (_matmul, {"input": [64, 256]}),
    "softmax": (_softmax, {"input": [8, 64, 256]}),
    "reductions": (_reductions, {"input": [32, 64, 128]}),
    "elementwise": (_elementwise, {"input": [256, 512]}),
    "attention": (
        _attention,
        {"query": [2, 4, 128, 32], "key": [2, 4, 128, 32], "value": [2, 4, 128, 32]},
    ),
}


def _run(case: str, threads: int) -> tuple[dict[str, Any], dict[str, Any]]:
    build, shapes = CASES[case]
    backend = ml.backend("c", dtype=ml.float32, threads=threads)
    data_keys = set(shapes)
    pm = ml.compile(build(), backend, shapes=shapes, data_keys=data_keys)
    rng = np.random.default_rng(1)
    params = pm.randomize_params(seed=0)
    data = {
        k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()
    }
    for key in data_keys:
        params.pop(key, None)
    outputs = pm.evaluate(params, data)
    seeds = {
        k: rng.standard_normal(v.shape).astype(np.float32)
        for k, v in outputs.items()
        if v.dtype.kind == "f"
    }
    _, grads = pm.evaluate(params, data, output_gradients=seeds)
    return outputs, grads


def _close(got: np.ndarray, want: np.ndarray, key: str) -> None:
    # Sums are never split over threads, but a matrix product split into blocks may
    # round differently (OpenBLAS picks kernels by block size): float32 rounding of
    # the array's scale.
    scale = max(float(np.abs(want).max()), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6 * scale, err_msg=key)


@pytest.mark.parametrize("case", sorted(CASES))
def test_threads_give_the_serial_results(case: str) -> None:
    serial_out, serial_grads = _run(case, 1)
    out, grads = _run(case, 4)
    assert out.keys() == serial_out.keys() and grads.keys() == serial_grads.keys()
    for key, want in {**serial_out, **serial_grads}.items():
        got = out[key] if key in out else grads[key]
        if want is None:
            assert got is None
            continue
        _close(got, want, key)


def test_parallel_loops_are_generated_only_for_big_work() -> None:
    big = ml.compile(_elementwise(), ml.backend("c"), shapes={"input": [256, 512]}).code
    small = ml.compile(_elementwise(), ml.backend("c"), shapes={"input": [8, 8]}).code
    assert "#pragma omp parallel for" in big
    assert "#pragma omp" not in small


def test_thread_count_from_argument_environment_and_cores(monkeypatch: Any) -> None:
    from mithril_c.backend import physical_cores

    monkeypatch.delenv("MITHRIL_C_THREADS", raising=False)
    assert ml.backend("c").threads == physical_cores() >= 1
    assert ml.backend("c", threads=3).threads == 3
    monkeypatch.setenv("MITHRIL_C_THREADS", "5")
    assert ml.backend("c").threads == 5
    assert ml.backend("c", threads=2).threads == 2
    monkeypatch.setenv("MITHRIL_C_THREADS", "many")
    with pytest.raises(CompileError, match="MITHRIL_C_THREADS"):
        ml.backend("c")
    with pytest.raises(CompileError, match="threads"):
        ml.backend("c", threads=0)


def test_two_thread_counts_in_one_process() -> None:
    """Each backend's count applies to its own calls (per calling thread in C)."""
    results = [_run("matmul", threads) for threads in (1, 2, 1, 3)]
    for out, grads in results[1:]:
        _close(out["output"], results[0][0]["output"], "output")
        for key, want in results[0][1].items():
            _close(grads[key], want, key)
