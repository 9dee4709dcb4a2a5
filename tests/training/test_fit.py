"""fit: training progress, early stopping, history, checkpoints and exact resuming."""

from __future__ import annotations

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import IOKey, Linear, Model
from mithril_core.training import (
    SGD,
    Adam,
    TrainModel,
    fit,
    load_checkpoint,
    save_checkpoint,
)

BATCH = 8


def _train_pm(backend, squared_error, absolute_error=None, jit=False):
    model = Model()
    model |= Linear(2)(input="input", output=IOKey("output"))
    tm = TrainModel(model)
    tm.add_loss(squared_error(), input="output", target="target")
    if absolute_error is not None:
        tm.add_metric(absolute_error(), key_name="mae", input="output", target="target")
    return ml.compile(
        tm,
        backend,
        shapes={"input": [BATCH, 3], "target": [BATCH, 2]},
        data_keys={"input", "target"},
        jit=jit,
    )


def _shuffled(x: np.ndarray, y: np.ndarray, seed: int = 0):
    """``epoch -> batches``: a fresh, reproducible order every epoch."""

    def batches(epoch: int):
        order = np.random.default_rng([seed, epoch]).permutation(len(x))
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            yield {"input": x[idx], "target": y[idx]}

    return batches


def test_fit_trains_on_every_backend(
    backend_name, make_backend, squared_error, absolute_error, regression_data
) -> None:
    backend = make_backend(backend_name, "float32")
    # JAX runs op by op without jit (slow); torch.compile is slow to start.
    pm = _train_pm(backend, squared_error, absolute_error, jit=backend_name == "jax")
    x, y = regression_data
    result = fit(
        pm,
        pm.randomize_params(seed=1),
        _shuffled(x, y),
        Adam(lr=0.1),
        epochs=15,
        progress=False,
    )
    history = result.history
    assert set(history) == {"final_cost", "mae"}
    assert len(history["final_cost"]) == 15 and result.epoch == 15
    assert history["final_cost"][-1] < 0.05 * history["final_cost"][0]
    assert not result.stopped_early
    weight = backend.to_numpy(result.params["linear_0_weight"])
    np.testing.assert_allclose(weight, [[1.0, -2.0, 0.5], [0.3, 0.0, -1.0]], atol=0.1)


def test_validation_and_early_stopping(squared_error, regression_data) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    pm = _train_pm(backend, squared_error)
    x, y = regression_data
    train = list(_shuffled(x[:48], y[:48])(0))
    val = list(_shuffled(x[48:], y[48:])(0))
    params = pm.randomize_params(seed=0)
    # lr=0: the validation cost never improves after epoch 1 -> stop after 1 + 3.
    result = fit(
        pm,
        params,
        train,
        SGD(lr=0.0),
        epochs=50,
        validation_data=val,
        patience=3,
        progress=False,
    )
    assert result.stopped_early and result.epoch == 4
    assert result.best_epoch == 1
    assert len(result.history["val_final_cost"]) == 4
    assert len(set(result.history["val_final_cost"])) == 1
    # Training that improves runs to the end; restore_best returns the best params.
    seen = []
    result = fit(
        pm,
        params,
        train,
        SGD(lr=0.05, momentum=0.9),
        epochs=12,
        validation_data=val,
        patience=3,
        restore_best=True,
        progress=False,
        on_epoch_end=lambda epoch, logs: seen.append((epoch, logs["val_final_cost"])),
    )
    assert [e for e, _ in seen] == list(range(1, result.epoch + 1))
    best = min(v for _, v in seen)
    assert result.best_value == best
    check = fit(
        pm, result.params, [], SGD(lr=0.0), epochs=0, progress=False
    )  # epochs=0: nothing runs
    assert check.history == {}
    val_cost = np.mean(
        [pm.evaluate(result.params, batch)["final_cost"] for batch in val]
    )
    assert val_cost == pytest.approx(best, rel=1e-12)


def test_on_epoch_end_can_stop_and_mode_max(squared_error, regression_data) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    pm = _train_pm(backend, squared_error)
    x, y = regression_data
    data = list(_shuffled(x, y)(0))
    result = fit(
        pm,
        pm.randomize_params(),
        data,
        SGD(lr=0.05),
        epochs=10,
        progress=False,
        on_epoch_end=lambda epoch, logs: epoch == 2,
    )
    assert result.stopped_early and result.epoch == 2
    # mode="max" on a decreasing cost: epoch 1 stays best, patience 2 stops at 3.
    result = fit(
        pm,
        pm.randomize_params(),
        data,
        SGD(lr=0.05),
        epochs=10,
        progress=False,
        monitor="final_cost",
        mode="max",
        patience=2,
    )
    assert result.epoch == 3 and result.best_epoch == 1


def test_checkpoint_resume_is_exact(tmp_path, squared_error, regression_data) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    pm = _train_pm(backend, squared_error)
    x, y = regression_data
    data = _shuffled(x, y, seed=3)
    init = pm.randomize_params(seed=2)

    straight = fit(pm, init, data, Adam(lr=0.05), epochs=4, progress=False)

    optimizer = Adam(lr=0.05)
    first = fit(pm, init, data, optimizer, epochs=2, progress=False)
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(
        path, first.params, optimizer, backend=backend, metadata={"epoch": 2}
    )
    resumed_opt = Adam(lr=0.05)
    params, meta = load_checkpoint(path, backend, resumed_opt)
    assert meta == {"epoch": 2} and resumed_opt.step_count == optimizer.step_count
    for slot in ("exp_avg", "exp_avg_sq"):
        assert resumed_opt.state[slot].keys() == optimizer.state[slot].keys()
        for key, value in optimizer.state[slot].items():
            np.testing.assert_array_equal(resumed_opt.state[slot][key], value)
    second = fit(
        pm,
        params,
        data,
        resumed_opt,
        epochs=4,
        initial_epoch=meta["epoch"],
        history=first.history,
        progress=False,
    )
    assert second.history == straight.history
    for key, value in straight.params.items():
        assert params[key].dtype == np.float64
        np.testing.assert_array_equal(second.params[key], value)  # bitwise


def test_fit_checkpoint_path_and_resume(tmp_path, squared_error, regression_data):
    backend = ml.backend("numpy", dtype=ml.float64)
    pm = _train_pm(backend, squared_error)
    x, y = regression_data
    data = _shuffled(x, y, seed=4)
    init = pm.randomize_params(seed=5)
    path = tmp_path / "run.safetensors"
    straight = fit(pm, init, data, SGD(lr=0.02, momentum=0.9), epochs=5, progress=False)
    fit(
        pm,
        init,
        data,
        SGD(lr=0.02, momentum=0.9),
        epochs=3,
        checkpoint_path=path,
        progress=False,
    )
    resumed = fit(
        pm,
        init,
        data,
        SGD(lr=0.02, momentum=0.9),
        epochs=5,
        checkpoint_path=path,
        resume=True,
        progress=False,
    )
    assert resumed.history == straight.history
    for key, value in straight.params.items():
        np.testing.assert_array_equal(resumed.params[key], value)
    with pytest.raises(ValueError, match="cannot be loaded into Adam"):
        load_checkpoint(path, backend, Adam())


def test_checkpoint_on_every_backend(tmp_path, backend_name, make_backend) -> None:
    backend = make_backend(backend_name, "float32")
    params = {
        "w": backend.array(np.arange(6.0).reshape(2, 3)),
        "n": backend.array(np.arange(3)),
    }
    optimizer = SGD(lr=0.1, momentum=0.5)
    params = optimizer.step(params, {"w": backend.ones(2, 3)})
    save_checkpoint(tmp_path / "c.safetensors", params, optimizer, backend=backend)
    loaded_opt = SGD(lr=0.1, momentum=0.5)
    loaded, _ = load_checkpoint(tmp_path / "c.safetensors", backend, loaded_opt)
    for key, value in params.items():
        assert backend.array_info(loaded[key]) == backend.array_info(value)
        np.testing.assert_array_equal(
            backend.to_numpy(loaded[key]), backend.to_numpy(value)
        )
    buf = loaded_opt.state["momentum_buffer"]["w"]
    np.testing.assert_array_equal(backend.to_numpy(buf), np.ones((2, 3)))


def test_progress_output(capsys, squared_error, regression_data, monkeypatch) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    pm = _train_pm(backend, squared_error)
    x, y = regression_data
    data = list(_shuffled(x, y)(0))
    fit(pm, pm.randomize_params(), data, SGD(lr=0.01), epochs=2)
    err = capsys.readouterr().err
    assert "epoch 2/2" in err and "final_cost" in err
    # Without tqdm: one printed line per epoch.
    import builtins

    real_import = builtins.__import__

    def no_tqdm(name, *args, **kwargs):
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    fit(pm, pm.randomize_params(), data, SGD(lr=0.01), epochs=2)
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2  final_cost ")


def test_fit_errors(squared_error) -> None:
    backend = ml.backend("numpy", dtype=ml.float64)
    pm = _train_pm(backend, squared_error)
    params = pm.randomize_params()
    with pytest.raises(KeyError, match="no output 'loss'"):
        fit(pm, params, [], SGD(lr=0.1), cost_key="loss")
    with pytest.raises(ValueError, match="no batches"):
        fit(pm, params, [], SGD(lr=0.1), progress=False)
