"""Numerics under hostile values, on every backend (issue #10, items 5 and 9).

- Embedding ids and cross-entropy classes computed inside the model (so no check of
  the data inputs sees them) never crash the process, never read another row and never
  write into another sample's gradient. JAX and MLX cannot raise inside a compiled
  function: there an id out of range gives a NaN row (a NaN loss) and no gradient, and
  every in-range sample keeps its exact value and gradient. The other backends raise.
  Each case runs in a subprocess, since the failure mode was a segfault.
- Power at the points NumPy's own forward warns about (0 ** -1, (-0.5) ** 0.5), which
  the conformance table cannot hold: values and gradients as PyTorch autograd's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import IOKey, Model
from mithril_core.plugins import get_registry
from mithril_core.primitives import Power

# Backends whose kernels meet computed indices without raising (documented behaviour).
NAN_ON_COMPUTED_INDEX = {"jax", "mlx"}

ROWS = 5
IDS = [0, 3, 1, 4]
OFFSETS = {
    "past_end": [0, ROWS - 3, 0, 0],  # id == rows
    "far": [0, 10**6, 0, 0],
    "huge": [0, 2**40, 0, 0],
    "minus_one": [0, 0, -2, 0],
    "far_negative": [0, -(10**6), 0, 0],
}

SNIPPET = """
import json
import numpy as np
import mithril_core as ml
from mithril_core.models import IOKey, Model, Tensor
from mithril_core.primitives import Add, CrossEntropy, Embedding

name, op, jit, ids, offsets, rows = {args}
backend = ml.backend(name, dtype=ml.float32)
model = Model()
model |= Add()(
    left=IOKey("ids", type=Tensor[int]), right=IOKey("offset", type=Tensor[int]),
    output="computed",
)
if op == "embedding":
    model |= Embedding()(
        input="computed", weight=IOKey("weight"), output=IOKey("output")
    )
    weight = (np.arange(rows * 3).reshape(rows, 3) / 7).astype(np.float32)
    grad_shape = (len(ids), 3)
else:
    model |= CrossEntropy()(
        input=IOKey("weight"), target="computed", output=IOKey("output")
    )
    weight = np.linspace(-1, 1, len(ids) * rows, dtype=np.float32)
    weight = weight.reshape(len(ids), rows)
    grad_shape = (len(ids),)
pm = ml.compile(
    model, backend, shapes={{"ids": [len(ids)], "offset": [len(ids)],
    "weight": list(weight.shape)}}, trainable_keys={{"weight"}},
    data_keys={{"ids", "offset"}}, jit=jit,
)
out_grad = ((np.arange(np.prod(grad_shape)).reshape(grad_shape) + 1.0) / 10).astype(
    np.float32
)
for case, offset in offsets.items():
    params = {{"weight": backend.array(weight)}}
    data = {{
        "ids": backend.array(np.array(ids)),
        "offset": backend.array(np.array(offset)),
    }}
    try:
        outputs, grads = pm.evaluate(
            params, data, output_gradients={{"output": backend.array(out_grad)}}
        )
        result = {{
            "output": backend.to_numpy(outputs["output"]).tolist(),
            "grad": backend.to_numpy(grads["weight"]).tolist(),
        }}
    except Exception as exc:
        result = {{"raised": type(exc).__name__, "message": str(exc),
                  "index_error": isinstance(exc, (IndexError, RuntimeError))}}
    print("RESULT", case, json.dumps(result, allow_nan=True), flush=True)
print("OK")
"""


def _computed_index_params() -> list[Any]:
    params = []
    for name in ml.available_backends():
        if not get_registry().backend_class(name).supports_gradients:
            continue  # these cases take gradients
        for op in ("embedding", "cross_entropy"):
            params.append(pytest.param(name, op, False, id=f"{name}-{op}"))
            if name in NAN_ON_COMPUTED_INDEX:
                params.append(pytest.param(name, op, True, id=f"{name}-{op}-jit"))
    return params


def _expected(op: str, ids: np.ndarray, out_grad: np.ndarray) -> tuple[Any, Any]:
    """Float64 value and weight gradient, in-range samples only (NaN value, no
    gradient for the others)."""
    valid = (ids >= 0) & (ids < ROWS)
    if op == "embedding":
        weight = np.arange(ROWS * 3, dtype=np.float64).reshape(ROWS, 3) / 7
        value = np.where(valid[:, None], weight[np.where(valid, ids, 0)], np.nan)
        grad = np.zeros_like(weight)
        np.add.at(grad, ids[valid], out_grad[valid])
        return value, grad
    logits = np.linspace(-1, 1, len(ids) * ROWS).reshape(len(ids), ROWS)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_q = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    safe = np.where(valid, ids, 0)
    value = np.where(valid, -log_q[np.arange(len(ids)), safe], np.nan)
    onehot = np.eye(ROWS)[safe]
    grad = np.where(valid[:, None], (np.exp(log_q) - onehot) * out_grad[:, None], 0.0)
    return value, grad


@pytest.mark.parametrize(("backend_name", "op", "jit"), _computed_index_params())
def test_computed_index_out_of_range_never_crashes_or_corrupts(
    backend_name: str,
    op: str,
    jit: bool,
    isolated: Callable[..., Any],
    clean_exit: Callable[[Any], None],
) -> None:
    args = (backend_name, op, jit, IDS, OFFSETS, ROWS)
    outcome = isolated(SNIPPET.format(args=repr(args)), timeout=300)
    clean_exit(outcome)
    results = {
        line.split(" ", 2)[1]: json.loads(line.split(" ", 2)[2])
        for line in outcome.stdout.splitlines()
        if line.startswith("RESULT ")
    }
    assert set(results) == set(OFFSETS), outcome.stdout
    shape = (len(IDS), 3) if op == "embedding" else (len(IDS),)
    out_grad = (np.arange(np.prod(shape)).reshape(shape) + 1.0) / 10
    tolerance = {"rtol": 1e-5, "atol": 1e-6}  # float32, values of order 1
    for case, offset in OFFSETS.items():
        result = results[case]
        if backend_name not in NAN_ON_COMPUTED_INDEX:
            assert "raised" in result, f"{case}: no error, {result}"
            assert result["index_error"], f"{case}: {result}"
            continue
        assert "raised" not in result, f"{case}: {result}"
        value, grad = _expected(op, np.array(IDS) + np.array(offset), out_grad)
        np.testing.assert_allclose(result["output"], value, **tolerance, err_msg=case)
        np.testing.assert_allclose(result["grad"], grad, **tolerance, err_msg=case)


MLX_DIRECT = """
import mlx.core as mx
from mithril_mlx.lowerings.loss import cross_entropy
from mithril_mlx.lowerings.nn import embedding

weight = mx.arange(12, dtype=mx.float32).reshape(4, 3)
ids = mx.array([0, 10**9, -(10**9), 3])
logits = mx.zeros((4, 4))
targets = mx.array([0, 10**9, -(10**9), 2])

def run(ids, weight, logits, targets):
    _, (g_weight,) = mx.vjp(lambda w: embedding(ids, w), [weight], [mx.ones((4, 3))])
    _, (g_logits,) = mx.vjp(
        lambda x: cross_entropy(x, targets, 1, "logits"), [logits], [mx.ones((4,))]
    )
    return embedding(ids, weight), g_weight, cross_entropy(logits, targets, 1,
        "logits"), g_logits

for fn in (run, mx.compile(run)):
    rows, g_weight, loss, g_logits = fn(ids, weight, logits, targets)
    assert mx.isnan(rows[1:3]).all().item() and not mx.isnan(rows[0]).any().item()
    assert g_weight.tolist() == [[1.0] * 3, [0.0] * 3, [0.0] * 3, [1.0] * 3]
    assert mx.isnan(loss[1:3]).all().item() and not mx.isnan(loss[0]).item()
    assert g_logits[1:3].tolist() == [[0.0] * 4] * 2
    assert g_logits[0].tolist() == [-0.75, 0.25, 0.25, 0.25]
print("OK")
"""


def test_mlx_lowerings_never_gather_out_of_bounds(
    isolated: Callable[..., Any], clean_exit: Callable[[Any], None]
) -> None:
    """The lowerings themselves, called directly (no evaluate, no check of inputs):
    ids of 10**9 and -10**9 crashed the process with a segfault."""
    if "mlx" not in ml.available_backends():
        pytest.skip("mlx is not installed")
    outcome = isolated(MLX_DIRECT)
    clean_exit(outcome)
    assert outcome.stdout.strip().endswith("OK")


# -- power where NumPy's forward warns --
def _torch_power(base: np.ndarray, exponent: np.ndarray, g: np.ndarray) -> Any:
    import torch

    b = torch.tensor(base, requires_grad=True)
    e = torch.tensor(exponent, requires_grad=True)
    y = b**e
    gb, ge = torch.autograd.grad(y, [b, e], torch.from_numpy(g))
    return y.detach().numpy(), gb.numpy(), ge.numpy()


@pytest.mark.filterwarnings(
    "ignore:divide by zero encountered in power:RuntimeWarning",
    "ignore:invalid value encountered in power:RuntimeWarning",
)
def test_power_at_pole_and_negative_base_matches_torch(backend_name: str) -> None:
    """0 ** -1 (inf; d/db -inf, d/de -inf) and (-0.5) ** 0.5 (NaN everywhere)."""
    backend = ml.backend(backend_name, dtype=ml.float32)
    base = np.array([0.0, -0.5, 0.0, 2.0], dtype=np.float32)
    exponent = np.array([-1.0, 0.5, -2.0, -1.0], dtype=np.float32)
    g = np.array([1.5, 2.0, -1.0, 0.5], dtype=np.float32)
    model = Model()
    model |= Power()(base=IOKey("base"), exponent=IOKey("exponent"), output=IOKey("y"))
    pm = ml.compile(
        model,
        backend,
        shapes={"base": [4], "exponent": [4]},
        trainable_keys={"base", "exponent"},
        jit=False,
    )
    outputs, grads = pm.evaluate(
        {"base": backend.array(base), "exponent": backend.array(exponent)},
        output_gradients={"y": backend.array(g)},
    )
    y, gb, ge = _torch_power(
        base.astype(np.float64), exponent.astype(np.float64), g.astype(np.float64)
    )
    tolerance = {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(backend.to_numpy(outputs["y"]), y, **tolerance)
    np.testing.assert_allclose(backend.to_numpy(grads["base"]), gb, **tolerance)
    np.testing.assert_allclose(backend.to_numpy(grads["exponent"]), ge, **tolerance)
