"""TrainModel: final_cost value and gradients vs hand computation, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.errors import MithrilError, ModelConnectionError, ShapeError
from mithril_core.models import MLP, IOKey, Linear, Mean, Model, Relu, Sum
from mithril_core.training import L1, L2, TrainModel

N, D_IN, D_OUT = 6, 3, 2


def _linear_model() -> Model:
    model = Model(name="regressor")
    model |= Linear(D_OUT)(input="input", output=IOKey("output"))
    return model


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "linear_0_weight": rng.normal(size=(D_OUT, D_IN)),
        "linear_0_bias": rng.normal(size=(D_OUT,)),
        "input": rng.normal(size=(N, D_IN)),
        "target": rng.normal(size=(N, D_OUT)),
    }


def _compile(tm: TrainModel, backend: object, **kwargs: object) -> object:
    return ml.compile(
        tm,
        backend,
        shapes={"input": [N, D_IN], "target": [N, D_OUT]},
        data_keys={"input", "target"},
        jit=False,
        **kwargs,
    )


def _split(pm: object, values: dict[str, np.ndarray], backend: object) -> tuple:
    params = {k: backend.array(values[k]) for k in pm.trainable_keys}
    data = {k: backend.array(values[k]) for k in pm.data_keys}
    return params, data


def _reference(values: dict[str, np.ndarray], coef: float) -> tuple[float, dict]:
    """mean((x W^T + b - t)^2) + coef * 0.5 * |W|^2 and its gradients, by hand."""
    w, b, x, t = (
        values[k] for k in ("linear_0_weight", "linear_0_bias", "input", "target")
    )
    residual = x @ w.T + b - t
    cost = np.mean(residual**2) + coef * 0.5 * np.sum(w**2)
    scale = 2.0 / residual.size
    grads = {
        "linear_0_weight": scale * residual.T @ x + coef * w,
        "linear_0_bias": scale * residual.sum(axis=0),
    }
    return cost, grads


def test_final_cost_and_gradients_match_hand_computation(
    backend_name: str, float_dtype: str, make_backend, squared_error
) -> None:
    backend = make_backend(backend_name, float_dtype)
    coef = 0.1
    tm = TrainModel(_linear_model())
    tm.add_loss(squared_error(), input="output", target="target")
    tm.add_regularization(L2(), coef=coef, keys=r".*_weight")
    pm = _compile(tm, backend)
    assert set(pm.trainable_keys) == {"linear_0_weight", "linear_0_bias"}
    assert {"final_cost", "output"} <= set(pm.output_keys)
    values = _inputs()
    params, data = _split(pm, values, backend)
    outputs, grads = pm.evaluate(
        params, data, output_gradients={"final_cost": backend.ones(())}
    )
    cost, expected = _reference(values, coef)
    rtol = 1e-10 if float_dtype == "float64" else 1e-4
    np.testing.assert_allclose(backend.to_numpy(outputs["final_cost"]), cost, rtol=rtol)
    assert set(grads) == set(expected)
    for key, grad in expected.items():
        np.testing.assert_allclose(
            backend.to_numpy(grads[key]), grad, rtol=rtol, atol=rtol, err_msg=key
        )


def test_keys_are_those_of_the_wrapped_model(squared_error) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    mlp = MLP(activations=[Relu(), None], dimensions=[4, D_OUT])
    plain = ml.compile(
        mlp, backend, shapes={"input": [N, D_IN]}, data_keys={"input"}, jit=False
    )
    tm = TrainModel(MLP(activations=[Relu(), None], dimensions=[4, D_OUT]))
    tm.add_loss(squared_error(), input="output", target="target")
    tm.add_regularization(L2(), coef=1.0, keys=r".*weight")
    pm = _compile(tm, backend)
    assert set(pm.trainable_keys) == set(plain.trainable_keys)
    assert set(tm.parameter_keys) == {"input", *plain.trainable_keys}
    # The wrapped model is copied: it still compiles on its own.
    assert ml.compile(mlp, backend, shapes={"input": [N, D_IN]}).output_keys == (
        "output",
    )


def test_reduce_steps_coef_key_name_and_metric(squared_error, absolute_error) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    tm = TrainModel(_linear_model())
    tm.add_loss(
        squared_error(),
        reduce_steps=[Sum(axis=1), Mean()],
        key_name="sse",
        coef=0.5,
        input="output",
        target="target",
    )
    tm.add_loss(absolute_error(), key_name="mae_loss", input="output", target="target")
    tm.add_metric(absolute_error(), key_name="mae", input="output", target="target")
    pm = _compile(tm, backend)
    values = _inputs(1)
    params, data = _split(pm, values, backend)
    outputs, grads = pm.evaluate(
        params, data, output_gradients={"final_cost": backend.ones(())}
    )
    residual = values["input"] @ values["linear_0_weight"].T + values["linear_0_bias"]
    residual -= values["target"]
    sse = np.mean(np.sum(residual**2, axis=1))
    mae = np.mean(np.abs(residual))
    np.testing.assert_allclose(outputs["sse"], sse, rtol=1e-12)
    np.testing.assert_allclose(outputs["mae_loss"], mae, rtol=1e-12)
    np.testing.assert_allclose(outputs["mae"], mae, rtol=1e-12)
    np.testing.assert_allclose(outputs["final_cost"], 0.5 * sse + mae, rtol=1e-12)
    assert tm.loss_keys == ["sse", "mae_loss"] and tm.metric_keys == ["mae"]
    # The metric adds nothing to the gradient: d(0.5 sse + mae)/db by hand.
    db = residual.sum(axis=0) / N + np.sign(residual).sum(axis=0) / residual.size
    np.testing.assert_allclose(grads["linear_0_bias"], db, rtol=1e-12)


def test_regularization_gradient_only_on_chosen_keys(squared_error) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    values = _inputs(2)

    def gradients(regularize: bool, **kwargs: object) -> dict[str, np.ndarray]:
        tm = TrainModel(_linear_model())
        tm.add_loss(squared_error(), input="output", target="target")
        if regularize:
            tm.add_regularization(**kwargs)
        pm = _compile(tm, backend)
        params, data = _split(pm, values, backend)
        _, grads = pm.evaluate(
            params, data, output_gradients={"final_cost": backend.ones(())}
        )
        return grads

    base = gradients(False)
    l1 = gradients(True, model=L1(), coef=0.01, keys=r".*_weight")
    np.testing.assert_allclose(
        l1["linear_0_weight"] - base["linear_0_weight"],
        0.01 * np.sign(values["linear_0_weight"]),
        atol=1e-12,
    )
    np.testing.assert_array_equal(l1["linear_0_bias"], base["linear_0_bias"])
    l2 = gradients(True, model=L2(), coef=0.3, reg_key="linear_0_bias")
    np.testing.assert_allclose(
        l2["linear_0_bias"] - base["linear_0_bias"],
        0.3 * values["linear_0_bias"],
        atol=1e-12,
    )
    np.testing.assert_array_equal(l2["linear_0_weight"], base["linear_0_weight"])
    both = gradients(
        True, model=L2(), coef=2.0, keys=["linear_0_weight", "linear_0_bias"]
    )
    np.testing.assert_allclose(
        both["linear_0_bias"] - base["linear_0_bias"],
        2.0 * values["linear_0_bias"],
        atol=1e-12,
    )


def test_coef_given_as_input(squared_error) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    tm = TrainModel(_linear_model())
    tm.add_loss(squared_error(), input="output", target="target")
    tm.add_regularization(L2(), coef="decay", reg_key="linear_0_weight")
    pm = ml.compile(
        tm, backend, shapes={"input": [N, D_IN]}, data_keys={"input", "target", "decay"}
    )
    values = {**_inputs(3), "decay": np.array(0.25)}
    params, data = _split(pm, values, backend)
    cost = pm.evaluate(params, data)["final_cost"]
    np.testing.assert_allclose(cost, _reference(values, 0.25)[0], rtol=1e-12)


def test_wrapping_a_primitive_and_a_plus_equals_model(squared_error) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    model = Model()
    model += Linear(D_OUT)(input="input")
    model += Relu()
    tm = TrainModel(model)  # unnamed canonical output, exposed as "output"
    tm.add_loss(squared_error(), input="output", target="target")
    pm = _compile(tm, backend)
    assert "output" in pm.output_keys
    tm2 = TrainModel(Relu())
    tm2.add_loss(squared_error(), input="output", target="target")
    pm2 = ml.compile(tm2, backend, shapes={"input": [4]}, data_keys={"target"})
    x = np.array([-1.0, 0.5, 2.0, -3.0])
    t = np.array([0.0, 1.0, 1.0, 1.0])
    out, grads = pm2.evaluate(
        {"input": x}, {"target": t}, output_gradients={"final_cost": np.array(1.0)}
    )
    np.testing.assert_allclose(out["final_cost"], np.mean((np.maximum(x, 0) - t) ** 2))
    np.testing.assert_allclose(
        grads["input"], 2 * (np.maximum(x, 0) - t) * (x > 0) / 4, atol=1e-15
    )


def test_errors(squared_error) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    tm = TrainModel(_linear_model())
    with pytest.raises(MithrilError, match="add_loss"):
        _compile(tm, backend)
    tm = TrainModel(_linear_model())
    with pytest.raises(ModelConnectionError, match="no parameter key matches"):
        tm.add_regularization(L2(), coef=1.0, keys=r"conv.*")
    with pytest.raises(ModelConnectionError, match="exactly one"):
        tm.add_regularization(L2(), coef=1.0)
    # A loss left unreduced: caught at add_loss when shapes are known ...
    known = Model()
    known |= Linear(D_OUT)(
        input=IOKey("input", shape=[N, D_IN]), output=IOKey("output")
    )
    with pytest.raises(ShapeError, match="scalar"):
        TrainModel(known).add_loss(
            squared_error(),
            reduce_steps=[Sum(axis=1)],
            input="output",
            target=IOKey("target", shape=[N, D_OUT]),
        )
    # ... else at compile (final_cost is a scalar).
    tm_late = TrainModel(_linear_model())
    tm_late.add_loss(
        squared_error(), reduce_steps=[Sum(axis=1)], input="output", target="target"
    )
    with pytest.raises(ShapeError):
        ml.compile(
            tm_late,
            backend,
            shapes={"input": [N, D_IN], "target": [N, D_OUT]},
            data_keys={"input", "target"},
        )
    tm = TrainModel(_linear_model())
    tm.add_loss(squared_error(), input="output", target="target")
    _compile(tm, backend)
    with pytest.raises(MithrilError, match="after final_cost was built"):
        tm.add_loss(squared_error(), input="output", target="target")
    # Compiling twice works (final_cost is built once).
    assert "final_cost" in _compile(tm, backend).output_keys


def test_to_dict_round_trip(squared_error) -> None:
    import json

    backend = ml.backend("numpy", dtype=ml.float64)
    tm = TrainModel(_linear_model())
    tm.add_loss(
        squared_error(),
        reduce_steps=[Sum(axis=1), Mean()],
        coef=2.0,
        input="output",
        target="target",
    )
    tm.add_regularization(L1(), coef=1e-2, keys=r".*_weight")
    tm.add_metric(squared_error(), key_name="mse", input="output", target="target")
    data = tm.to_dict()
    rebuilt = Model.from_dict(json.loads(json.dumps(data)))
    assert isinstance(rebuilt, TrainModel) and rebuilt.to_dict() == data
    values = _inputs(4)
    results = []
    for model in (tm, rebuilt):
        pm = _compile(model, backend)
        params, batch = _split(pm, values, backend)
        results.append(pm.evaluate(params, batch))
    assert results[0].keys() == results[1].keys() == {"output", "mse", "final_cost"}
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[1][key])
    tm_conn = TrainModel(_linear_model())
    tm_conn.add_loss(squared_error(), input=tm_conn.output, target="target")
    with pytest.raises(TypeError, match="connection names"):
        tm_conn.to_dict()
