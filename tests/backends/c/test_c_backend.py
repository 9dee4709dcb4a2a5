"""The C backend: numerics against float64 NumPy references and finite differences,
the generated code's shape (fusion, BLAS flags), the build cache, compiler errors and
bad inputs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mithril_c")

import mithril_core as ml  # noqa: E402
from mithril_core import models as mm  # noqa: E402
from mithril_core.errors import (  # noqa: E402
    CompileError,
    DtypeError,
    InputKeyError,
    MissingLoweringError,
    ShapeError,
)
from mithril_core.models import IOKey, Linear, Model, Relu  # noqa: E402

RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> Path:
    path = tmp_path_factory.getbasetemp() / "mithril_c_cache"
    monkeypatch.setenv("MITHRIL_C_CACHE", str(path))
    return path


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape)


def positive(*shape: int) -> np.ndarray:
    return RNG.uniform(0.5, 2.0, shape)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@dataclass
class Case:
    id: str
    factory: Callable[[], Any]
    inputs: dict[str, np.ndarray]
    reference: Callable[..., np.ndarray]
    call: dict[str, Any] = field(default_factory=dict)
    grads: bool = True

    def model(self) -> Model:
        model = Model()
        terminals = {n: IOKey(n) for n in self.inputs}
        model |= self.factory()(**terminals, **self.call, output=IOKey("output"))
        return model


def _tgelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


CASES = [
    Case("add", mm.Add, {"left": randn(3, 4), "right": randn(4)}, np.add),
    Case(
        "add_both_broadcast",
        mm.Add,
        {"left": randn(3, 1), "right": randn(1, 4)},
        np.add,
    ),
    Case(
        "subtract",
        mm.Subtract,
        {"left": randn(3, 4), "right": randn(3, 4)},
        np.subtract,
    ),
    Case(
        "multiply",
        mm.Multiply,
        {"left": randn(2, 3, 4), "right": randn(3, 1)},
        np.multiply,
    ),
    Case(
        "multiply_scalar",
        mm.Multiply,
        {"left": randn(3, 4)},
        lambda left: left * 2.5,
        call={"right": 2.5},
    ),
    Case(
        "divide", mm.Divide, {"left": randn(3, 4), "right": positive(3, 4)}, np.divide
    ),
    Case(
        "power", mm.Power, {"base": positive(3, 4), "exponent": randn(3, 4)}, np.power
    ),
    Case(
        "power_scalar",
        mm.Power,
        {"base": randn(3, 4)},
        lambda base: base**3,
        call={"exponent": 3.0},
    ),
    Case(
        "minimum", mm.Minimum, {"left": randn(3, 4), "right": randn(3, 4)}, np.minimum
    ),
    Case("maximum", mm.Maximum, {"left": randn(3, 4), "right": randn(4)}, np.maximum),
    Case("negate", mm.Negate, {"input": randn(3, 4)}, np.negative),
    Case("absolute", mm.Absolute, {"input": randn(3, 4)}, np.abs),
    Case("exponential", mm.Exponential, {"input": randn(3, 4)}, np.exp),
    Case("log", mm.Log, {"input": positive(3, 4)}, np.log),
    Case("sqrt", mm.Sqrt, {"input": positive(3, 4)}, np.sqrt),
    Case("sine", mm.Sine, {"input": randn(3, 4)}, np.sin),
    Case("cosine", mm.Cosine, {"input": randn(3, 4)}, np.cos),
    Case("relu", mm.Relu, {"input": randn(3, 4)}, lambda input: np.maximum(input, 0)),
    Case("sigmoid", mm.Sigmoid, {"input": 5 * randn(3, 4)}, _sigmoid),
    Case("tanh", mm.Tanh, {"input": randn(3, 4)}, np.tanh),
    Case(
        "softplus",
        mm.Softplus,
        {"input": 5 * randn(3, 4)},
        lambda input: np.logaddexp(0, input),
    ),
    Case(
        "silu", mm.SiLU, {"input": randn(3, 4)}, lambda input: input * _sigmoid(input)
    ),
    Case(
        "leaky_relu",
        lambda: mm.LeakyRelu(slope=0.2),
        {"input": randn(3, 4)},
        lambda input: np.where(input > 0, input, 0.2 * input),
    ),
    Case(
        "gelu",
        mm.Gelu,
        {"input": randn(3, 4)},
        lambda input: 0.5 * input * (1 + _erf(input / np.sqrt(2))),
    ),
    Case(
        "gelu_tanh", lambda: mm.Gelu(approximate=True), {"input": randn(3, 4)}, _tgelu
    ),
    Case(
        "stop_gradient",
        mm.StopGradient,
        {"input": randn(3, 4)},
        lambda input: input,
        grads=False,
    ),
    Case(
        "sum_axis",
        lambda: mm.Sum(axis=1),
        {"input": randn(2, 3, 4)},
        lambda input: input.sum(axis=1),
    ),
    Case("sum_all", mm.Sum, {"input": randn(2, 3, 4)}, lambda input: input.sum()),
    Case(
        "sum_split_axes",
        lambda: mm.Sum(axis=(0, 2), keepdim=True),
        {"input": randn(2, 3, 4)},
        lambda input: input.sum(axis=(0, 2), keepdims=True),
    ),
    Case(
        "mean",
        lambda: mm.Mean(axis=-1),
        {"input": randn(2, 3, 4)},
        lambda input: input.mean(axis=-1),
    ),
    Case(
        "max",
        lambda: mm.Max(axis=0),
        {"input": randn(3, 4)},
        lambda input: input.max(axis=0),
    ),
    Case("min", mm.Min, {"input": randn(3, 4)}, lambda input: input.min()),
    Case(
        "variance",
        lambda: mm.Variance(axis=1, correction=1),
        {"input": randn(3, 5)},
        lambda input: input.var(axis=1, ddof=1),
    ),
    Case(
        "reshape",
        lambda: mm.Reshape(shape=(4, 6)),
        {"input": randn(2, 3, 4)},
        lambda input: input.reshape(4, 6),
    ),
    Case(
        "transpose",
        lambda: mm.Transpose(axes=(2, 0, 1)),
        {"input": randn(2, 3, 4)},
        lambda input: input.transpose(2, 0, 1),
    ),
    Case(
        "transpose_reverse",
        mm.Transpose,
        {"input": randn(2, 3, 4)},
        lambda input: input.T,
    ),
    Case(
        "flatten",
        lambda: mm.Flatten(start_dim=1),
        {"input": randn(2, 3, 4)},
        lambda input: input.reshape(2, 12),
    ),
    Case(
        "squeeze", mm.Squeeze, {"input": randn(3, 1, 4)}, lambda input: input.squeeze()
    ),
    Case(
        "unsqueeze",
        lambda: mm.Unsqueeze(axis=1),
        {"input": randn(3, 4)},
        lambda input: input[:, None],
    ),
    Case(
        "expand",
        lambda: mm.Expand(shape=(2, 3, 4)),
        {"input": randn(3, 1)},
        lambda input: np.broadcast_to(input, (2, 3, 4)),
    ),
    Case(
        "indexer",
        lambda: mm.Indexer(index=(slice(None), slice(3, 0, -2), None)),
        {"input": randn(2, 5)},
        lambda input: input[:, 3:0:-2, None],
    ),
    Case(
        "matmul",
        mm.MatrixMultiply,
        {"left": randn(3, 4), "right": randn(4, 5)},
        np.matmul,
    ),
    Case(
        "matmul_folded_batch",
        mm.MatrixMultiply,
        {"left": randn(2, 3, 4), "right": randn(4, 5)},
        np.matmul,
    ),
    Case(
        "matmul_batched",
        mm.MatrixMultiply,
        {"left": randn(2, 3, 4), "right": randn(2, 4, 5)},
        np.matmul,
    ),
    Case(
        "matmul_broadcast",
        mm.MatrixMultiply,
        {"left": randn(2, 1, 3, 4), "right": randn(3, 4, 5)},
        np.matmul,
    ),
    Case(
        "matmul_vector_left",
        mm.MatrixMultiply,
        {"left": randn(4), "right": randn(4, 5)},
        np.matmul,
    ),
    Case(
        "matmul_vector_right",
        mm.MatrixMultiply,
        {"left": randn(3, 4), "right": randn(4)},
        np.matmul,
    ),
    Case(
        "softmax",
        lambda: mm.Softmax(axis=-1),
        {"input": randn(3, 4)},
        lambda input: _softmax(input, -1),
    ),
    Case(
        "softmax_inner",
        lambda: mm.Softmax(axis=0),
        {"input": randn(3, 4)},
        lambda input: _softmax(input, 0),
    ),
    Case(
        "log_softmax",
        lambda: mm.LogSoftmax(axis=1),
        {"input": randn(2, 3, 4)},
        lambda input: np.log(_softmax(input, 1)),
    ),
]


def finite_difference(
    reference: Callable[..., np.ndarray],
    inputs: dict[str, np.ndarray],
    seed: np.ndarray,
    eps: float = 1e-6,
) -> dict[str, np.ndarray]:
    """d/dx sum(reference(*inputs) * seed) by central differences, in float64."""
    grads = {}
    for key, value in inputs.items():
        grad = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            plus = {k: v.copy() for k, v in inputs.items()}
            minus = {k: v.copy() for k, v in inputs.items()}
            plus[key][index] += eps
            minus[key][index] -= eps
            delta = np.sum(
                (reference(*plus.values()) - reference(*minus.values())) * seed
            )
            grad[index] = delta / (2 * eps)
        grads[key] = grad
    return grads


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_primitive_matches_reference(case: Case, dtype: str) -> None:
    backend = ml.CBackend(dtype=getattr(ml, dtype))
    shapes = {k: list(v.shape) for k, v in case.inputs.items()}
    pm = ml.compile(case.model(), backend, shapes=shapes, jit=False)
    inputs = {k: backend.array(v) for k, v in case.inputs.items()}
    exact = {k: v.astype(dtype).astype(np.float64) for k, v in case.inputs.items()}
    expected = np.asarray(case.reference(*exact.values()))
    seed = RNG.standard_normal(expected.shape)
    outputs, grads = pm.evaluate(
        inputs, output_gradients={"output": backend.array(seed)}
    )
    tolerance = (
        {"rtol": 1e-5, "atol": 1e-8}
        if dtype == "float64"
        else {"rtol": 1e-3, "atol": 1e-4}
    )
    assert outputs["output"].dtype == np.dtype(dtype)
    np.testing.assert_allclose(outputs["output"], expected, **tolerance)
    forward_only = pm.evaluate(inputs)
    np.testing.assert_array_equal(forward_only["output"], outputs["output"])
    if not case.grads:
        for grad in grads.values():
            np.testing.assert_array_equal(grad, 0)
        return
    seed = seed.astype(dtype).astype(np.float64)
    expected_grads = finite_difference(case.reference, exact, seed)
    assert set(grads) == set(expected_grads)
    for key, expected_grad in expected_grads.items():
        assert grads[key].shape == case.inputs[key].shape
        assert grads[key].dtype == np.dtype(dtype)
        if dtype == "float64":
            np.testing.assert_allclose(grads[key], expected_grad, rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_allclose(grads[key], expected_grad, rtol=1e-3, atol=1e-3)


def mlp() -> Model:
    model = Model()
    model += Linear(8)(input="input")
    model += Relu()
    model += Linear(8)
    model += mm.Tanh()
    model += Linear(4)(output=IOKey("output"))
    return model


def test_mlp_matches_numpy_reference() -> None:
    backend = ml.CBackend(dtype=ml.float64)
    pm = ml.compile(mlp(), backend, shapes={"input": [5, 3]}, data_keys={"input"})
    params = pm.randomize_params(seed=1)
    x, seed = randn(5, 3), randn(5, 4)
    outputs, grads = pm.evaluate(
        params, {"input": x}, output_gradients={"output": seed}
    )
    w0, b0 = params["linear_0_weight"], params["linear_0_bias"]
    w1, b1 = params["linear_1_weight"], params["linear_1_bias"]
    w2, b2 = params["linear_2_weight"], params["linear_2_bias"]
    z0 = x @ w0.T + b0
    h0 = np.maximum(z0, 0)
    h1 = np.tanh(h0 @ w1.T + b1)
    np.testing.assert_allclose(outputs["output"], h1 @ w2.T + b2, rtol=1e-12)
    g_h1 = seed @ w2
    g_z1 = g_h1 * (1 - h1**2)
    g_z0 = (g_z1 @ w1) * (z0 > 0)
    expected = {
        "linear_2_weight": seed.T @ h1,
        "linear_2_bias": seed.sum(0),
        "linear_1_weight": g_z1.T @ h0,
        "linear_1_bias": g_z1.sum(0),
        "linear_0_weight": g_z0.T @ x,
        "linear_0_bias": g_z0.sum(0),
    }
    assert set(grads) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(grads[key], value, rtol=1e-10, atol=1e-12)
    # The weight transposes are gemm flags, not copies.
    assert "mc_gather" not in pm.code
    forward, train, backward = pm.code.split(" int mc_")[1:]
    assert forward.count("mc_gemm(") == train.count("mc_gemm(") == 3
    assert backward.count("mc_gemm(") == 5  # no gradient for the data input


def test_shared_value_gradients_accumulate() -> None:
    # x feeds three consumers; the output itself is also used downstream.
    x = IOKey("x")
    y = mm.Sine()(x) * x + x
    model = Model()
    model |= mm.Buffer()(input=y, output=IOKey("y"))
    model |= mm.Exponential()(input=y, output=IOKey("z"))
    pm = ml.compile(model, ml.CBackend(dtype=ml.float64), shapes={"x": [3, 4]})
    value, gy, gz = randn(3, 4), randn(3, 4), randn(3, 4)
    outputs, grads = pm.evaluate({"x": value}, output_gradients={"y": gy, "z": gz})
    ref_y = np.sin(value) * value + value
    np.testing.assert_allclose(outputs["z"], np.exp(ref_y), rtol=1e-12)
    total = gy + gz * np.exp(ref_y)
    expected = total * (np.cos(value) * value + np.sin(value) + 1)
    np.testing.assert_allclose(grads["x"], expected, rtol=1e-10)
    # Only one output seeded: the other counts as zero, and the caller's array is
    # never written to.
    kept = gy.copy()
    _, grads = pm.evaluate({"x": value}, output_gradients={"y": gy})
    np.testing.assert_array_equal(gy, kept)
    np.testing.assert_allclose(
        grads["x"], gy * (np.cos(value) * value + np.sin(value) + 1), rtol=1e-10
    )


def chain(length: int = 20) -> Model:
    x = IOKey("input")
    y = x
    for i in range(length):
        y = [lambda v: v * 1.01, mm.Tanh(), lambda v: v + x, mm.Relu()][i % 4](y)
    model = Model()
    model |= mm.Buffer()(input=y, output=IOKey("output"))
    return model


def test_elementwise_chain_is_one_loop() -> None:
    pm = ml.compile(
        chain(), ml.CBackend(dtype=ml.float64), shapes={"input": [1000]}, inference=True
    )
    forward = pm.code.split("int mc_forward(")[1]
    assert forward.count("for (") == 1
    # Only the output is stored: intermediates stay in registers.
    assert forward.count("] = t") == 1
    x = randn(1000)
    expected = x
    for i in range(20):
        expected = [
            lambda v: v * 1.01,
            np.tanh,
            lambda v: v + x,
            lambda v: np.maximum(v, 0),
        ][i % 4](expected)
    np.testing.assert_allclose(
        pm.evaluate({"input": x})["output"], expected, rtol=1e-12
    )


def test_file_path_holds_code(tmp_path: Path) -> None:
    target = tmp_path / "model.c"
    pm = ml.compile(
        mlp(), ml.CBackend(), shapes={"input": [2, 3]}, file_path=str(target)
    )
    assert target.read_text() == pm.code
    assert '#include "mithril_c.h"' in pm.code


def test_second_compile_uses_the_cache(_cache: Path) -> None:
    from mithril_c import _build

    model = chain(7)
    ml.compile(model, ml.CBackend(), shapes={"input": [33]})
    compiled = _build.STATS.compiled
    libraries = sorted(_cache.glob("*.so"))
    times = [p.stat().st_mtime_ns for p in libraries]
    pm = ml.compile(chain(7), ml.CBackend(), shapes={"input": [33]})
    assert _build.STATS.compiled == compiled
    assert sorted(_cache.glob("*.so")) == libraries
    assert [p.stat().st_mtime_ns for p in libraries] == times
    x = randn(33).astype(np.float32)
    assert pm.evaluate({"input": x})["output"].shape == (33,)
    # A different shape is different code: compiled anew.
    ml.compile(chain(7), ml.CBackend(), shapes={"input": [34]})
    assert _build.STATS.compiled == compiled + 1


def test_compiler_error_names_file_and_message(monkeypatch: Any) -> None:
    from mithril_core.plugins import get_registry

    table = dict(get_registry().lowerings("c"))
    table["relu"] = ("mc_no_such_function({0})", ("{g}",))
    monkeypatch.setitem(get_registry()._lowerings, "c", table)
    with pytest.raises(CompileError) as info:
        ml.compile(mlp(), ml.CBackend(), shapes={"input": [2, 3]})
    message = str(info.value)
    assert ".model.c" in message
    assert "mc_no_such_function" in message


def test_unknown_dims_are_specialised_at_the_first_evaluate(tmp_path: Path) -> None:
    from mithril_c import _build

    target = tmp_path / "model.c"
    backend = ml.CBackend(dtype=ml.float64)
    pm = ml.compile(
        mlp(),
        backend,
        shapes={"input": [None, 3]},
        data_keys={"input"},
        file_path=str(target),
    )
    assert "not generated yet" in pm.code and "input" in pm.code
    assert target.read_text() == pm.code
    params = pm.randomize_params(seed=2)
    builds = _build.STATS.compiled + _build.STATS.cached
    reference = ml.compile(
        mlp(), ml.NumpyBackend(dtype=ml.float64), data_keys={"input"}
    )
    for batch in (5, 2, 5):
        x, seed = randn(batch, 3), randn(batch, 4)
        outputs, grads = pm.evaluate(params, {"input": x}, {"output": seed})
        expected, expected_grads = reference.evaluate(
            params, {"input": x}, {"output": seed}
        )
        np.testing.assert_allclose(outputs["output"], expected["output"], rtol=1e-12)
        for key, value in expected_grads.items():
            np.testing.assert_allclose(grads[key], value, rtol=1e-10, atol=1e-12)
        assert "int mc_forward" in pm.code and f"[{batch * 4}]" not in pm.code
        assert target.read_text() == pm.code
    # One build per distinct batch size: the third call reuses the first's.
    assert _build.STATS.compiled + _build.STATS.cached == builds + 2
    with pytest.raises(ShapeError, match="input"):
        pm.evaluate(params, {"input": randn(5, 4)})


def test_broadcast_input_shape_from_the_data() -> None:
    # c is broadcast against a [4, 5] product: its shape is known only at evaluate.
    x, c = IOKey("x"), IOKey("c")
    model = Model()
    model |= mm.Buffer()(input=mm.Tanh()(x @ IOKey("w")) * c, output=IOKey("output"))
    pm = ml.compile(
        model, ml.CBackend(dtype=ml.float64), shapes={"x": [4, 3], "w": [3, 5]}
    )
    values = {"x": randn(4, 3), "w": randn(3, 5)}
    for shape in ((4, 5), (5,), (1, 5)):
        data = {**values, "c": randn(*shape)}
        seed = randn(4, 5)
        outputs, grads = pm.evaluate(data, output_gradients={"output": seed})
        t = np.tanh(data["x"] @ data["w"])
        np.testing.assert_allclose(outputs["output"], t * data["c"], rtol=1e-12)
        np.testing.assert_allclose(
            grads["c"],
            (seed * t).reshape(-1, *shape).sum(0).reshape(shape)
            if shape != (4, 5)
            else seed * t,
            rtol=1e-10,
        )


def test_comparisons_and_casts_are_typed() -> None:
    model = Model()
    a, b = IOKey("a"), IOKey("b")
    model |= mm.Greater()(left=a, right=b, output=IOKey("greater"))
    model |= mm.Cast(dtype="int32")(input=a, output=IOKey("truncated"))
    pm = ml.compile(
        model, ml.CBackend(), shapes={"a": [2, 3], "b": [3]}, data_keys={"a", "b"}
    )
    x, y = 3 * randn(2, 3).astype(np.float32), randn(3).astype(np.float32)
    outputs = pm.evaluate({}, {"a": x, "b": y})
    assert outputs["greater"].dtype == bool
    np.testing.assert_array_equal(outputs["greater"], x > y)
    assert outputs["truncated"].dtype == np.int32
    np.testing.assert_array_equal(outputs["truncated"], x.astype(np.int32))
    assert "int32_t" in pm.code and "unsigned char" in pm.code


def test_an_untyped_input_takes_ints_too() -> None:
    # Compiled for floats; an int array gets its own specialisation.
    model = Model()
    model |= mm.Multiply()(left=IOKey("a"), right=2, output=IOKey("output"))
    pm = ml.compile(model, ml.CBackend(), shapes={"a": [3]}, data_keys={"a"})
    assert "real t0" in pm.code
    floats = pm.evaluate({}, {"a": np.array([1.5, 2, 3], np.float32)})["output"]
    np.testing.assert_array_equal(floats, [3, 4, 6])
    ints = pm.evaluate({}, {"a": np.array([1, -2, 3])})["output"]
    assert ints.dtype == np.int64
    np.testing.assert_array_equal(ints, [2, -4, 6])
    assert "int64_t t0" in pm.code
    with pytest.raises(DtypeError):
        pm.evaluate({}, {"a": np.array([1.0, 2, 3])})  # float64 in a float32 model


def test_unsupported_uses_are_missing_lowerings() -> None:
    model = Model()
    model |= mm.MatrixMultiply()(
        left=IOKey("a", type=mm.Tensor[int]),
        right=IOKey("b", type=mm.Tensor[int]),
        output=IOKey("output"),
    )
    with pytest.raises(MissingLoweringError, match="matrix_multiply"):
        ml.compile(model, ml.CBackend(), shapes={"a": [2, 2], "b": [2, 2]})


def test_bad_inputs_raise() -> None:
    backend = ml.CBackend(dtype=ml.float32)
    pm = ml.compile(mlp(), backend, shapes={"input": [5, 3]}, data_keys={"input"})
    params = pm.randomize_params()
    x = np.ones((5, 3), np.float32)
    with pytest.raises(ShapeError):
        pm.evaluate(params, {"input": np.ones((4, 3), np.float32)})
    with pytest.raises(DtypeError):
        pm.evaluate(params, {"input": np.ones((5, 3))})
    with pytest.raises(InputKeyError):
        pm.evaluate(params, {})
    with pytest.raises(ShapeError):
        pm.evaluate(
            params,
            {"input": x},
            output_gradients={"output": np.ones((4, 4), np.float32)},
        )
    with pytest.raises(DtypeError):
        pm.evaluate(params, {"input": x}, output_gradients={"output": np.ones((5, 4))})
    # Non-contiguous inputs are copied, not misread.
    wide = np.ones((5, 6), np.float32)
    wide[:, ::2] = 2
    out = pm.evaluate(params, {"input": wide[:, ::2]})["output"]
    np.testing.assert_allclose(out, pm.evaluate(params, {"input": 2 * x})["output"])
    # Program.forward called directly also checks.
    with pytest.raises(ShapeError):
        pm.program.forward({**params, "input": np.ones((1, 3), np.float32)})


BAD_INPUTS = textwrap.dedent(
    """
    import numpy as np
    import mithril_core as ml
    from mithril_core.models import IOKey, Linear, Model, Relu

    model = Model()
    model += Linear(8)(input="input")
    model += Relu()
    model += Linear(4)(output=IOKey("output"))
    pm = ml.compile(model, ml.CBackend(), shapes={"input": [5, 3]}, data_keys={"input"})
    params = pm.randomize_params()
    good = np.ones((5, 3), np.float32)
    bad = [
        {"input": np.ones((50, 3), np.float32)},
        {"input": np.ones((5,), np.float32)},
        {"input": np.ones((5, 3), np.int64)},
        {"input": np.ones((5, 3), np.float64)},
        {"input": [[1.0] * 3] * 5},
        {"input": None},
        {"input": np.ones((5, 3), ">f4")},
        {},
        {"input": good, "extra": good},
    ]
    raised = 0
    for data in bad:
        try:
            pm.evaluate(params, data)
        except Exception:
            raised += 1
    for grads in ({"output": np.ones(3, np.float32)}, {"output": None},
                  {"nope": np.ones((5, 4), np.float32)}):
        try:
            pm.evaluate(params, {"input": good}, output_gradients=grads)
        except Exception:
            raised += 1
    broken = dict(params)
    broken["linear_0_weight"] = np.ones((1,), np.float32)
    try:
        pm.evaluate(broken, {"input": good})
    except Exception:
        raised += 1
    print("raised", raised)
    """
)


def test_bad_inputs_never_crash_the_process(_cache: Path) -> None:
    env = {**os.environ, "MITHRIL_C_CACHE": str(_cache)}
    result = subprocess.run(
        [sys.executable, "-c", BAD_INPUTS],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "raised 13" in result.stdout


def test_where_takes_a_bool_mask() -> None:
    model = Model()
    model |= mm.Where()(
        condition=IOKey("mask"), input1=IOKey("x"), input2=0.5, output=IOKey("output")
    )
    pm = ml.compile(
        model,
        ml.CBackend(dtype=ml.float64),
        shapes={"mask": [2, 3], "x": [3]},
        data_keys={"mask"},
    )
    mask = np.array([[True, False, True], [False, False, True]])
    x, seed = randn(3), randn(2, 3)
    outputs, grads = pm.evaluate(
        {"x": x}, {"mask": mask}, output_gradients={"output": seed}
    )
    np.testing.assert_array_equal(outputs["output"], np.where(mask, x, 0.5))
    np.testing.assert_allclose(grads["x"], np.where(mask, seed, 0).sum(0))
    with pytest.raises(DtypeError):
        pm.evaluate({"x": x}, {"mask": mask.astype(np.float64)})


def test_split_chunks_are_read_in_place() -> None:
    x = IOKey("x")
    model = Model()
    split = mm.Split(split_size=2, axis=1)
    model |= split(input=x)
    model |= mm.Multiply()(
        left=split.output[0], right=split.output[-1], output=IOKey("output")
    )
    pm = ml.compile(model, ml.CBackend(dtype=ml.float64), shapes={"x": [3, 6]})
    assert "mc_gather" in pm.code  # chunks read from x; no list is materialised
    value, seed = randn(3, 6), randn(3, 2)
    outputs, grads = pm.evaluate({"x": value}, output_gradients={"output": seed})
    np.testing.assert_allclose(outputs["output"], value[:, :2] * value[:, 4:])
    expected = np.zeros((3, 6))
    expected[:, :2] = seed * value[:, 4:]
    expected[:, 4:] = seed * value[:, :2]
    np.testing.assert_allclose(grads["x"], expected)


def cnn() -> Model:
    """conv -> relu -> max pool -> conv (groups, padding) -> avg pool -> adaptive avg
    pool -> flatten -> linear -> per-sample cross entropy -> mean."""
    model = Model()
    model += mm.Convolution2D(out_channels=6, kernel_size=3, padding=1)(input="input")
    model += mm.Relu()
    model += mm.MaxPool2D(kernel_size=2)
    model += mm.Convolution2D(out_channels=8, kernel_size=3, stride=2, groups=2)
    model += mm.Sigmoid()
    model += mm.AvgPool2D(kernel_size=2, stride=1, padding=1)
    model += mm.AdaptiveAvgPool2D((2, 3))
    model += mm.Flatten(start_dim=1)
    model += Linear(5)(output="logits")
    model |= mm.CrossEntropy()(input="logits", target=IOKey("target"), output="loss")
    model |= mm.Mean()(input="loss", output=IOKey("output"))
    return model


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cnn_matches_numpy(dtype: str) -> None:
    shapes = {"input": [4, 3, 12, 11]}
    keys = {"input", "target"}
    c = ml.compile(
        cnn(), ml.CBackend(dtype=getattr(ml, dtype)), shapes=shapes, data_keys=keys
    )
    reference = ml.compile(
        cnn(), ml.NumpyBackend(dtype=ml.float64), shapes=shapes, data_keys=keys
    )
    assert set(c.trainable_keys) == set(reference.trainable_keys)
    assert len(c.trainable_keys) == 6  # both convolutions and the linear layer
    params = reference.randomize_params(seed=3)
    data = {"input": randn(4, 3, 12, 11), "target": np.array([0, 4, 2, 4])}
    expected, expected_grads = reference.evaluate(
        params, data, output_gradients={"output": np.array(1.0)}
    )
    cast = {k: v.astype(dtype) for k, v in params.items()}
    outputs, grads = c.evaluate(
        cast,
        {"input": data["input"].astype(dtype), "target": data["target"]},
        output_gradients={"output": np.array(1.0, dtype)},
    )
    tolerance = (
        {"rtol": 1e-5, "atol": 1e-10}
        if dtype == "float64"
        else {"rtol": 1e-3, "atol": 1e-5}
    )
    np.testing.assert_allclose(outputs["output"], expected["output"], **tolerance)
    assert set(grads) == set(expected_grads)
    for key, value in expected_grads.items():
        assert grads[key].dtype == np.dtype(dtype)
        np.testing.assert_allclose(grads[key], value, **tolerance, err_msg=key)
    for kernel in (
        "mc_conv2d(",
        "mc_max_pool2d(",
        "mc_avg_pool2d(",
        "mc_adaptive_avg_pool2d(",
        "mc_cross_entropy(",
    ):
        assert kernel in c.code


def test_index_out_of_range_raises_instead_of_crashing() -> None:
    model = Model()
    model |= mm.Embedding()(
        input=IOKey("index"), weight=IOKey("weight"), output=IOKey("output")
    )
    pm = ml.compile(
        model, ml.CBackend(dtype=ml.float64), shapes={"index": [3], "weight": [4, 2]}
    )
    weight = randn(4, 2)
    out = pm.evaluate({"weight": weight}, {"index": np.array([3, 1, 0])})["output"]
    np.testing.assert_array_equal(out, weight[[3, 1, 0]])
    # evaluate checks input ids before the kernel runs (IndexRangeError); the kernel
    # still refuses computed ones (KernelIndexError). Both are IndexErrors.
    for bad in ([4, 0, 0], [0, -1, 0], [0, -5, 0]):
        with pytest.raises(IndexError, match="embedding"):
            pm.evaluate({"weight": weight}, {"index": np.array(bad)})
    with pytest.raises(IndexError):
        pm.evaluate(
            {"weight": weight},
            {"index": np.array([9, 0, 0])},
            output_gradients={"output": randn(3, 2)},
        )


def int_and_bool_ops() -> Model:
    a = IOKey("a", type=mm.Tensor[int])
    b = IOKey("b", type=mm.Tensor[int])
    mask = IOKey("mask", type=mm.Tensor[bool])
    x = IOKey("x", type=mm.Tensor[float])
    outputs = {
        "floor": a // b,
        "power": mm.Power()(a, 3),
        "minimum": mm.Minimum()(a, b),
        "absolute": mm.Absolute()(a - b),
        "sum_axis": a.sum(axis=0),
        "max_all": mm.Max()(a),
        "min_keepdim": mm.Min(axis=1, keepdim=True)(a),
        "transposed": a.transpose(1, 0),
        "row": a[1],
        "joined": mm.Concat(axis=1)(input=[a, b]),
        "mask_t": mask.transpose(1, 0),
        "masked": mm.Where()(mask, a, b),
        "not_or": mm.LogicalOr()(mm.LogicalNot()(mask), a > 0),
        "arg_nan": mm.ArgMax(axis=1)(x),
        "ratio": a / b,
        "mean_bool": mm.Mean(axis=0)(mm.Cast(dtype="float64")(mask)),
    }
    model = Model()
    for key, value in outputs.items():
        model |= mm.Buffer()(input=value, output=IOKey(key))
    return model


def test_int_and_bool_tensors_match_numpy() -> None:
    shapes = {"a": [3, 4], "b": [3, 4], "mask": [3, 4], "x": [2, 3]}
    keys = set(shapes)
    c = ml.compile(
        int_and_bool_ops(), ml.CBackend(dtype=ml.float64), shapes=shapes, data_keys=keys
    )
    reference = ml.compile(
        int_and_bool_ops(), ml.NumpyBackend(dtype=ml.float64), data_keys=keys
    )
    data = {
        "a": np.array([[7, -7, 0, 5], [-3, 9, 2, -8], [1, 1, -1, 6]]),
        "b": np.array([[2, 2, -3, -2], [4, -4, 1, 3], [-1, 5, 7, 2]]),
        "mask": RNG.random((3, 4)) > 0.5,
        "x": np.array([[1.0, np.nan, 3.0], [2.0, 5.0, 5.0]]),
    }
    got = c.evaluate({}, data)
    expected = reference.evaluate({}, data)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    # int32 data is widened exactly; floats for an int input are an error.
    widened = c.evaluate({}, {**data, "a": data["a"].astype(np.int32)})
    np.testing.assert_array_equal(widened["floor"], expected["floor"])
    with pytest.raises(DtypeError):
        c.evaluate({}, {**data, "a": data["a"].astype(np.float64)})
