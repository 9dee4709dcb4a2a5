"""The C backend's Winograd F(4x4, 3x3) convolution (3x3, stride 1, one group): its
forward against a float64 NumPy reference and against the im2col path, at 1 and 2
threads; which convolutions take it; and gradients through a model that uses it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("mithril_c")

import mithril_c.lowerings.nn as c_nn  # noqa: E402

import mithril_core as ml  # noqa: E402
from mithril_core import models as mm  # noqa: E402
from mithril_core.models import IOKey, Model  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: Any) -> None:
    path = tmp_path_factory.getbasetemp() / "mithril_c_cache"
    monkeypatch.setenv("MITHRIL_C_CACHE", str(path))


def _conv_model(filters: int, padding: int, bias: bool) -> Model:
    model = Model()
    conv = mm.Convolution2D(filters, 3, padding=padding, use_bias=bias)
    model |= conv(input=IOKey("input"), output=IOKey("output"))
    return model


def _reference(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pad: int) -> Any:
    n, _, h, width = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = h + 2 * pad - 2, width + 2 * pad - 2
    y = np.zeros((n, w.shape[0], oh, ow))
    for i in range(3):
        for j in range(3):
            window = xp[:, :, i : i + oh, j : j + ow]
            y += np.einsum("ncij,fc->nfij", window, w[:, :, i, j].astype(np.float64))
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return y


def _evaluate(
    monkeypatch: Any,
    winograd: bool,
    shape: tuple[int, ...],
    filters: int,
    padding: int,
    bias: bool,
    dtype: Any,
    threads: int,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    monkeypatch.setattr(c_nn, "_WINOGRAD_MIN_TILES", 1 if winograd else 10**12)
    backend = ml.backend("c", dtype=dtype, threads=threads)
    model = _conv_model(filters, padding, bias)
    pm = ml.compile(model, backend, shapes={"input": list(shape)}, data_keys={"input"})
    assert ("mc_conv2d_winograd" in pm.code) == winograd
    params = {k: np.asarray(v) for k, v in pm.randomize_params(seed=0).items()}
    params.pop("input", None)
    np_dtype = np.float32 if dtype == ml.float32 else np.float64
    x = np.random.default_rng(1).standard_normal(shape).astype(np_dtype)
    return params, x, np.asarray(pm.evaluate(params, {"input": x})["output"])


# (batch, channels, height, width, filters, padding): odd and even sizes, sizes that
# are not multiples of the 4 x 4 output tile, one output tile, a single channel.
SHAPES = [
    (1, 1, 5, 5, 1, 1),
    (3, 3, 7, 6, 5, 0),
    (1, 17, 13, 11, 17, 1),
    (3, 17, 9, 30, 3, 0),
    (1, 64, 30, 29, 64, 1),
    (3, 64, 14, 14, 17, 1),
    (1, 3, 5, 8, 64, 0),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", SHAPES, ids=lambda c: "x".join(map(str, c)))
def test_winograd_matches_float64_reference_and_im2col(
    monkeypatch: Any, case: tuple[int, ...], threads: int, dtype: str
) -> None:
    n, c, h, w, f, pad = case
    bias = (n + c + f) % 2 == 1 or threads == 2
    ml_dtype = getattr(ml, dtype)
    args = ((n, c, h, w), f, pad, bias, ml_dtype)
    params, x, got = _evaluate(monkeypatch, True, *args, threads)
    _, _, im2col = _evaluate(monkeypatch, False, *args, threads)
    weight = params[next(k for k in params if "weight" in k)]
    b = params[next(k for k in params if "bias" in k)] if bias else None
    want = _reference(x, weight, b, pad)
    assert got.shape == want.shape
    scale = float(np.abs(want).max())
    # F(4x4, 3x3) loses a few bits to its transforms: float32 about 1e-5 of the
    # output's scale on ResNet-sized sums (im2col: about 1e-6).
    tol = 3e-5 if dtype == "float32" else 1e-12
    assert float(np.abs(got - want).max()) <= tol * scale
    assert float(np.abs(got - im2col).max()) <= tol * scale


def test_thread_counts_give_the_same_result(monkeypatch: Any) -> None:
    args = ((3, 17, 30, 30), 64, 1, True, ml.float32)
    _, _, one = _evaluate(monkeypatch, True, *args, 1)
    _, _, two = _evaluate(monkeypatch, True, *args, 2)
    _, _, four = _evaluate(monkeypatch, True, *args, 4)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, four)


def _code(model: Model, shape: list[int]) -> str:
    backend = ml.backend("c", dtype=ml.float32)
    return ml.compile(model, backend, shapes={"input": shape}).code


def test_only_3x3_stride_1_convolutions_with_enough_tiles_take_winograd() -> None:
    def model(kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> Any:
        m = Model()
        conv = mm.Convolution2D(
            8, kernel, stride=stride, padding=1, dilation=dilation, groups=groups
        )
        m |= conv(input=IOKey("input"), output=IOKey("output"))
        return m

    assert "mc_conv2d_winograd" in _code(model(3), [1, 8, 32, 32])
    assert "mc_conv2d_winograd" not in _code(model(3), [1, 8, 8, 8])  # few tiles
    assert "mc_conv2d_winograd" not in _code(model(5), [1, 8, 32, 32])
    assert "mc_conv2d_winograd" not in _code(model(3, stride=2), [1, 8, 32, 32])
    assert "mc_conv2d_winograd" not in _code(model(3, dilation=2), [1, 8, 32, 32])
    assert "mc_conv2d_winograd" not in _code(model(3, groups=2), [1, 8, 32, 32])


def test_gradients_of_a_model_using_winograd(monkeypatch: Any) -> None:
    """The inference forward takes Winograd; the training forward (whose values the
    gradients follow) and the VJP the im2col path: the gradients match the NumPy
    backend's."""
    model = Model()
    model |= mm.Convolution2D(16, 3, padding=1)(input=IOKey("input"), output="c1")
    model |= mm.Relu()(input="c1", output="r1")
    model |= mm.Convolution2D(8, 3, padding=0)(input="r1", output="c2")
    model |= mm.Tanh()(input="c2", output=IOKey("output"))
    shapes = {"input": [2, 5, 19, 18]}
    c_pm = ml.compile(
        model, ml.backend("c", dtype=ml.float64), shapes=shapes, data_keys={"input"}
    )
    forward, rest = c_pm.code.split("int mc_forward_train(", 1)
    assert forward.count("mc_conv2d_winograd(") == 2
    assert "mc_conv2d_winograd(" not in rest
    np_pm = ml.compile(
        model, ml.backend("numpy", dtype=ml.float64), shapes=shapes, data_keys={"input"}
    )
    params = {k: np.asarray(v) for k, v in c_pm.randomize_params(seed=3).items()}
    params.pop("input", None)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shapes["input"])
    seed = {"output": rng.standard_normal((2, 8, 17, 16))}
    c_out, c_grads = c_pm.evaluate(params, {"input": x}, output_gradients=seed)
    np_out, np_grads = np_pm.evaluate(params, {"input": x}, output_gradients=seed)
    np.testing.assert_allclose(c_out["output"], np_out["output"], rtol=1e-10)
    for key, want in np_grads.items():
        np.testing.assert_allclose(c_grads[key], want, rtol=1e-9, atol=1e-12)
