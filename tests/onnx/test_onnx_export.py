"""ONNX export (``pm.to_onnx``, ``ml.to_onnx``) and the onnxruntime backend, checked
against the NumPy backend: every conformance case, resnet18, gpt2 and the guide's
examples; ``onnx.checker`` on every export."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import mithril_core as ml  # noqa: E402
from mithril_core.errors import (  # noqa: E402
    InputKeyError,
    MissingBackendError,
    MissingLoweringError,
)
from mithril_core.models import (  # noqa: E402
    Dropout,
    IOKey,
    Linear,
    Model,
    Relu,
    gpt2,
    resnet18,
)

TESTS = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(5)


def _load(relative: str) -> Any:
    """A sibling test module (tests are not a package; pytest imports by path)."""
    path = TESTS / relative
    spec = importlib.util.spec_from_file_location(f"_onnx_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


conformance = _load("primitives/test_conformance.py")
guide = _load("core/test_guide_examples.py")


def run_onnx(model: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def check_export(
    model: Any,
    data: dict[str, np.ndarray],
    *,
    shapes: dict[str, Any] | None = None,
    tmp_path: Path | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    params: dict[str, Any] | None = None,
    **compile_options: Any,
) -> Any:
    """Compile ``model`` for NumPy (float32, inference), export it with random
    params, check it and compare onnxruntime's outputs with NumPy's."""
    backend = ml.NumpyBackend(dtype=ml.float32)
    pm = ml.compile(
        model,
        backend,
        shapes=shapes or {k: list(v.shape) for k, v in data.items()},
        data_keys=set(data),
        inference=True,
        **compile_options,
    )
    if params is None:
        params = pm.randomize_params(seed=3)
    data = {k: backend.array(v) for k, v in data.items()}
    expected = pm.evaluate(params, data)
    path = None if tmp_path is None else tmp_path / "model.onnx"
    exported = pm.to_onnx(
        path, params=params, input_dtypes={k: v.dtype for k, v in data.items()}
    )
    onnx.checker.check_model(exported, full_check=True)
    if path is not None:
        assert onnx.load(str(path)) == exported
    assert [i.name for i in exported.graph.input] == list(data)
    assert [o.name for o in exported.graph.output] == list(pm.output_keys)
    got = run_onnx(exported, data)
    for key, value in expected.items():
        assert got[key].dtype == np.asarray(value).dtype, key
        np.testing.assert_allclose(got[key], value, atol=atol, rtol=rtol, err_msg=key)
    return exported


# -- every conformance case (its float inputs baked in as initializers) --
FORWARD_CASES = [pytest.param(c, id=c.id) for c in conformance.CASES]


@pytest.mark.parametrize("case", FORWARD_CASES)
def test_conformance_case_exports_and_runs(case: Any) -> None:
    backend = ml.NumpyBackend(dtype=ml.float32)
    pm = conformance._compile(case, backend, jit=False)
    trainable = conformance._trainable(case)
    params, data = {}, {}
    for key, value in case.inputs.items():
        target = params if key in trainable else data
        target[key] = backend.array(
            value.astype(np.float32) if value.dtype.kind == "f" else value
        )
    expected = pm.evaluate(params, data)["output"]
    exported = pm.to_onnx(
        params=params, input_dtypes={k: v.dtype for k, v in data.items()}
    )
    onnx.checker.check_model(exported, full_check=True)
    got = run_onnx(exported, data)["output"]
    assert got.shape == np.shape(expected)
    assert got.dtype == np.asarray(expected).dtype
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# -- resnet18, gpt2 --
def test_resnet18_with_a_symbolic_batch(tmp_path: Path) -> None:
    x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    exported = check_export(
        resnet18(num_classes=10),
        {"input": x},
        shapes={"input": [None, 3, 32, 32]},
        tmp_path=tmp_path,
        atol=1e-4,
    )
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 32, 32]
    # The same export runs another batch size.
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    (out,) = session.run(None, {"input": np.ones((3, 3, 32, 32), np.float32)})
    assert out.shape == (3, 10)


def test_resnet18_state_keys_are_initializers() -> None:
    pm = ml.compile(
        resnet18(num_classes=10),
        ml.NumpyBackend(),
        shapes={"input": [1, 3, 32, 32]},
        data_keys={"input"},
        inference=True,
    )
    exported = pm.to_onnx(params=pm.randomize_params())
    names = {i.name for i in exported.graph.initializer}
    assert {"conv1_weight", "bn1_running_mean", "fc_bias"} <= names
    assert [i.name for i in exported.graph.input] == ["input"]


def small_gpt2() -> Model:
    return gpt2(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.mark.parametrize("shape", [[2, 12], [None, None]], ids=["fixed", "symbolic"])
def test_gpt2(shape: list[int | None]) -> None:
    ids = RNG.integers(0, 64, (2, 12)).astype(np.int64)
    # Parameter shapes of gpt2 compiled with unknown dims are not all inferred:
    # draw them from a fixed-shape compile.
    params = ml.compile(
        small_gpt2(),
        ml.NumpyBackend(),
        shapes={"input": [2, 12]},
        data_keys={"input"},
        inference=True,
    ).randomize_params(seed=3)
    exported = check_export(
        small_gpt2(),
        {"input": ids},
        shapes={"input": shape},
        atol=1e-4,
        params=params,
    )
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    expected = ["batch", "input_dim1"] if shape[0] is None else [2, 12]
    assert [d.dim_param or d.dim_value for d in dims] == expected


# -- the guide's examples --
def test_guide_custom_mlp() -> None:
    x = RNG.standard_normal((4, 8))
    check_export(guide.custom_mlp(8, [16, 12], 3), {"input": x})


def test_guide_fusion_model() -> None:
    data = {
        "text_input": RNG.standard_normal((2, 6)),
        "image_input": RNG.standard_normal((2, 5)),
    }
    check_export(guide.fusion_model(6, 5, 3), data)


def test_guide_multi_task_model() -> None:
    x = RNG.standard_normal((3, 7))
    exported = check_export(guide.multi_task_model(7), {"input": x})
    outputs = [o.name for o in exported.graph.output]
    assert set(outputs) == {"regression_output", "classification_output"}


def test_guide_channel_shuffle() -> None:
    x = RNG.standard_normal((2, 6, 3, 4))
    check_export(guide.ChannelShuffle(groups=3), {"input": x})


def test_guide_lstm_cell() -> None:
    data = {
        "input": RNG.standard_normal((2, 4)),
        "h_prev": RNG.standard_normal((2, 5)),
        "c_prev": RNG.standard_normal((2, 5)),
    }
    check_export(guide.lstm_cell(4, 5), data)


# -- options and errors --
def mlp() -> Model:
    model = Model()
    model |= Linear(4)(input=IOKey("input"), output="hidden")
    model |= Relu()(input="hidden", output=IOKey("output"))
    return model


def test_params_as_inputs_and_ml_to_onnx(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    exported = ml.to_onnx(
        mlp(), shapes={"input": [None, 3]}, path=str(path), params_as_inputs=True
    )
    onnx.checker.check_model(str(path), full_check=True)
    inputs = {i.name for i in exported.graph.input}
    assert inputs == {"input", "linear_0_weight", "linear_0_bias"}
    assert not exported.graph.initializer or all(
        i.name not in inputs for i in exported.graph.initializer
    )
    x = RNG.standard_normal((5, 3)).astype(np.float32)
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    got = run_onnx(exported, {"input": x, "linear_0_weight": w, "linear_0_bias": b})
    np.testing.assert_allclose(got["output"], np.maximum(x @ w.T + b, 0), rtol=1e-5)


def test_ml_to_onnx_bakes_given_params_in_float64() -> None:
    w = RNG.standard_normal((4, 3))
    b = RNG.standard_normal(4)
    exported = ml.to_onnx(
        mlp(),
        shapes={"input": [2, 3]},
        params={"linear_0_weight": w, "linear_0_bias": b},
        dtype=ml.float64,
    )
    onnx.checker.check_model(exported, full_check=True)
    x = RNG.standard_normal((2, 3))
    got = run_onnx(exported, {"input": x})["output"]
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, np.maximum(x @ w.T + b, 0), rtol=1e-12)


def test_export_requires_params() -> None:
    pm = ml.compile(
        mlp(), ml.NumpyBackend(), shapes={"input": [2, 3]}, data_keys={"input"}
    )
    with pytest.raises(InputKeyError, match="params_as_inputs=True"):
        pm.to_onnx()
    with pytest.raises(InputKeyError, match="linear_0_bias"):
        pm.to_onnx(params={"linear_0_weight": np.zeros((4, 3), np.float32)})


def test_dropout_in_training_mode_is_refused_by_name() -> None:
    model = Model()
    model |= Dropout(p=0.5)(input=IOKey("input"), output=IOKey("output"))
    pm = ml.compile(
        model, ml.NumpyBackend(), shapes={"input": [2, 3]}, data_keys={"input"}
    )
    with pytest.raises(MissingLoweringError, match=r"dropout_0: primitive 'dropout'"):
        pm.to_onnx(params={}, input_dtypes={"input": np.float32})


def softsign_model() -> Model:
    from example_ops import Softsign

    model = Model()
    model |= Softsign()(
        input=IOKey("input", type=ml.models.Tensor[float]), output=IOKey("output")
    )
    return model


def test_an_operator_without_onnx_lowering_is_named_with_its_path(monkeypatch) -> None:
    from mithril_core.plugins import get_registry

    registry = get_registry()
    original = registry.lowerings
    table = {k: v for k, v in original("onnx").items() if k != "example_ops.softsign"}
    monkeypatch.setattr(
        registry, "lowerings", lambda name: table if name == "onnx" else original(name)
    )
    pm = ml.compile(
        softsign_model(),
        ml.NumpyBackend(),
        shapes={"input": [2, 3]},
        data_keys={"input"},
    )
    with pytest.raises(MissingLoweringError) as info:
        pm.to_onnx(params={})
    assert "'example_ops.softsign' used at softsign" in str(info.value)
    assert "mithril_lowerings" in str(info.value)


def test_a_third_party_package_adds_an_onnx_lowering() -> None:
    """example_ops lowers its operator for ONNX through ``mithril_lowerings("onnx")``
    (its own entry point)."""
    from mithril_core.plugins import get_registry

    assert "example_ops.softsign" in get_registry().lowerings("onnx")
    x = RNG.standard_normal((2, 3))
    exported = check_export(softsign_model(), {"input": x})
    assert "example_ops.softsign" not in str(exported)  # plain ONNX ops
    ml_backend = ml.OnnxBackend()
    pm = ml.compile(
        softsign_model(), ml_backend, shapes={"input": [2, 3]}, data_keys={"input"}
    )
    out = pm.evaluate({}, {"input": ml_backend.array(x)})["output"]
    np.testing.assert_allclose(out, x / (1 + np.abs(x)), rtol=1e-6)


# -- the onnx backend --
def test_backend_runs_and_refuses_gradients() -> None:
    backend = ml.OnnxBackend()
    assert ml.backend("onnx").name == "onnx"
    pm = ml.compile(mlp(), backend, shapes={"input": [None, 3]}, data_keys={"input"})
    assert "MatMul" in pm.code
    params = pm.randomize_params()
    x = backend.array(RNG.standard_normal((5, 3)))
    out = pm.evaluate(params, {"input": x})["output"]
    w, b = params["linear_0_weight"], params["linear_0_bias"]
    np.testing.assert_allclose(out, np.maximum(x @ w.T + b, 0), rtol=1e-5)
    with pytest.raises(MissingLoweringError, match="forward passes only"):
        pm.evaluate(params, {"input": x}, output_gradients={"output": out})


def test_backend_float64_conv_needs_float32() -> None:
    from mithril_core.errors import CompileError
    from mithril_core.models import Convolution2D

    model = Model()
    model |= Convolution2D(2, 3)(input=IOKey("input"), output=IOKey("output"))
    backend = ml.OnnxBackend(dtype=ml.float64)
    with pytest.raises(CompileError, match="float32 only"):
        ml.compile(model, backend, shapes={"input": [1, 1, 4, 4]}, data_keys={"input"})


def test_cli_lists_the_onnx_backend() -> None:
    for command in ("plugins", "ops"):
        result = subprocess.run(
            [sys.executable, "-m", "mithril_core", command],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        assert "onnx" in result.stdout, command


def test_missing_plugin_error_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "mithril_onnx.export", None)
    with pytest.raises(
        MissingBackendError, match="pip install -e ./plugins/mithril_onnx"
    ):
        ml.to_onnx  # noqa: B018
    pm = ml.compile(
        mlp(), ml.NumpyBackend(), shapes={"input": [2, 3]}, data_keys={"input"}
    )
    with pytest.raises(MissingBackendError, match="mithril-onnx"):
        pm.to_onnx(params_as_inputs=True)


def computed_ids_model() -> Model:
    from mithril_core.models import Add, Embedding

    model = Model()
    model |= Add()(left=IOKey("ids"), right=IOKey("offset"), output="computed")
    model |= Embedding()(
        input="computed", weight=IOKey("weight"), output=IOKey("output")
    )
    return model


def test_backend_exports_open_dtype_inputs_at_evaluate_and_nans_bad_ids() -> None:
    backend = ml.OnnxBackend()
    pm = ml.compile(
        computed_ids_model(),
        backend,
        shapes={"ids": [4], "offset": [4], "weight": [4, 2]},
        data_keys={"ids", "offset"},
    )
    assert "at each evaluate" in pm.code
    weight = np.arange(8, dtype=np.float32).reshape(4, 2)
    data = {"ids": backend.array([0, 1, 2, 3]), "offset": backend.array([1, 0, 5, -4])}
    out = pm.evaluate({"weight": backend.array(weight)}, data)["output"]
    # A computed id out of [0, rows) gives NaN, never another row (nor a crash).
    np.testing.assert_array_equal(out[:2], weight[[1, 1]])
    assert np.isnan(out[2:]).all()


def test_export_of_an_open_dtype_input_asks_for_its_dtype() -> None:
    pm = ml.compile(
        computed_ids_model(),
        ml.NumpyBackend(),
        shapes={"ids": [4], "offset": [4], "weight": [4, 2]},
        data_keys={"ids", "offset"},
    )
    params = {"weight": np.zeros((4, 2), np.float32)}
    with pytest.raises(ml.MithrilError, match=r"input_dtypes=\{'ids': 'int64'\}"):
        pm.to_onnx(params=params)
    exported = pm.to_onnx(
        params=params, input_dtypes={"ids": np.int64, "offset": np.int64}
    )
    onnx.checker.check_model(exported, full_check=True)


def test_every_core_primitive_has_an_onnx_lowering() -> None:
    from mithril_onnx.lowerings import BUILDERS

    from mithril_core.primitives import CORE_PRIMITIVES

    compile_time = {"dim_from_value", "mode_switch"}  # removed before code generation
    ops = {cls.op_name for cls in CORE_PRIMITIVES} - compile_time
    assert sorted(ops - set(BUILDERS)) == []
