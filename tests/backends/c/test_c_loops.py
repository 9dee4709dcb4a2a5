"""Which generated loops are split over OpenMP threads: only those GCC can still
vectorise once OpenMP outlines them (few arrays), so that splitting never makes a loop
slower than its serial form."""

from __future__ import annotations

import re

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import IOKey, Model, Sigmoid, Tanh

pytest.importorskip("mithril_c")


def _chain() -> Model:
    model = Model()
    x = IOKey("input")
    v = Tanh()(x * 0.5 + x)
    v = Sigmoid()(v * v + x)
    v = Tanh()(v - x) * x + 1.0
    model |= Sigmoid()(v, output=IOKey("output"))
    return model


def _function(code: str, name: str) -> str:
    match = re.search(rf"int {name}\(.*?\n}}\n", code, re.S)
    assert match is not None, name
    return match.group(0)


def test_a_loop_writing_many_arrays_stays_serial_and_is_right():
    backend = ml.CBackend(threads=2)
    n = 300_000
    pm = ml.compile(_chain(), backend, shapes={"input": [n]})
    code = pm.code
    # The forward reads one array and writes one: split. The training forward also
    # stores every intermediate the backward reads: serial.
    assert "#pragma omp parallel for" in _function(code, "mc_forward")
    assert "#pragma omp" not in _function(code, "mc_forward_train")
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    out, grads = pm.evaluate(
        {}, {"input": x}, output_gradients={"output": np.ones(n, np.float32)}
    )
    torch = pytest.importorskip("torch")
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    a = torch.tanh(t * 0.5 + t)
    b = torch.sigmoid(a * a + t)
    expected = torch.sigmoid(torch.tanh(b - t) * t + 1.0)
    expected.sum().backward()
    np.testing.assert_allclose(out["output"], expected.detach().numpy(), atol=2e-6)
    np.testing.assert_allclose(grads["input"], t.grad.numpy(), rtol=1e-4, atol=1e-5)
