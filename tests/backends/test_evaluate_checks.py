"""evaluate() checks every input on every backend: keys, array type, shape and dtype.

Inputs with an exact shape and one dtype (parameters here) are checked together by one
compare; these tests make sure that a mismatch there still names the key and the fault.
"""

from __future__ import annotations

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.errors import DtypeError, InputKeyError, ShapeError
from mithril_core.models import IOKey, Linear, Model


@pytest.fixture
def compiled(backend_name, make_backend):
    backend = make_backend(backend_name)
    model = Model(name="net")
    model |= Linear(8)(input=IOKey("input", shape=[None, 4]), output=IOKey("output"))
    pm = ml.compile(model, backend, data_keys={"input"}, jit=False)
    data = {"input": backend.array(np.ones((2, 4), np.float32))}
    return backend, pm, pm.randomize_params(), data


def test_valid_inputs_evaluate(compiled):
    backend, pm, params, data = compiled
    outputs, grads = pm.evaluate(
        params, data, {"output": backend.array(np.ones((2, 8), np.float32))}
    )
    assert backend.array_info(outputs["output"]) == ((2, 8), "float32")
    assert set(grads) == {"linear_0_weight", "linear_0_bias"}


def test_wrong_parameter_shape(compiled):
    backend, pm, params, data = compiled
    params["linear_0_weight"] = backend.array(np.ones((8, 5), np.float32))
    with pytest.raises(
        ShapeError, match=r"linear_0_weight: expected shape \[8, 4\], got \[8, 5\]"
    ):
        pm.evaluate(params, data)


def test_wrong_parameter_dtype(compiled):
    backend, pm, params, data = compiled
    params["linear_0_bias"] = backend.array(np.ones(8), dtype="float64")
    with pytest.raises(
        DtypeError, match="linear_0_bias: expected dtype float32, got float64"
    ):
        pm.evaluate(params, data)


def test_parameter_that_is_not_an_array(compiled):
    backend, pm, params, data = compiled
    params["linear_0_bias"] = [0.0] * 8
    with pytest.raises(DtypeError, match=f"linear_0_bias: expected a {backend.name}"):
        pm.evaluate(params, data)


def test_wrong_data_shape(compiled):
    backend, pm, params, _ = compiled
    with pytest.raises(
        ShapeError, match=r"input: expected shape \[None, 4\], got \[2, 5\]"
    ):
        pm.evaluate(params, {"input": backend.array(np.ones((2, 5), np.float32))})


def test_missing_and_unknown_output_gradient_keys(compiled):
    backend, pm, params, data = compiled
    with pytest.raises(InputKeyError, match=r"missing keys \['linear_0_bias'\]"):
        pm.evaluate({"linear_0_weight": params["linear_0_weight"]}, data)
    with pytest.raises(InputKeyError, match=r"not differentiable outputs"):
        pm.evaluate(params, data, {"nope": backend.array(np.ones(2, np.float32))})
