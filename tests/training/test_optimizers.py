"""Optimizers step for step against torch.optim, on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from mithril_core.training import SGD, Adam, AdamW

torch = pytest.importorskip("torch")

SHAPES = {"w": (3, 4), "b": (4,), "s": ()}
STEPS = 12

CASES = {
    "sgd": (SGD, torch.optim.SGD, {"lr": 0.1}),
    "sgd-momentum": (SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "sgd-dampening-wd": (
        SGD,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.8, "dampening": 0.3, "weight_decay": 0.01},
    ),
    "sgd-nesterov": (
        SGD,
        torch.optim.SGD,
        {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    ),
    "adam": (Adam, torch.optim.Adam, {"lr": 0.01}),
    "adam-wd": (
        Adam,
        torch.optim.Adam,
        {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
    ),
    "adamw": (AdamW, torch.optim.AdamW, {"lr": 0.01}),
    "adamw-wd": (
        AdamW,
        torch.optim.AdamW,
        {"lr": 0.03, "betas": (0.85, 0.95), "weight_decay": 0.2},
    ),
}


def _gradient(p: np.ndarray, key: str) -> np.ndarray:
    """A gradient field that depends on the params (so momenta matter)."""
    return 2.0 * (p - 0.5) + np.sin(3.0 * p) + (0.1 if key == "b" else 0.0)


def _torch_trajectory(torch_cls: type, kwargs: dict, init: dict) -> list[dict]:
    tensors = {k: torch.tensor(v, dtype=torch.float64) for k, v in init.items()}
    optimizer = torch_cls(list(tensors.values()), **kwargs)
    trajectory = []
    for _ in range(STEPS):
        for key, tensor in tensors.items():
            tensor.grad = torch.tensor(_gradient(tensor.detach().numpy(), key))
        optimizer.step()
        trajectory.append({k: t.detach().numpy().copy() for k, t in tensors.items()})
    return trajectory


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_optim(
    case: str, backend_name: str, float_dtype: str, make_backend
) -> None:
    ours_cls, torch_cls, kwargs = CASES[case]
    backend = make_backend(backend_name, float_dtype)
    rng = np.random.default_rng(0)
    init = {k: rng.normal(size=shape) for k, shape in SHAPES.items()}
    expected = _torch_trajectory(torch_cls, kwargs, init)
    optimizer = ours_cls(**kwargs)
    params = {k: backend.array(v) for k, v in init.items()}
    params["state"] = backend.array(np.ones(2))  # no gradient: passed through
    tol = 1e-10 if float_dtype == "float64" else 2e-5
    for step in range(STEPS):
        grads = {
            k: backend.array(_gradient(backend.to_numpy(params[k]), k)) for k in SHAPES
        }
        params = optimizer.step(params, grads)
        for key in SHAPES:
            got = backend.to_numpy(params[key])
            assert backend.array_info(params[key])[1] == float_dtype
            np.testing.assert_allclose(
                got, expected[step][key], rtol=tol, atol=tol, err_msg=f"{key} {step}"
            )
    np.testing.assert_array_equal(backend.to_numpy(params["state"]), np.ones(2))
    assert optimizer.step_count == STEPS


def test_state_dict_round_trip_and_schedule() -> None:
    grads = {"w": np.full(3, 0.5)}
    first = Adam(lr=lambda step: 0.1 / (1 + step))
    params = {"w": np.zeros(3)}
    for _ in range(3):
        params = first.step(params, grads)
    second = Adam(lr=lambda step: 0.1 / (1 + step))
    second.load_state_dict(first.state_dict())
    assert second.current_lr() == pytest.approx(0.1 / 4)
    a = first.step(params, grads)
    b = second.step(params, grads)
    np.testing.assert_array_equal(a["w"], b["w"])
    with pytest.raises(KeyError, match="unknown state slots"):
        SGD(lr=0.1).load_state_dict(first.state_dict())
    with pytest.raises(ValueError, match="nesterov"):
        SGD(lr=0.1, nesterov=True)
