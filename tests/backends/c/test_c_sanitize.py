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


def test_sanitizer_catches_an_out_of_bounds_kernel(tmp_path: Path) -> None:
    result = _run("broken", tmp_path)
    assert result.returncode != 0
    assert "AddressSanitizer" in result.stderr or "runtime error" in result.stderr
