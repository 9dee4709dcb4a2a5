"""Models, data and layouts shared by the distributed check scripts (not a test file:
the scripts run in subprocesses so that forced host devices and process groups do not
leak into other tests)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

BATCH, IN, HIDDEN, OUT = 8, 4, 16, 8
SHAPES = {"input": [BATCH, IN], "target": [BATCH, OUT]}
DATA_KEYS = {"input", "target"}
TOL = 1e-5
STEPS, LR = 5, 0.1

# Data parallel: the batch is split, the parameters are replicated.
DATA_PARALLEL = {
    "input": ("data", None),
    "target": ("data", None),
    "output": ("data", None),
}
# Tensor parallel (Megatron-style MLP): Linear 0 split by output features (columns of
# x @ W0.T), Linear 1 by input features (rows of h @ W1.T); its bias replicated.
TENSOR_PARALLEL = {
    "linear_0_weight": ("model", None),
    "linear_0_bias": ("model",),
    "linear_1_weight": (None, "model"),
}


def mlp_with_loss() -> Any:
    """Linear(16) -> ReLU -> Linear(8) = ``output``; ``loss`` = mean squared error."""
    from mithril_core.models import IOKey, Linear, Mean, Model, Multiply, Relu, Subtract

    model = Model()
    model |= Linear(HIDDEN)(input="input", output="h0")
    model |= Relu()(input="h0", output="h1")
    model |= Linear(OUT)(input="h1", output=IOKey("output"))
    model |= Subtract()(left="output", right="target", output="diff")
    model |= Multiply()(left="diff", right="diff", output="square")
    model |= Mean()(input="square", output=IOKey("loss"))
    return model


def host_data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "input": rng.standard_normal((BATCH, IN)).astype(np.float32),
        "target": rng.standard_normal((BATCH, OUT)).astype(np.float32),
        "output_cotangent": rng.standard_normal((BATCH, OUT)).astype(np.float32),
    }


def host_params(physical_model: Any) -> dict[str, np.ndarray]:
    backend = physical_model.backend
    return {
        key: np.array(backend.to_numpy(value), dtype=np.float32)
        for key, value in physical_model.randomize_params(seed=3).items()
    }


def max_error(found: dict[str, Any], expected: dict[str, Any]) -> float:
    assert set(found) == set(expected), (sorted(found), sorted(expected))
    return max(
        float(np.max(np.abs(np.asarray(found[k]) - np.asarray(expected[k]))))
        for k in expected
    )


def report(**values: Any) -> None:
    """Print one ``RESULT {json}`` line for the test to parse."""
    print("RESULT " + json.dumps(values), flush=True)
