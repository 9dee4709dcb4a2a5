"""Data and tensor parallelism on the JAX and Torch distributed engines, on the CPU.

The sharded runs live in scripts run as subprocesses: JAX with 4 forced host devices
(``XLA_FLAGS`` must be set before jax is imported, and must not leak into other tests),
Torch with 2 gloo processes started by ``mithril_torch.distributed.run_parallel``. Each
script prints ``RESULT {json}`` lines, checked here: outputs and gradients equal the
unsharded run, every shard holds the expected slice, and data-parallel SGD follows the
unsharded trajectory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mithril_core as ml
from mithril_core.errors import CompileError

HERE = Path(__file__).parent
TOL = 1e-5


def run_script(name: str, timeout: float = 120) -> dict[str, dict]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, str(HERE / name)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=HERE,
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            results[result.pop("case")] = result
    return results


def test_jax_sharded_mlp_matches_unsharded() -> None:
    pytest.importorskip("jax")
    results = run_script("_jax_check.py")
    assert set(results) == {
        "jax_data_parallel_jit=True",
        "jax_data_parallel_jit=False",
        "jax_tensor_parallel",
        "jax_data_and_tensor_parallel",
        "jax_data_parallel_training",
    }
    for jit in (True, False):
        dp = results[f"jax_data_parallel_jit={jit}"]
        assert dp["output_error"] < TOL and dp["grad_error"] < TOL, dp
        assert dp["forward_only_error"] < TOL, dp
        # 8 rows over 4 devices; gradients of replicated params are all-reduced.
        assert dp["input_shard_shapes"] == [[2, 4]]
        assert dp["output_shard_shapes"] == [[2, 8]]
        assert dp["grads_replicated"], dp
    tp = results["jax_tensor_parallel"]
    assert tp["output_error"] < TOL and tp["grad_error"] < TOL, tp
    # W0 [16, 4] split by rows (column-parallel), W1 [8, 16] by columns (row-parallel);
    # their gradients come back split the same way.
    assert tp["w0_shard_shapes"] == [[4, 4]] and tp["w1_shard_shapes"] == [[8, 4]]
    assert tp["w0_grad_shard_shapes"] == [[4, 4]]
    assert tp["w1_grad_shard_shapes"] == [[8, 4]]
    both = results["jax_data_and_tensor_parallel"]
    assert both["output_error"] < TOL and both["grad_error"] < TOL, both
    assert both["w0_shard_shapes"] == [[8, 4]] and both["input_shard_shapes"] == [
        [4, 4]
    ]
    train = results["jax_data_parallel_training"]
    assert train["loss_error"] < TOL and train["param_error"] < TOL, train
    assert train["losses"][-1] < train["losses"][0]
    assert train["params_replicated"]


def test_torch_sharded_mlp_matches_unsharded() -> None:
    pytest.importorskip("torch")
    results = run_script("_torch_check.py")
    for rank in (0, 1):
        dp = results[f"torch_data_parallel_rank{rank}"]
        assert dp["output_error"] < TOL and dp["grad_error"] < TOL, dp
        assert dp["forward_only_error"] < TOL, dp
        # Each rank holds its half of the batch; gradients are all-reduced (Replicate),
        # so each rank's local gradient is the full one.
        assert dp["input_slice_error"] == 0 and dp["output_slice_error"] < TOL, dp
        assert dp["local_grad_error"] < TOL, dp
        assert dp["output_placements"] == ["S(0)"]
        assert set(map(tuple, dp["grad_placements"].values())) == {("R",)}
        tp = results[f"torch_tensor_parallel_rank{rank}"]
        assert tp["output_error"] < TOL and tp["grad_error"] < TOL, tp
        assert tp["param_slice_error"] == 0, tp
        assert tp["local_grad_error"] < TOL, tp
        assert tp["local_shapes"] == {
            "linear_0_weight": [8, 4],
            "linear_0_bias": [8],
            "linear_1_weight": [8, 8],
            "linear_1_bias": [8],
        }
        assert tp["grad_placements"] == {
            "linear_0_weight": ["S(0)"],
            "linear_0_bias": ["S(0)"],
            "linear_1_weight": ["S(1)"],
            "linear_1_bias": ["R"],
        }
        assert tp["output_placements"] == ["R"]
        train = results[f"torch_data_parallel_training_rank{rank}"]
        assert train["loss_error"] < TOL and train["param_error"] < TOL, train
        assert train["losses"][-1] < train["losses"][0]


# -- errors (in process: no mesh is built) -------------------------------------------
def _mlp() -> ml.models.Model:
    from mithril_core.models import IOKey, Linear, Model, Relu

    model = Model()
    model += Linear(16)(input="input")
    model += Relu()
    model += Linear(8)(output=IOKey("output"))
    return model


@pytest.mark.parametrize("name", ["jax", "torch"])
def test_shardings_need_a_device_mesh(name: str) -> None:
    pytest.importorskip(name)
    backend = ml.backend(name, dtype=ml.float32)
    with pytest.raises(CompileError, match="device mesh"):
        ml.compile(
            _mlp(),
            backend,
            shapes={"input": [8, 4]},
            shardings={"input": ("data", None)},
            jit=False,
        )
    with pytest.raises(CompileError, match="device mesh"):
        backend.array([[1.0, 2.0]], sharding=("data", None))


def test_jax_mesh_larger_than_the_devices_names_the_xla_flag() -> None:
    jax = pytest.importorskip("jax")
    needed = len(jax.devices("cpu")) + 1
    with pytest.raises(CompileError, match="xla_force_host_platform_device_count"):
        ml.JaxBackend(device_mesh=(needed,))
    with pytest.raises(CompileError, match="mesh_axis_names"):
        ml.JaxBackend(device_mesh=(1, 1, 1))


def test_jax_one_device_mesh_and_unknown_axis() -> None:
    pytest.importorskip("jax")
    backend = ml.JaxBackend(dtype=ml.float32, device_mesh=(1,))
    assert backend.mesh_axis_names == ("data",)
    x = backend.ones(4, 2, sharding=("data", None))
    assert tuple(x.sharding.spec) == ("data", None)
    with pytest.raises(CompileError, match="unknown mesh axis 'model'"):
        ml.compile(
            _mlp(),
            backend,
            shapes={"input": [8, 4]},
            shardings={"linear_0_weight": ("model", None)},
        )


def test_torch_mesh_needs_a_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(CompileError, match="torchrun --nproc-per-node=2"):
        ml.TorchBackend(device_mesh=(2,))


def test_mesh_layout_defaults_and_errors() -> None:
    from mithril_core.backends.base import mesh_layout
    from mithril_core.errors import CompileError

    assert mesh_layout("JaxBackend", [2, 2], None) == ((2, 2), ("data", "model"))
    assert mesh_layout("TorchBackend", (4,), ["dp"]) == ((4,), ("dp",))
    with pytest.raises(CompileError, match=r"JaxBackend: device_mesh must be positive"):
        mesh_layout("JaxBackend", (2, 0), None)
    with pytest.raises(CompileError, match=r"name the axes of the 3-D device_mesh"):
        mesh_layout("TorchBackend", (1, 1, 2), None)
    with pytest.raises(CompileError, match=r"\('a', 'a'\) must be 2 distinct names"):
        mesh_layout("JaxBackend", (2, 2), ("a", "a"))
