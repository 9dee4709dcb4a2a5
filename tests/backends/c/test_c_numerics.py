"""The C backend's fast paths give the reference numbers: batch-norm parameters fused
into one pass over the activations, sums added up in double, convolutions over chunks
of small images, and the AVX-512 float32 matrix products. References are float64
(NumPy, or PyTorch autograd) computed here."""

from __future__ import annotations

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import BatchNorm2D, Convolution2D, IOKey, Model, Relu

pytest.importorskip("mithril_c")

RNG = np.random.default_rng(7)


def _conv_bn_relu() -> Model:
    model = Model()
    model |= Convolution2D(8, 3, padding=1, use_bias=False, name="conv")(input="input")
    model += BatchNorm2D(8, name="bn")
    model += Relu()(output=IOKey("output"))
    return model


def test_batch_norm_is_one_pass_over_the_activations():
    """In inference the per-channel work (sqrt of the variance ...) is scheduled
    before the convolution's output is read, so the normalisation and the ReLU are
    one loop (they were four, each a full pass over memory)."""
    pm = ml.compile(
        _conv_bn_relu(),
        ml.CBackend(),
        shapes={"input": [2, 4, 9, 9]},
        data_keys={"input"},
        inference=True,
    )
    forward = pm.code.split("int mc_forward(")[1].split("\n}\n")[0]
    assert "/* subtract, divide, multiply, add, relu */" in forward
    # One pass over the 2 x 8 x 81 activations (there were four).
    assert forward.count("i2 < 81;") == 1, forward
    params = {
        "conv_weight": RNG.standard_normal((8, 4, 3, 3)).astype(np.float32),
        "bn_weight": RNG.uniform(0.5, 2, 8).astype(np.float32),
        "bn_bias": RNG.standard_normal(8).astype(np.float32),
        "bn_running_mean": RNG.standard_normal(8).astype(np.float32),
        "bn_running_var": RNG.uniform(0.5, 2, 8).astype(np.float32),
    }
    x = RNG.standard_normal((2, 4, 9, 9)).astype(np.float32)
    out = pm.evaluate(params, {"input": x})["output"]
    p = {k: v.astype(np.float64) for k, v in params.items()}
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    y = np.zeros((2, 8, 9, 9))
    for i in range(3):
        for j in range(3):
            window = padded[:, :, i : i + 9, j : j + 9]
            y += np.einsum("ncij,fc->nfij", window, p["conv_weight"][:, :, i, j])
    c = (slice(None), None, None)
    y = (y - p["bn_running_mean"][c]) / np.sqrt(p["bn_running_var"][c] + 1e-5)
    y = np.maximum(y * p["bn_weight"][c] + p["bn_bias"][c], 0)
    np.testing.assert_allclose(out, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [(0, 2), 1, (0, 1, 2)], ids=str)
def test_float32_sums_of_many_nearly_equal_values_stay_exact(axis):
    """A running float32 sum of 40,000 values near 1 drifts by ~1e-4 of itself
    (sequential rounding is biased); the C backend adds up in double, like NumPy's
    pairwise sums keeps the error at float32 rounding of the result."""
    x = (1 + 1e-3 * RNG.standard_normal((200, 200, 4))).astype(np.float32)
    model = Model()
    model |= ml.models.Mean(axis=axis)(input="input", output=IOKey("output"))
    pm = ml.compile(model, ml.CBackend(), shapes={"input": list(x.shape)})
    got = pm.evaluate({}, {"input": x})["output"]
    want = x.astype(np.float64).mean(axis=axis)
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-7


def test_batch_norm_training_gradient_matches_float64():
    """Through a training batch norm the input gradient is a small difference of
    large sums; float32 running sums made it 1e-2 off (ResNet-18's first weight
    gradient). Now it is within float32 rounding of the float64 gradient."""
    torch = pytest.importorskip("torch")
    x = (3 + RNG.standard_normal((8, 4, 24, 24))).astype(np.float32)
    params = {
        "bn_weight": RNG.uniform(0.5, 2, 4).astype(np.float32),
        "bn_bias": np.zeros(4, np.float32),
        "bn_running_mean": np.zeros(4, np.float32),
        "bn_running_var": np.ones(4, np.float32),
    }
    scale = RNG.standard_normal(x.shape[1:]).astype(np.float32)
    seed = {"output": np.array(1.0, np.float32)}
    # d(sum(bn(x) * scale))/dx through the output gradient of a weighted sum.
    weighted = Model()
    weighted |= BatchNorm2D(4, name="bn")(input="input")
    weighted += ml.models.Multiply()(right="scale")
    weighted += ml.models.Sum()(output=IOKey("output"))
    pm = ml.compile(
        weighted,
        ml.CBackend(),
        shapes={"input": list(x.shape)},
        data_keys={"scale"},
        inference=False,
    )
    _, grads = pm.evaluate(params, {"input": x, "scale": scale}, output_gradients=seed)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(params["bn_weight"], dtype=torch.float64)
    y = torch.nn.functional.batch_norm(xt, None, None, w, None, training=True)
    (y * torch.tensor(scale, dtype=torch.float64)).sum().backward()
    want = xt.grad.numpy()
    assert np.abs(grads["input"] - want).max() / np.abs(want).max() < 1e-4


def test_batch_norm_training_statistics_are_computed_once():
    """A training batch norm's mean, its variance (biased, normalising) and the
    unbiased variance of the running estimate share one mean pass and one pass of
    squared deviations (there were three and two); each matches float64."""
    x = (2 + RNG.standard_normal((6, 5, 7, 7))).astype(np.float32)
    model = Model()
    model |= BatchNorm2D(5, name="bn")(input="input", output=IOKey("output"))
    pm = ml.compile(model, ml.CBackend(), shapes={"input": list(x.shape)})
    forward = pm.code.split("int mc_forward_train(")[1].split("\n}\n")[0]
    sums = [line for line in forward.splitlines() if "s += " in line]
    assert len(sums) == 2, sums  # the mean, then the squared deviations
    params = {
        "bn_weight": RNG.uniform(0.5, 2, 5).astype(np.float32),
        "bn_bias": RNG.standard_normal(5).astype(np.float32),
        "bn_running_mean": RNG.standard_normal(5).astype(np.float32),
        "bn_running_var": RNG.uniform(0.5, 2, 5).astype(np.float32),
    }
    seed = {"output": np.ones(x.shape, np.float32)}
    out, _ = pm.evaluate(params, {"input": x}, output_gradients=seed)
    p = {k: v.astype(np.float64) for k, v in params.items()}
    x64 = x.astype(np.float64)
    mean, biased = x64.mean(axis=(0, 2, 3)), x64.var(axis=(0, 2, 3))
    unbiased = x64.var(axis=(0, 2, 3), ddof=1)
    c = (slice(None), None, None)
    y = (x64 - mean[c]) / np.sqrt(biased[c] + 1e-5) * p["bn_weight"][c]
    np.testing.assert_allclose(out["output"], y + p["bn_bias"][c], rtol=1e-5, atol=1e-5)
    running = {
        k.removeprefix("bn_").removesuffix("_updated"): v for k, v in out.items()
    }
    np.testing.assert_allclose(
        running["running_mean"],
        0.9 * p["bn_running_mean"] + 0.1 * mean,
        rtol=1e-6,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        running["running_var"],
        0.9 * p["bn_running_var"] + 0.1 * unbiased,
        rtol=1e-6,
        atol=1e-6,
    )


CONVS = [
    # (batch, in, out, size, kernel, stride, padding, dilation)
    (5, 3, 8, 12, 3, 1, 1, 1),
    (3, 4, 6, 9, 3, 2, 1, 1),
    (4, 6, 5, 7, 1, 2, 0, 1),
    (2, 5, 4, 8, 3, 1, 2, 2),
    (7, 2, 3, 4, 5, 1, 2, 1),
]


@pytest.mark.parametrize("chunk_values", [1 << 21, 300], ids=["whole", "chunks"])
@pytest.mark.parametrize("case", CONVS, ids=str)
def test_convolution_of_image_chunks_matches_torch(monkeypatch, case, chunk_values):
    """Small images go through one product per chunk of images (columns side by
    side); a tiny chunk budget forces chunks of one image and a partial last one."""
    torch = pytest.importorskip("torch")
    from mithril_c.lowerings import nn as c_nn

    monkeypatch.setattr(c_nn, "_CHUNK_VALUES", chunk_values)
    n, cin, cout, size, k, stride, pad, dil = case
    x = RNG.standard_normal((n, cin, size, size))
    w = RNG.standard_normal((cout, cin, k, k)) * 0.3
    model = Model()
    model |= Convolution2D(
        cout, k, stride=stride, padding=pad, dilation=dil, use_bias=False
    )(input="input", weight="w", output=IOKey("output"))
    pm = ml.compile(
        model,
        ml.CBackend(dtype=ml.float64),
        shapes={"input": list(x.shape)},
        inference=False,
    )
    assert "mc_conv2d" in pm.code
    g = RNG.standard_normal(pm.shapes["output"])
    out, grads = pm.evaluate({"w": w}, {"input": x}, output_gradients={"output": g})
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=pad, dilation=dil)
    yt.backward(torch.tensor(g))
    np.testing.assert_allclose(out["output"], yt.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(grads["w"], wt.grad.numpy(), atol=1e-12)
    np.testing.assert_allclose(grads["input"], xt.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize(
    ("m", "n", "k"),
    [
        (1, 1, 1),
        (13, 17, 5),
        (12, 32, 256),
        (25, 33, 257),
        (240, 70, 300),
        (3, 2100, 40),
        (250, 9, 600),
    ],
    ids=str,
)
@pytest.mark.parametrize("transposed", [False, True], ids=["ab", "a_bT"])
def test_float32_matrix_products_match_float64(m, n, k, transposed):
    """Edges of the 12 x 32 AVX-512 tiles, several depth blocks (256), a B stored
    transposed (Linear's weight)."""
    a = RNG.standard_normal((m, k)).astype(np.float32)
    b = RNG.standard_normal((n, k) if transposed else (k, n)).astype(np.float32)
    model = Model()
    if transposed:
        model |= ml.models.Transpose()(input="right", output="right_t")
    model |= ml.models.MatrixMultiply()(
        left="left", right="right_t" if transposed else "right", output=IOKey("output")
    )
    pm = ml.compile(
        model, ml.CBackend(threads=1), shapes={"left": [m, k], "right": list(b.shape)}
    )
    got = pm.evaluate({}, {"left": a, "right": b})["output"]
    b64 = b.astype(np.float64).T if transposed else b.astype(np.float64)
    want = a.astype(np.float64) @ b64
    bound = np.abs(a).astype(np.float64) @ np.abs(b64)
    assert (np.abs(got - want) <= 1e-6 * bound + 1e-30).all()
    split = ml.compile(
        model, ml.CBackend(threads=2), shapes={"left": [m, k], "right": list(b.shape)}
    )
    np.testing.assert_array_equal(
        split.evaluate({}, {"left": a, "right": b})["output"], got
    )


def test_the_backend_compiles_for_the_machine_isa(monkeypatch):
    from mithril_c import _build

    monkeypatch.setattr(_build, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert _build.isa_flags() == ("-DMC_SINGLE_TARGET", "-mavx512f")
    monkeypatch.setattr(_build, "cpu_flags", lambda: frozenset({"sse2", "avx2"}))
    assert _build.isa_flags() == ("-DMC_SINGLE_TARGET", "-mavx2")
    monkeypatch.setattr(_build, "cpu_flags", lambda: frozenset({"sse2"}))
    assert _build.isa_flags() == ("-DMC_SINGLE_TARGET",)
    monkeypatch.setattr(_build, "cpu_flags", lambda: None)  # not x86-64 Linux
    assert _build.isa_flags() == ()


def _max_pool_reference(x, kernel, stride, padding, dilation):
    """Max pooling and its VJP's routing in float64: each window scanned row-major,
    padding skipped; the first maximum wins, a NaN over any number."""
    n, c, h, w = x.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    out = np.full((n, c, oh, ow), -np.inf)
    at = np.full((n, c, oh, ow, 2), -1)
    for b, ch, oy, ox in np.ndindex(n, c, oh, ow):
        for i, j in np.ndindex(*kernel):
            y = oy * stride[0] - padding[0] + i * dilation[0]
            xx = ox * stride[1] - padding[1] + j * dilation[1]
            if not (0 <= y < h and 0 <= xx < w):
                continue
            v, top = x[b, ch, y, xx], out[b, ch, oy, ox]
            if at[b, ch, oy, ox, 0] < 0 or v > top or (np.isnan(v) and top == top):
                out[b, ch, oy, ox] = v
                at[b, ch, oy, ox] = (y, xx)
    return out, at


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "dilation"),
    [((3, 3), (2, 2), (1, 1), (1, 1)), ((2, 3), (1, 2), (1, 1), (2, 1))],
)
def test_max_pooling_routes_gradients_to_the_first_maximum(
    kernel, stride, padding, dilation
):
    # Small integers: many ties; a few NaNs, which win their windows.
    from mithril_core.models import MaxPool2D

    x = RNG.integers(0, 3, (2, 3, 9, 8)).astype(np.float64)
    x.flat[RNG.choice(x.size, 5, replace=False)] = np.nan
    model = Model()
    model |= MaxPool2D(kernel, stride, padding, dilation)(
        input="input", output=IOKey("output")
    )
    pm = ml.compile(model, ml.CBackend(dtype=ml.float64), shapes={"input": x.shape})
    expected, at = _max_pool_reference(x, kernel, stride, padding, dilation)
    seed = RNG.standard_normal(expected.shape)
    out, grads = pm.evaluate({"input": x}, output_gradients={"output": seed})
    np.testing.assert_array_equal(out["output"], expected)
    routed = np.zeros_like(x)
    for b, ch, oy, ox in np.ndindex(*expected.shape):
        y, xx = at[b, ch, oy, ox]
        routed[b, ch, y, xx] += seed[b, ch, oy, ox]
    np.testing.assert_allclose(grads["input"], routed, rtol=1e-12, atol=1e-12)
    inference = ml.compile(
        model, ml.CBackend(dtype=ml.float64), shapes={"input": x.shape}, inference=True
    )
    np.testing.assert_array_equal(
        inference.evaluate({}, {"input": x})["output"], expected
    )


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_over_a_long_row_matches_float64(op):
    """A row as long as GPT-2's vocabulary: the normalising sum is added up in double
    (a float32 running sum of 50,000 terms drifts by ~1e-5 of itself)."""
    x = RNG.uniform(-0.1, 0.1, (2, 50257)).astype(np.float32)
    seed = RNG.standard_normal(x.shape).astype(np.float32)
    model = Model()
    model |= getattr(ml.models, op)(axis=-1)(input="input", output=IOKey("output"))
    pm = ml.compile(model, ml.CBackend(), shapes={"input": list(x.shape)})
    out, grads = pm.evaluate({"input": x}, output_gradients={"output": seed})
    x64, g64 = x.astype(np.float64), seed.astype(np.float64)
    shifted = x64 - x64.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    p = np.exp(log_p)
    if op == "Softmax":
        want = p
        grad = p * (g64 - (g64 * p).sum(axis=-1, keepdims=True))
    else:
        want = log_p
        grad = g64 - p * g64.sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(out["output"], want, rtol=2e-6)
    scale = np.abs(grad).max()
    assert np.abs(grads["input"] - grad).max() < 2e-6 * scale
