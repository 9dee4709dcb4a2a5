"""A separately installed operator package (``examples/example_ops``, the package of
``docs/operator-package.md``) composes, compiles and evaluates on every backend."""

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


def test_softsign_forward_on_inference_backends(inference_backend_name):
    backend = ml.backend(inference_backend_name, dtype=ml.float32)
    model = Model()
    model += Linear(3)(input="input")
    model += example_ops.Softsign()(output=IOKey("output"))
    pm = ml.compile(
        model, backend, shapes={"input": [4, 2]}, data_keys={"input"}, jit=False
    )
    params = pm.randomize_params(seed=0)
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    out = pm.evaluate(params, {"input": backend.array(x)})
    w = backend.to_numpy(params["linear_0_weight"]).astype(np.float64)
    b = backend.to_numpy(params["linear_0_bias"]).astype(np.float64)
    z = x @ w.T + b
    np.testing.assert_allclose(
        backend.to_numpy(out["output"]), z / (1 + np.abs(z)), rtol=1e-5
    )


def test_parity_of_the_example_operator():
    model = Model()
    model += Linear(3)(input="input")
    model += example_ops.Softsign(name="squash")(output=IOKey("output"))
    data = {"input": np.random.default_rng(0).standard_normal((4, 2))}
    report = ml.check_parity(model, data=data)
    assert report.ok, str(report)
    assert set(report.results) == set(ml.available_backends())


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


def test_the_guide_shows_the_package_as_it_is():
    """docs/operator-package.md quotes the package's files and this file's test whole:
    they must not drift apart."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    guide = (root / "docs" / "operator-package.md").read_text()
    python = re.findall(r"```python\n(.*?)```", guide, re.S)
    toml = re.findall(r"```toml\n(.*?)```", guide, re.S)
    package = root / "examples" / "example_ops"

    def quoted(block):  # the block without its "# path" first line
        return block.split("\n", 1)[1]

    assert quoted(toml[0]) == (package / "pyproject.toml").read_text()
    primitives = package / "example_ops" / "primitives.py"
    assert quoted(python[0]) == primitives.read_text()
    plugin = package / "example_ops" / "plugin.py"
    assert quoted(python[1]) + "\n\n" + python[2] == plugin.read_text()
    assert python[5] in Path(__file__).read_text()
