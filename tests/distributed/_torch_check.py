"""Sharded Torch evaluation (DTensor) on 2 gloo processes via run_parallel, checked
against the unsharded run. Run by test_sharding.py in a subprocess; prints
``RESULT {json}`` lines."""

from __future__ import annotations

import time

from _common import (
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

import mithril_core as ml

WORLD = 2


def evaluate(backend, shardings, params, data, seed="output"):
    # jit=False: the reference runs eagerly too (sharded models always do).
    pm = ml.compile(
        mlp_with_loss(),
        backend,
        shapes=SHAPES,
        data_keys=DATA_KEYS,
        jit=False,
        shardings=shardings,
    )
    specs = shardings or {}
    on_device = {k: backend.array(v, sharding=specs.get(k)) for k, v in params.items()}
    inputs = {
        k: backend.array(data[k], sharding=specs.get(k)) for k in ("input", "target")
    }
    cotangent = (
        backend.array(data["output_cotangent"])
        if seed == "output"
        else backend.ones(())
    )
    outputs, grads = pm.evaluate(on_device, inputs, {seed: cotangent})
    return pm, on_device, inputs, outputs, grads


def train(backend, shardings, params, data):
    pm, params, inputs, _, _ = evaluate(backend, shardings, params, data, seed="loss")
    losses = []
    for _ in range(STEPS):
        outputs, grads = pm.evaluate(params, inputs, {"loss": backend.ones(())})
        losses.append(float(backend.to_numpy(outputs["loss"])))
        params = {k: params[k] - LR * grads[k] for k in params}
    return losses, params


def full(backend, values):
    return {k: backend.to_numpy(v) for k, v in values.items()}


def local(value):
    return value.to_local().numpy()


def placements(value):
    return [str(p) for p in value.placements]


def worker(params, data):
    """One rank: every evaluation in one process group (spawning is the slow part)."""
    import torch.distributed as dist

    rank = dist.get_rank()
    result = {"rank": rank}

    # Data parallel: batch split over the 2 ranks, parameters replicated.
    dp = ml.TorchBackend(dtype=ml.float32, device_mesh=(WORLD,))
    pm, on_device, inputs, out, grads = evaluate(dp, DATA_PARALLEL, params, data)
    forward_only = pm.evaluate(on_device, inputs)  # no gradients
    result["dp"] = {
        "outputs": full(dp, out),
        "forward_only": full(dp, forward_only),
        "grads": full(dp, grads),
        "input_local": local(inputs["input"]),
        "output_local": local(out["output"]),
        "grad_placements": {k: placements(g) for k, g in grads.items()},
        "output_placements": placements(out["output"]),
        "grads_local": {k: local(g) for k, g in grads.items()},
    }

    # Tensor parallel: column- then row-parallel MLP over a 2-way "model" axis.
    tp = ml.TorchBackend(
        dtype=ml.float32, device_mesh=(WORLD,), mesh_axis_names=("model",)
    )
    _, on_device, _, out, grads = evaluate(tp, TENSOR_PARALLEL, params, data)
    result["tp"] = {
        "outputs": full(tp, out),
        "grads": full(tp, grads),
        "params_local": {k: local(v) for k, v in on_device.items()},
        "grads_local": {k: local(g) for k, g in grads.items()},
        "grad_placements": {k: placements(g) for k, g in grads.items()},
        "output_placements": placements(out["output"]),
    }

    # Data-parallel training.
    losses, trained = train(dp, DATA_PARALLEL, params, data)
    result["train"] = {"losses": losses, "params": full(dp, trained)}
    return result


def main():
    from mithril_torch.distributed import run_parallel

    data = host_data()
    plain = ml.TorchBackend(dtype=ml.float32)
    reference = ml.compile(
        mlp_with_loss(), plain, shapes=SHAPES, data_keys=DATA_KEYS, jit=False
    )
    params = host_params(reference)
    _, _, _, ref_out, ref_grads = evaluate(plain, None, params, data)
    ref_out, ref_grads = full(plain, ref_out), full(plain, ref_grads)
    ref_losses, ref_trained = train(plain, None, params, data)
    ref_trained = full(plain, ref_trained)

    started = time.perf_counter()
    ranks = run_parallel(worker, WORLD, params, data)
    print(f"run_parallel: {time.perf_counter() - started:.1f} s", flush=True)
    assert [r["rank"] for r in ranks] == list(range(WORLD))
    half_batch = data["input"].shape[0] // WORLD
    for result in ranks:
        rank = result["rank"]
        rows = slice(rank * half_batch, (rank + 1) * half_batch)
        dp = result["dp"]
        report(
            case=f"torch_data_parallel_rank{rank}",
            output_error=max_error(dp["outputs"], ref_out),
            forward_only_error=max_error(dp["forward_only"], ref_out),
            grad_error=max_error(dp["grads"], ref_grads),
            input_slice_error=max_error(
                {"x": dp["input_local"]}, {"x": data["input"][rows]}
            ),
            output_slice_error=max_error(
                {"y": dp["output_local"]}, {"y": ref_out["output"][rows]}
            ),
            local_grad_error=max_error(dp["grads_local"], ref_grads),
            grad_placements=dp["grad_placements"],
            output_placements=dp["output_placements"],
        )
        tp = result["tp"]
        hidden = params["linear_0_weight"].shape[0] // WORLD
        cols = slice(rank * hidden, (rank + 1) * hidden)
        expected_local = {
            "linear_0_weight": params["linear_0_weight"][cols],
            "linear_0_bias": params["linear_0_bias"][cols],
            "linear_1_weight": params["linear_1_weight"][:, cols],
            "linear_1_bias": params["linear_1_bias"],
        }
        expected_grads_local = {
            "linear_0_weight": ref_grads["linear_0_weight"][cols],
            "linear_0_bias": ref_grads["linear_0_bias"][cols],
            "linear_1_weight": ref_grads["linear_1_weight"][:, cols],
            "linear_1_bias": ref_grads["linear_1_bias"],
        }
        report(
            case=f"torch_tensor_parallel_rank{rank}",
            output_error=max_error(tp["outputs"], ref_out),
            grad_error=max_error(tp["grads"], ref_grads),
            param_slice_error=max_error(tp["params_local"], expected_local),
            local_grad_error=max_error(tp["grads_local"], expected_grads_local),
            local_shapes={k: list(v.shape) for k, v in tp["params_local"].items()},
            grad_placements=tp["grad_placements"],
            output_placements=tp["output_placements"],
        )
        train_result = result["train"]
        report(
            case=f"torch_data_parallel_training_rank{rank}",
            loss_error=max(
                abs(a - b)
                for a, b in zip(train_result["losses"], ref_losses, strict=True)
            ),
            param_error=max_error(train_result["params"], ref_trained),
            losses=train_result["losses"],
        )


if __name__ == "__main__":
    main()
