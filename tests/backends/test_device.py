"""Models on an accelerator: run with ``MITHRIL_TEST_DEVICE=cuda`` on a GPU machine
(skipped otherwise). Each backend that lists the device runs ResNet-18 and GPT-2
forward and backward there; outputs stay on the device, and values and gradients
equal the NumPy backend's float64 ones (float32 within TF32-free float32 error)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import gpt2, resnet18

DEVICE = os.environ.get("MITHRIL_TEST_DEVICE", "")
pytestmark = pytest.mark.skipif(
    not DEVICE, reason="set MITHRIL_TEST_DEVICE=cuda on a machine with a GPU"
)

CASES = {
    "resnet18": (lambda: resnet18(10), {"input": [2, 3, 32, 32]}, "output"),
    "gpt2": (
        lambda: gpt2(vocab_size=97, block_size=16, n_layer=2, n_head=2, n_embd=32),
        {"input": [2, 16]},
        "logits",
    ),
}


def _data(name: str, shape: list[int]) -> np.ndarray:
    rng = np.random.default_rng(3)
    if name == "gpt2":
        return rng.integers(0, 97, shape)
    return rng.standard_normal(shape)


def _run(backend: Any, name: str, jit: bool) -> tuple[dict, dict]:
    build, shapes, out_key = CASES[name]
    pm = ml.compile(
        build(), backend, shapes=shapes, data_keys={"input"}, inference=False, jit=jit
    )
    float_dtype = "float64" if backend.dtype == ml.float64 else "float32"
    params = pm.randomize_params(seed=0)
    reference = {k: backend.to_numpy(v) for k, v in params.items()}
    x = _data(name, shapes["input"])
    if name == "resnet18":
        x = x.astype(float_dtype)
    out = pm.evaluate(params, {"input": backend.array(x)})
    seed = np.random.default_rng(4).standard_normal(
        tuple(backend.to_numpy(out[out_key]).shape)
    )
    outputs, grads = pm.evaluate(
        params,
        {"input": backend.array(x)},
        output_gradients={out_key: backend.array(seed.astype(float_dtype))},
    )
    return (
        {"out": outputs[out_key], "x": x, "seed": seed, "params": reference},
        grads,
    )


@pytest.mark.parametrize("name", sorted(CASES))
# Dynamo touches .grad of non-leaf tensors while tracing (a torch-internal warning).
@pytest.mark.filterwarnings("ignore:The .grad attribute:UserWarning")
def test_model_on_device_equals_numpy_float64(backend_name, name, float_dtype):
    backend = ml.backend(backend_name, device=DEVICE, dtype=getattr(ml, float_dtype))
    # torch.compile takes minutes per model: one torch case compiles, as users do.
    jit = backend_name != "torch" or (name, float_dtype) == ("gpt2", "float32")
    got, grads = _run(backend, name, jit)
    assert DEVICE.partition(":")[0] in str(_device_of(got["out"])).lower() or (
        DEVICE == "cuda" and "gpu" in str(_device_of(got["out"])).lower()
    )
    build, shapes, out_key = CASES[name]
    ref_backend = ml.backend("numpy", dtype=ml.float64)
    pm = ml.compile(
        build(), ref_backend, shapes=shapes, data_keys={"input"}, inference=False
    )
    params = {k: v.astype(np.float64) for k, v in got["params"].items()}
    x = got["x"].astype(np.float64) if name == "resnet18" else got["x"]
    outputs, want = pm.evaluate(
        params, {"input": x}, output_gradients={out_key: got["seed"]}
    )
    tol = 1e-9 if float_dtype == "float64" else 2e-3
    out = backend.to_numpy(got["out"])
    scale = np.abs(outputs[out_key]).max()
    assert np.abs(out - outputs[out_key]).max() <= tol * scale
    for key, grad in want.items():
        if grad is None:
            continue
        mine = backend.to_numpy(grads[key])
        scale = max(np.abs(grad).max(), 1e-12)
        assert np.abs(mine - grad).max() <= tol * scale, key


def _device_of(array: Any) -> Any:
    if hasattr(array, "device") and not callable(array.device):
        return array.device  # torch tensor
    return next(iter(array.devices()))  # jax array
