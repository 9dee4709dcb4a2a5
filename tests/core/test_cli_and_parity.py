"""``python -m mithril_core`` (ops, plugins, demo), ``ml.check_parity``, and the CI
check that every backend plugin is installed."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.__main__ import main
from mithril_core.backends.numpy.backend import NumpyBackend
from mithril_core.errors import InputKeyError
from mithril_core.models import IOKey, Linear, Model, Relu, Softmax, Sum, Where
from mithril_core.parity import ParityReport
from mithril_core.plugins import distributions, get_registry

ALL_BACKENDS = {"numpy", "torch", "jax", "mlx", "c"}


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="CI=true only")
def test_ci_installs_every_backend():
    missing = ALL_BACKENDS - set(ml.available_backends())
    assert not missing, f"backend plugins not installed on CI: {sorted(missing)}"


# -- CLI --
def _cells(output: str) -> dict[str, dict[str, str]]:
    lines = output.splitlines()
    header = lines[0].split()
    rows = {}
    for line in lines[2:]:
        if not line.strip():
            break
        op, *cells = line.split()
        rows[op] = dict(zip(header[1:], cells, strict=True))
    return rows


def test_ops_table_has_every_operator_and_backend(capsys):
    assert main(["ops"]) == 0
    rows = _cells(capsys.readouterr().out)
    registry = get_registry()
    assert set(rows) == set(registry.operators)
    for name, cls in registry.backends.items():
        lowered = registry.lowerings(name)
        if not cls.supports_gradients:
            expected = "fwd"
        else:
            expected = "fwd+" + ("autograd" if cls.has_autograd else "vjp")
        expected += "+jit" if cls.supports_jit else ""
        for op, row in rows.items():
            assert row[name] == (expected if op in lowered else "-"), (op, name)
    assert rows["add"]["numpy"] == "fwd+vjp"
    assert rows["mode_switch"]["numpy"] == "-"


def test_ops_filters_backends_and_missing(capsys):
    assert main(["ops", "--backend", "numpy", "--missing"]) == 0
    out = capsys.readouterr().out
    rows = _cells(out)
    assert all(set(row) == {"numpy"} and row["numpy"] == "-" for row in rows.values())
    assert "mode_switch" in rows and "add" not in rows
    assert "lowered: numpy " in out
    assert main(["ops", "--backend", "nonesuch"]) == 2
    assert "nonesuch" in capsys.readouterr().err


def test_plugins_lists_distributions(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "mithril_core.backends.numpy.plugin" in out
    assert "mithril-core" in out
    for name, dist in distributions().items():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert dist in line


def test_demo_dispatches_with_arguments(monkeypatch):
    import mithril_core.demo

    seen = []
    monkeypatch.setattr(mithril_core.demo, "main", lambda argv: seen.append(argv) or 0)
    assert main(["demo", "--epochs", "1"]) == 0
    assert seen == [["--epochs", "1"]]


def test_unknown_command_and_usage(capsys):
    assert main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out
    assert main(["--help"]) == 0


def test_python_dash_m_runs():
    result = subprocess.run(
        [sys.executable, "-m", "mithril_core", "plugins"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "mithril-core" in result.stdout


# -- parity --
def block_model():
    """``softmax(relu(linear(input)))`` with the relu inside a sub-model ``block``."""
    block = Model(name="block")
    block |= Linear(4)(input="input", output="h")
    block |= Relu()(input="h", output=IOKey("output"))
    model = Model()
    model |= block(input=IOKey("input"), output="z")
    model |= Softmax()(input="z", output="probs")
    model |= Sum(axis=0)(input="probs", output=IOKey("output"))
    return model


DATA = {"input": np.random.default_rng(0).standard_normal((3, 5))}


def test_parity_matches(backend_name):
    report = ml.check_parity(block_model(), [backend_name], data=DATA)
    assert isinstance(report, ParityReport)
    assert report.ok, str(report)
    result = report.results[backend_name]
    assert result.first_divergence is None
    # transpose, matmul, add, relu, softmax, sum, and the compiled output (only that
    # where the lowerings are not Python callables)
    assert result.compared == (7 if result.traced else 1)
    assert (
        result.dtype == "float64"
        or "float64" not in get_registry().backend_class(backend_name).supported_dtypes
    )
    assert "ok" in str(report)


def test_parity_of_every_backend_by_default():
    report = ml.check_parity(block_model(), data=DATA)
    assert set(report.results) == set(ml.available_backends())
    assert report.ok, str(report)


def _off_by_half(forward):
    return lambda x: forward(x) + 0.5


def _raising(forward):
    def relu(x):
        raise RuntimeError("relu kernel exploded")

    return relu


def _inject_broken_relu(monkeypatch, backend, source=None, breaker=_off_by_half):
    """Serve ``backend`` a copy of the lowering table of ``source`` (default: its own)
    whose relu is broken by ``breaker``."""
    registry = get_registry()
    original = registry.lowerings
    table = dict(original(source or backend))
    entry = table["relu"]
    table["relu"] = dataclasses.replace(entry, forward=breaker(entry.forward))
    monkeypatch.setattr(
        registry, "lowerings", lambda name: table if name == backend else original(name)
    )


class BrokenNumpy(NumpyBackend):
    """A NumPy backend under another name, so that the reference stays intact."""

    name = "numpy_broken"


def _assert_relu_reported(report, name):
    assert not report.ok
    first = report.first
    assert first is not None and first.backend == name
    assert first.path == "block_relu_0"
    assert first.op == "relu"
    assert first.value == "z"
    assert first.max_abs_diff == pytest.approx(0.5)
    assert "block_relu_0 (relu)" in str(report)
    # Later values diverge too; only the first is reported.
    assert report.divergences == [first]


@pytest.mark.parametrize(
    # C and ONNX lowerings emit code rather than compute arrays: nothing to break.
    "name",
    [n for n in ml.available_backends() if n not in ("numpy", "c", "onnx")],
)
def test_parity_reports_a_broken_lowering(monkeypatch, name):
    _inject_broken_relu(monkeypatch, name)
    report = ml.check_parity(block_model(), [name], data=DATA)
    _assert_relu_reported(report, name)


def test_parity_reports_a_broken_numpy_lowering(monkeypatch):
    _inject_broken_relu(monkeypatch, "numpy_broken", source="numpy")
    lowerings = get_registry().lowerings
    assert lowerings("numpy_broken")["relu"] is not lowerings("numpy")["relu"]
    report = ml.check_parity(block_model(), [BrokenNumpy(dtype=ml.float32)], data=DATA)
    _assert_relu_reported(report, "numpy_broken")
    assert report.results["numpy_broken"].dtype == "float32"


def test_parity_reports_a_lowering_that_raises(monkeypatch):
    _inject_broken_relu(monkeypatch, "numpy_broken", source="numpy", breaker=_raising)
    report = ml.check_parity(block_model(), [BrokenNumpy(dtype=ml.float64)], data=DATA)
    first = report.first
    assert (first.path, first.op) == ("block_relu_0", "relu")
    assert "RuntimeError: relu kernel exploded" in first.detail
    assert report.divergences == [first]


def test_parity_needs_every_data_input():
    model = Model()
    model |= Where()(
        condition=IOKey("mask"),
        input1=IOKey("x"),
        input2=0.0,
        output=IOKey("output"),
    )
    shapes = {"mask": [2, 3], "x": [2, 3]}
    with pytest.raises(InputKeyError, match="'mask'"):
        ml.check_parity(model, ["numpy"], shapes=shapes)
    mask = np.array([[True, False, True], [False, True, True]])
    assert ml.check_parity(model, shapes=shapes, data={"mask": mask}).ok


def test_parity_with_given_params_and_tolerance():
    model = block_model()
    pm = ml.compile(
        model,
        ml.backend("numpy", dtype=ml.float64),
        data_keys={"input"},
        shapes={"input": [3, 5]},
    )
    params = {k: np.ones(v.shape) for k, v in pm.randomize_params(1).items()}
    report = ml.check_parity(
        model, ["numpy"], data=DATA, params=params, atol=0.0, rtol=0.0
    )
    assert report.ok, str(report)
    assert report.results["numpy"].rtol == 0.0
