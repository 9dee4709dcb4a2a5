"""The generated code and kernels built with AddressSanitizer + UBSan run an MLP forward
and backward cleanly.

Python itself is not instrumented, so the check runs in a subprocess with libasan
preloaded (``LD_PRELOAD=$(gcc -print-file-name=libasan.so)``, leak checks off: the
interpreter's own allocations at exit are not ours). A deliberately out-of-bounds
kernel proves the sanitizer is live.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mithril_c")

pytestmark = pytest.mark.sanitize

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import mithril_core as ml
    from mithril_core import models as mm
    from mithril_core.models import IOKey, Linear, Model, Relu, Softmax, Tanh

    if sys.argv[1] == "broken":
        from mithril_core.plugins import get_registry

        table = dict(get_registry().lowerings("c"))
        table["relu"] = ("(&{0})[1 << 20]", ("{g}",))
        get_registry()._lowerings["c"] = table
    flags = ("-fsanitize=address,undefined", "-fno-omit-frame-pointer",
             "-fno-sanitize-recover=all", "-O1")
    backend = ml.CBackend(dtype=ml.float64, extra_cflags=flags, extra_ldflags=flags[:1])
    model = Model()
    model += Linear(16)(input="input")
    model += Relu()
    model += Linear(8)
    model += Tanh()
    model += Linear(4)
    model += Softmax(axis=-1)(output=IOKey("output"))
    pm = ml.compile(model, backend, shapes={"input": [5, 3]}, data_keys={"input"})
    params = pm.randomize_params()
    x = np.random.default_rng(0).standard_normal((5, 3))
    seed = np.random.default_rng(1).standard_normal((5, 4))
    for _ in range(3):
        out, grads = pm.evaluate(
            params, {"input": x}, output_gradients={"output": seed}
        )
        pm.evaluate(params, {"input": x})
    assert np.isfinite(out["output"]).all()
    assert all(np.isfinite(g).all() for g in grads.values())
    if sys.argv[1] == "mlp":
        print("clean")
        sys.exit(0)

    # A CNN: convolutions (padded, strided, grouped, pointwise), pooling, embedding,
    # padding, attention, dropout and losses, forward and backward.
    model = Model()
    model += mm.Convolution2D(out_channels=6, kernel_size=3, padding=1)(
        input="input"
    )
    model += mm.Relu()
    model += mm.MaxPool2D(kernel_size=3, stride=2, padding=1, dilation=1)
    model += mm.Pad(((0, 0), (0, 0), (1, 2), (2, 1)), mode="reflect")
    model += mm.Convolution2D(out_channels=4, kernel_size=(3, 2), stride=(2, 1),
                              dilation=(1, 2), groups=2)
    model += mm.Convolution2D(out_channels=4, kernel_size=1)
    model += mm.AvgPool2D(kernel_size=2, stride=1, padding=1)
    model += mm.AdaptiveAvgPool2D((3, 2))
    model += mm.Dropout(0.3)
    model += mm.Flatten(start_dim=1)(output="features")
    model |= Linear(5)(input="features", output="logits")
    model |= mm.CrossEntropy()(input="logits", target=IOKey("target"), output="ce")
    model |= mm.Embedding()(input=IOKey("tokens"), weight=IOKey("table"),
                            output="embedded")
    model |= mm.ScaledDotProduct(is_causal=True)(
        query="embedded", key="embedded", value="embedded", output="attended"
    )
    model |= mm.Sum(axis=(1, 2))(input="attended", output="pooled")
    model |= mm.BinaryCrossEntropy(input_type="logits")(
        input="pooled", target=IOKey("labels"), output="bce"
    )
    model |= mm.Add()(left="ce", right="bce", output=IOKey("output"))
    shapes = {"input": [2, 3, 9, 8], "tokens": [2, 5], "table": [7, 6]}
    pm = ml.compile(model, backend, shapes=shapes,
                    data_keys={"input", "target", "tokens", "labels"})
    params = pm.randomize_params()
    rng = np.random.default_rng(2)
    data = {
        "input": rng.standard_normal((2, 3, 9, 8)),
        "target": np.array([1, 4]),
        "tokens": np.array([[0, 6, 2, 2, 1], [5, 4, 3, 6, 0]]),
        "labels": rng.random(2),
    }
    for _ in range(2):
        out, grads = pm.evaluate(params, data, output_gradients={"output": seed[:2, 0]})
        pm.evaluate(params, data)
    assert np.isfinite(out["output"]).all()
    assert all(np.isfinite(g).all() for g in grads.values())
    try:
        pm.evaluate(params, {**data, "tokens": np.full((2, 5), 7)})
    except IndexError:
        pass
    else:
        raise AssertionError("an out-of-range token was not reported")
    print("clean")
    """
)


def _run(mode: str, cache: Path) -> subprocess.CompletedProcess[str]:
    libasan = subprocess.run(
        ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True
    ).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("gcc has no libasan.so")
    env = {
        **os.environ,
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": "detect_leaks=0",
        "MITHRIL_C_CACHE": str(cache),
    }
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_mlp_is_clean_under_asan_and_ubsan(tmp_path: Path) -> None:
    result = _run("mlp", tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "clean" in result.stdout
    assert "runtime error" not in result.stderr


def test_cnn_and_nn_kernels_are_clean_under_asan_and_ubsan(tmp_path: Path) -> None:
    result = _run("nn", tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "clean" in result.stdout
    assert "runtime error" not in result.stderr


def test_sanitizer_catches_an_out_of_bounds_kernel(tmp_path: Path) -> None:
    result = _run("broken", tmp_path)
    assert result.returncode != 0
    assert "AddressSanitizer" in result.stderr or "runtime error" in result.stderr
