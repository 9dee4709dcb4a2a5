"""float32 stays float32 on accelerators: the torch backend turns TF32 off around a
CUDA call (and restores the user's switches), the JAX backend asks for the highest
matmul precision off the CPU. The switches themselves are checked here on the CPU;
``tests/backends/test_device.py`` checks the numbers on a GPU."""

from __future__ import annotations

import threading

import pytest


def test_torch_tf32_switches_are_off_inside_calls_and_restored_after():
    torch = pytest.importorskip("torch")
    from mithril_torch.backend import _NoTF32

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    guard = _NoTF32()
    try:
        cudnn.allow_tf32, matmul.allow_tf32 = True, True
        inside = threading.Barrier(3)
        seen = []

        def call() -> None:
            with guard:
                inside.wait()  # all three calls overlap
                seen.append((cudnn.allow_tf32, matmul.allow_tf32))
                inside.wait()

        threads = [threading.Thread(target=call) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert seen == [(False, False)] * 3
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def test_backends_default_to_full_float32():
    pytest.importorskip("torch")
    pytest.importorskip("jax")
    import mithril_core as ml

    assert ml.backend("torch").allow_tf32 is False
    assert ml.backend("jax").matmul_precision == "highest"
    assert ml.backend("jax", matmul_precision="high").matmul_precision == "high"
