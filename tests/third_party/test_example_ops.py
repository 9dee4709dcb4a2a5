"""A separately installed operator package composes, compiles and evaluates."""

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import IOKey, Linear, Model

example_ops = pytest.importorskip("example_ops")


def test_operator_is_registered():
    from mithril_core.plugins import get_registry

    assert get_registry().operators["example_ops.softsign"] is example_ops.Softsign


def test_softsign_on_every_backend(backend_name):
    backend = ml.backend(backend_name, dtype=ml.float32)
    model = Model()
    model += Linear(3)(input="input")
    model += example_ops.Softsign()(output=IOKey("output"))
    pm = ml.compile(model, backend, shapes={"input": [4, 2]}, data_keys={"input"})
    params = pm.randomize_params(seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2))
    grad = np.random.default_rng(1).standard_normal((4, 3))
    out, grads = pm.evaluate(
        params,
        {"input": backend.array(x)},
        output_gradients={"output": backend.array(grad)},
    )
    w = backend.to_numpy(params["linear_0_weight"]).astype(np.float64)
    b = backend.to_numpy(params["linear_0_bias"]).astype(np.float64)
    z = x @ w.T + b
    np.testing.assert_allclose(
        backend.to_numpy(out["output"]), z / (1 + np.abs(z)), rtol=1e-5
    )
    np.testing.assert_allclose(
        backend.to_numpy(grads["linear_0_bias"]),
        (grad / (1 + np.abs(z)) ** 2).sum(0),
        rtol=1e-4,
    )


def test_missing_lowering_names_operator_backend_and_path(monkeypatch):
    from mithril_core.errors import MissingLoweringError
    from mithril_core.plugins import get_registry

    registry = get_registry()
    table = dict(registry.lowerings("numpy"))
    del table["example_ops.softsign"]
    monkeypatch.setitem(registry._lowerings, "numpy", table)
    model = Model(name="net")
    model += Linear(3)(input="input")
    model += example_ops.Softsign(name="squash")(output=IOKey("output"))
    with pytest.raises(MissingLoweringError) as info:
        ml.compile(model, ml.NumpyBackend(), shapes={"input": [1, 2]})
    message = str(info.value)
    assert "'example_ops.softsign'" in message
    assert "'numpy'" in message
    assert "squash" in message
