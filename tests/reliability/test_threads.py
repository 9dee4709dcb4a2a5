"""One compiled model evaluated from several threads at once gives the serial results
(issue #10, item 6), on every installed backend.

8 threads x 200 evaluates of an MLP, alternating forward and forward+gradients, each
with its own random input; every result is compared with the result of the same
input evaluated serially before the threads start. A shared workspace or pointer
table shows up as wrong numbers (another call's values), not as a crash.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import IOKey, Linear, Model, Relu, Tanh

THREADS = 8
CALLS = 200
BATCH, FEATURES = 4, 6


def mlp() -> Model:
    model = Model()
    model |= Linear(16)(input=IOKey("input"), output="h1")
    model |= Tanh()(input="h1", output="a1")
    model |= Linear(8)(input="a1", output="h2")
    model |= Relu()(input="h2", output="a2")
    model |= Linear(3)(input="a2", output=IOKey("output"))
    return model


def _numpy(backend: Any, result: dict[str, Any] | None) -> dict[str, np.ndarray]:
    return {k: np.array(backend.to_numpy(v)) for k, v in (result or {}).items()}


def test_concurrent_evaluates_match_serial(
    backend_name: str, make_backend: Callable[..., Any], tmp_path: Any, monkeypatch: Any
) -> None:
    monkeypatch.setenv("MITHRIL_C_CACHE", str(tmp_path / "c_cache"))
    backend = make_backend(backend_name, "float32")
    pm = ml.compile(
        mlp(), backend, shapes={"input": [BATCH, FEATURES]}, data_keys={"input"}
    )
    params = pm.randomize_params()
    rng = np.random.default_rng(0)
    total = THREADS * CALLS
    inputs = [
        backend.array(rng.standard_normal((BATCH, FEATURES)).astype(np.float32))
        for _ in range(total)
    ]
    seeds = [
        backend.array(rng.standard_normal((BATCH, 3)).astype(np.float32))
        for _ in range(total)
    ]

    def call(n: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        if n % 2:  # odd calls also take gradients
            out, grads = pm.evaluate(
                params, {"input": inputs[n]}, output_gradients={"output": seeds[n]}
            )
        else:
            out, grads = pm.evaluate(params, {"input": inputs[n]}), None
        return _numpy(backend, out), _numpy(backend, grads)

    serial = [call(n) for n in range(total)]
    results: list[Any] = [None] * total
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        try:
            start.wait()
            for i in range(CALLS):
                n = t * CALLS + i
                results[n] = call(n)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]

    wrong_forward = wrong_grads = 0
    for (out, grads), (want_out, want_grads) in zip(results, serial, strict=True):
        if not _close(out, want_out):
            wrong_forward += 1
        if not _close(grads, want_grads):
            wrong_grads += 1
    assert (wrong_forward, wrong_grads) == (0, 0), (
        f"{backend_name}: {wrong_forward}/{total} forwards and "
        f"{wrong_grads}/{total // 2} gradient sets differ from the serial results"
    )


def _close(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    # Not bit-exact: a BLAS may block differently under load; another call's values
    # (the failure this catches) differ by O(1).
    return got.keys() == want.keys() and all(
        got[k].shape == want[k].shape
        and np.allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
        for k in want
    )


@pytest.mark.parametrize("backend_name", ["c"])
def test_c_dropout_models_serialise_calls(
    backend_name: str, make_backend: Callable[..., Any], tmp_path: Any, monkeypatch: Any
) -> None:
    """A model with dropout keeps an RNG state in its workspace: its calls are
    serialised, so threads draw the same masks as the same calls made serially."""
    pytest.importorskip("mithril_c")
    from mithril_core import models as mm

    monkeypatch.setenv("MITHRIL_C_CACHE", str(tmp_path / "c_cache"))
    model = Model()
    model |= mm.Dropout(0.5)(input=IOKey("input"), output=IOKey("output"))
    backend = make_backend(backend_name, "float32")
    x = np.ones((64,), dtype=np.float32)

    def masks(parallel: bool) -> list[bytes]:
        pm = ml.compile(model, backend, shapes={"input": [64]}, data_keys={"input"})
        found: list[bytes] = []
        lock = threading.Lock()

        def run() -> None:
            for _ in range(50):
                out = pm.evaluate({}, {"input": x})["output"]
                with lock:
                    found.append((out != 0).tobytes())

        if parallel:
            threads = [threading.Thread(target=run) for _ in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        else:
            for _ in range(4):
                run()
        return found

    serial, parallel = masks(False), masks(True)
    assert len(set(serial)) == len(serial)  # every call draws a fresh mask
    assert sorted(parallel) == sorted(serial)


@pytest.mark.parametrize("backend_name", ["c"])
def test_c_threads_meeting_new_shapes_build_once(
    backend_name: str, make_backend: Callable[..., Any], tmp_path: Any, monkeypatch: Any
) -> None:
    """Shapes known only at evaluate: threads that bring new shapes at once get the
    code generated and built once per shape, and the right numbers."""
    pytest.importorskip("mithril_c")
    from mithril_c import _build

    monkeypatch.setenv("MITHRIL_C_CACHE", str(tmp_path / "c_cache"))
    backend = make_backend(backend_name, "float32")
    pm = ml.compile(
        mlp(), backend, shapes={"input": [None, FEATURES]}, data_keys={"input"}
    )
    params = pm.randomize_params()
    weights = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    rng = np.random.default_rng(1)
    batches = [1, 2, 3] * 4
    data = [rng.standard_normal((n, FEATURES)).astype(np.float32) for n in batches]
    compiled = _build.STATS.compiled
    results: list[Any] = [None] * len(data)
    start = threading.Barrier(len(data))

    def worker(n: int) -> None:
        start.wait()
        results[n] = pm.evaluate(params, {"input": data[n]})["output"]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(len(data))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _build.STATS.compiled - compiled <= 3  # one build per batch size
    for x, out in zip(data, results, strict=True):
        assert out is not None and out.shape == (x.shape[0], 3)
        expected = _reference(weights, x.astype(np.float64))
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def _reference(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The MLP in float64 NumPy: linear, tanh, linear, relu, linear."""
    for n, activation in enumerate((np.tanh, lambda h: np.maximum(h, 0), None)):
        x = x @ weights[f"linear_{n}_weight"].T + weights[f"linear_{n}_bias"]
        if activation is not None:
            x = activation(x)
    return x
