"""Sharded JAX evaluation on 4 forced host CPU devices, checked against the unsharded
run. Run by test_sharding.py in a subprocess; prints ``RESULT {json}`` lines."""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from _common import (  # noqa: E402
    DATA_KEYS,
    DATA_PARALLEL,
    LR,
    SHAPES,
    STEPS,
    TENSOR_PARALLEL,
    host_data,
    host_params,
    max_error,
    mlp_with_loss,
    report,
)

import mithril_core as ml  # noqa: E402


def run(backend, shardings, params, data, jit=True):
    """Outputs and gradients (seeded at ``output``) of one evaluation, and the
    evaluated arrays themselves (for placement checks)."""
    pm = ml.compile(
        mlp_with_loss(),
        backend,
        shapes=SHAPES,
        data_keys=DATA_KEYS,
        jit=jit,
        shardings=shardings,
    )
    specs = shardings or {}
    on_device = {k: backend.array(v, sharding=specs.get(k)) for k, v in params.items()}
    inputs = {
        k: backend.array(data[k], sharding=specs.get(k)) for k in ("input", "target")
    }
    cotangent = backend.array(data["output_cotangent"])
    outputs, grads = pm.evaluate(on_device, inputs, {"output": cotangent})
    return pm, on_device, inputs, outputs, grads


def to_host(values):
    return {k: np.asarray(v) for k, v in values.items()}


def shards_match(array, full):
    """Every addressable shard holds exactly ``full[shard.index]``; returns the set of
    distinct shard shapes."""
    for shard in array.addressable_shards:
        assert np.array_equal(np.asarray(shard.data), full[shard.index]), shard.index
    return sorted({tuple(s.data.shape) for s in array.addressable_shards})


def train(backend, shardings, params, data):
    pm = ml.compile(
        mlp_with_loss(),
        backend,
        shapes=SHAPES,
        data_keys=DATA_KEYS,
        shardings=shardings,
    )
    specs = shardings or {}
    params = {k: backend.array(v, sharding=specs.get(k)) for k, v in params.items()}
    inputs = {
        k: backend.array(data[k], sharding=specs.get(k)) for k in ("input", "target")
    }
    losses = []
    for _ in range(STEPS):
        outputs, grads = pm.evaluate(params, inputs, {"loss": backend.ones(())})
        losses.append(float(outputs["loss"]))
        params = {k: params[k] - LR * grads[k] for k in params}
    return losses, to_host(params), params


def main():
    assert len(jax.devices("cpu")) == 4, jax.devices()
    data = host_data()
    plain = ml.JaxBackend(dtype=ml.float32)
    reference_pm = ml.compile(
        mlp_with_loss(), plain, shapes=SHAPES, data_keys=DATA_KEYS
    )
    params = host_params(reference_pm)
    _, _, _, ref_out, ref_grads = run(plain, None, params, data)
    ref_out, ref_grads = to_host(ref_out), to_host(ref_grads)

    # 1. Data parallel over 4 devices (jitted and eager).
    dp = ml.JaxBackend(dtype=ml.float32, device_mesh=(4,))
    for jit in (True, False):
        pm, on_device, inputs, out, grads = run(
            dp, DATA_PARALLEL, params, data, jit=jit
        )
        forward_only = to_host(pm.evaluate(on_device, inputs))
        shapes = shards_match(inputs["input"], data["input"])
        out_shapes = shards_match(out["output"], ref_out["output"])
        grad_specs = {k: str(g.sharding.spec) for k, g in grads.items()}
        replicated = all(g.sharding.is_fully_replicated for g in grads.values())
        report(
            case=f"jax_data_parallel_jit={jit}",
            output_error=max_error(to_host(out), ref_out),
            forward_only_error=max_error(forward_only, ref_out),
            grad_error=max_error(to_host(grads), ref_grads),
            input_shard_shapes=shapes,
            output_shard_shapes=out_shapes,
            grads_replicated=replicated,
            grad_specs=grad_specs,
        )

    # 2. Tensor parallel: 4-way model axis.
    tp = ml.JaxBackend(dtype=ml.float32, device_mesh=(4,), mesh_axis_names=("model",))
    _, on_device, _, out, grads = run(tp, TENSOR_PARALLEL, params, data)
    report(
        case="jax_tensor_parallel",
        output_error=max_error(to_host(out), ref_out),
        grad_error=max_error(to_host(grads), ref_grads),
        w0_shard_shapes=shards_match(
            on_device["linear_0_weight"], params["linear_0_weight"]
        ),
        w1_shard_shapes=shards_match(
            on_device["linear_1_weight"], params["linear_1_weight"]
        ),
        w0_grad_shard_shapes=shards_match(
            grads["linear_0_weight"], ref_grads["linear_0_weight"]
        ),
        w1_grad_shard_shapes=shards_match(
            grads["linear_1_weight"], ref_grads["linear_1_weight"]
        ),
        w0_grad_spec=str(grads["linear_0_weight"].sharding.spec),
    )

    # 3. Both: 2 (data) x 2 (model).
    both = ml.JaxBackend(dtype=ml.float32, device_mesh=(2, 2))
    _, on_device, inputs, out, grads = run(
        both, {**DATA_PARALLEL, **TENSOR_PARALLEL}, params, data
    )
    report(
        case="jax_data_and_tensor_parallel",
        output_error=max_error(to_host(out), ref_out),
        grad_error=max_error(to_host(grads), ref_grads),
        w0_shard_shapes=shards_match(
            on_device["linear_0_weight"], params["linear_0_weight"]
        ),
        input_shard_shapes=shards_match(inputs["input"], data["input"]),
    )

    # 4. Data-parallel training: SGD steps match the unsharded ones.
    ref_losses, ref_params, _ = train(plain, None, params, data)
    losses, trained, on_mesh = train(dp, DATA_PARALLEL, params, data)
    report(
        case="jax_data_parallel_training",
        loss_error=max(abs(a - b) for a, b in zip(losses, ref_losses, strict=True)),
        param_error=max_error(trained, ref_params),
        losses=losses,
        params_replicated=all(p.sharding.is_fully_replicated for p in on_mesh.values()),
    )


if __name__ == "__main__":
    main()
