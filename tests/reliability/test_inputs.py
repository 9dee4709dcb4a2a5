"""Bad evaluate inputs and hostile names, on every backend.

- An input whose type admits int and float but that meets float values (``x * w``
  with a float parameter ``w``, ``x * 2.5``, ``exp(x)``) is a float input: int data
  raises DtypeError naming the key, instead of a float64 result on NumPy.
- Declared int inputs are converted to the backend dtype where they meet floats;
  pure-int graphs take int data and give int results.
- ``output_gradients`` are checked like inputs: array type, shape (nothing is
  broadcast), dtype.
- Keys that sanitize to one identifier are refused; hostile keys and child names never
  reach the generated source except as identifiers or escaped literals.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.errors import CompileError, DtypeError, ShapeError
from mithril_core.models import IOKey, Linear, Model, Tensor
from mithril_core.primitives import Add, Exponential, FloorDivide, Multiply

X = np.array([[1, 2, 3], [4, 5, 6]])
W = np.array([0.5, -1.5, 2.0])


def _scaled(**x: Any) -> Model:
    model = Model()
    model |= Multiply()(left=IOKey("x", **x), right=IOKey("w"), output=IOKey("output"))
    return model


def test_int_data_into_a_float_bound_input_raises(backend_name: str) -> None:
    backend = ml.backend(backend_name)
    pm = ml.compile(
        _scaled(), backend, shapes={"x": [2, 3], "w": [3]}, data_keys={"x"}, jit=False
    )
    params = {"w": backend.array(W)}
    # float data works, and is the only float dtype the input takes
    out = pm.evaluate(params, {"x": backend.array(X.astype(np.float32))})["output"]
    assert backend.array_info(out) == ((2, 3), "float32")
    np.testing.assert_allclose(backend.to_numpy(out), X * W, rtol=1e-6)
    for dtype in ("int64", "int32", "bool"):
        with pytest.raises(DtypeError) as info:
            pm.evaluate(params, {"x": backend.array(X, dtype=dtype)})
        message = str(info.value)
        assert message.startswith(
            f"x: expected dtype float32, got {dtype}: x meets float values at "
            "multiply_0, so it is a float input."
        ), message
        assert "IOKey('x', type=Tensor[int])" in message
        assert "nothing is cast silently" in message


@pytest.mark.parametrize(
    "build",
    [
        lambda: Multiply()(left=IOKey("x"), right=2.5, output=IOKey("output")),
        lambda: Exponential()(input=IOKey("x"), output=IOKey("output")),
    ],
    ids=["times_float_constant", "exponential"],
)
def test_int_data_where_the_result_is_float_raises(
    backend_name: str, build: Any
) -> None:
    backend = ml.backend(backend_name)
    model = Model()
    model |= build()
    pm = ml.compile(model, backend, shapes={"x": [2, 3]}, data_keys={"x"}, jit=False)
    with pytest.raises(DtypeError, match=r"^x: expected dtype float32, got int64: x "):
        pm.evaluate({}, {"x": backend.array(X)})


def test_declared_int_input_is_converted_where_it_meets_floats(
    backend_name: str,
) -> None:
    backend = ml.backend(backend_name)
    model = _scaled(type=Tensor[int])
    pm = ml.compile(model, backend, shapes={"x": [2, 3], "w": [3]}, jit=False)
    params = {"w": backend.array(W)}
    seed = np.arange(6.0).reshape(2, 3)
    outputs, grads = pm.evaluate(
        params, {"x": backend.array(X)}, {"output": backend.array(seed)}
    )
    assert backend.array_info(outputs["output"]) == ((2, 3), "float32")
    assert backend.array_info(grads["w"]) == ((3,), "float32")
    np.testing.assert_allclose(backend.to_numpy(outputs["output"]), X * W, rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(grads["w"]), (seed * X).sum(0))
    with pytest.raises(DtypeError, match=r"^x: expected a Tensor\[int\] array"):
        pm.evaluate(params, {"x": backend.array(X.astype(np.float32))})


def test_pure_int_graph_takes_int_data(backend_name: str) -> None:
    backend = ml.backend(backend_name)
    model = Model()
    model |= Add()(left=IOKey("a"), right=IOKey("b"))
    model += FloorDivide()(right=2, output=IOKey("output"))
    pm = ml.compile(
        model, backend, shapes={"a": [2, 3], "b": [3]}, data_keys={"a", "b"}, jit=False
    )
    b = np.array([7, -3, 0])
    out = pm.evaluate({}, {"a": backend.array(X), "b": backend.array(b)})["output"]
    got = backend.to_numpy(out)
    assert got.dtype.kind == "i"
    np.testing.assert_array_equal(got, (X + b) // 2)


# -- output_gradients ---------------------------------------------------------------


def _linear(backend_name: str) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
    backend = ml.backend(backend_name)
    model = Model()
    model |= Linear(3)(input=IOKey("input", shape=[None, 4]), output=IOKey("output"))
    pm = ml.compile(model, backend, data_keys={"input"}, jit=False)
    data = {"input": backend.array(np.ones((2, 4)))}
    return backend, pm, pm.randomize_params(), data


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((1, 3), "[2, 3], got [1, 3]"), ((3,), "[2, 3], got [3]"), ((5, 3), "got [5, 3]")],
    ids=["broadcastable", "lower_rank", "wrong_batch"],
)
def test_output_gradient_of_the_wrong_shape_raises(
    backend_name: str, shape: tuple[int, ...], expected: str
) -> None:
    backend, pm, params, data = _linear(backend_name)
    seed = backend.array(np.ones(shape))
    with pytest.raises(ShapeError) as info:
        pm.evaluate(params, data, {"output": seed})
    message = str(info.value)
    assert message.startswith(
        "output_gradients['output']: expected the shape of output 'output', "
    ), message
    assert expected in message
    assert message.endswith("Nothing is broadcast silently.")


def test_output_gradient_of_the_wrong_dtype_or_type_raises(backend_name: str) -> None:
    backend, pm, params, data = _linear(backend_name)
    seed = np.ones((2, 3))
    with pytest.raises(
        DtypeError,
        match=r"^output_gradients\['output'\]: expected dtype float32, got float64",
    ):
        pm.evaluate(params, data, {"output": backend.array(seed, dtype="float64")})
    with pytest.raises(
        DtypeError,
        match=rf"^output_gradients\['output'\]: expected a {backend_name} array, got",
    ):
        pm.evaluate(params, data, {"output": seed.tolist()})
    grads = pm.evaluate(params, data, {"output": backend.array(seed)})[1]
    np.testing.assert_allclose(backend.to_numpy(grads["linear_0_weight"]), 2.0)


# -- names ---------------------------------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("a.b", "a_b"), ("a_b", "a.b")])
def test_keys_that_sanitize_to_one_identifier_are_refused(
    first: str, second: str
) -> None:
    model = Model()
    model |= Add()(left=IOKey(first), right=IOKey(second), output=IOKey("output"))
    with pytest.raises(CompileError) as info:
        ml.compile(model, ml.backend("numpy"))
    message = str(info.value)
    assert "'a.b'" in message and "'a_b'" in message
    assert "both become the key 'a_b'" in message


def _hostile(marker: Path) -> list[str]:
    return [
        f'x"); import os; os.system("touch {marker}") #',
        f"x'''\nimport os; os.system('touch {marker}')\n'''",
        "line\nbreak",
        "back\\slash",
        "*/ evil(); /*",
        "1x",
        "class",
        "lambda",
        "δelta",
        "float",
        "inputs",
        "_vjp_0",
        "const_0_x",
    ]


def test_hostile_keys_and_child_names(backend_name: str, tmp_path: Path) -> None:
    backend = ml.backend(backend_name)
    marker = tmp_path / "PWNED"
    rng = np.random.default_rng(0)
    for name in _hostile(marker):
        model = Model()
        child = Linear(2, name=name)
        model |= child(input=IOKey(name, shape=[3, 4]), output=IOKey(name + "!out"))
        model |= Multiply()(left=child.output, right=1.5, output=IOKey("scaled"))
        pm = ml.compile(model, backend, jit=False)
        keys = pm.input_keys
        assert all(re.fullmatch(r"[0-9A-Za-z_]+", key) for key in keys), keys
        x = rng.standard_normal((3, 4))
        weight, bias = rng.standard_normal((2, 4)), rng.standard_normal(2)
        (weight_key,) = [k for k in keys if k.endswith("_weight")]
        (bias_key,) = [k for k in keys if k.endswith("_bias")]
        (data_key,) = set(keys) - {weight_key, bias_key}
        params = {weight_key: backend.array(weight), bias_key: backend.array(bias)}
        outputs = pm.evaluate(params, {data_key: backend.array(x)})
        expected = x @ weight.T + bias
        np.testing.assert_allclose(
            backend.to_numpy(outputs[name + "!out"]), expected, rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            backend.to_numpy(outputs["scaled"]), 1.5 * expected, rtol=1e-5, atol=1e-6
        )
    assert not marker.exists()


def test_raw_names_are_accepted_by_compile() -> None:
    model = Model()
    model |= Add()(left=IOKey("a.left"), right=IOKey("1x"), output=IOKey("output"))
    pm = ml.compile(
        model, ml.backend("numpy"), shapes={"a.left": [2], "1x": [2]}, jit=False
    )
    assert pm.input_keys == ("a_left", "1x")
    left, right = np.array([1.0, 2.0], np.float32), np.array([3.0, 5.0], np.float32)
    out = pm.evaluate({"a_left": left, "1x": right})
    np.testing.assert_array_equal(out["output"], [4.0, 7.0])
