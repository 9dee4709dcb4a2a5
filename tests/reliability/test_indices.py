"""Out-of-range and negative indices raise IndexRangeError naming the key, on every
backend, with and without jit, instead of wrapping, clamping, giving NaN or crashing.

evaluate checks int inputs that reach an index position (embedding ids, class targets),
directly or through reshape/flatten/transpose/indexing, before the backend runs. Each
backend runs its cases in a fresh interpreter (an unchecked id crashed MLX), which
prints one JSON line per case; the test compares them with NumPy references.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.plugins import get_registry

ROWS, DIM, CLASSES = 5, 3, 4

CHILD = """
import json
import numpy as np
import mithril_core as ml
from mithril_core.models import IOKey, Model, Tensor
from mithril_core.primitives import CrossEntropy, Embedding, Indexer, Reshape

backend = ml.backend({backend!r})
jit = {jit!r}
weight = np.random.default_rng(0).standard_normal(({rows}, {dim}))
logits = np.random.default_rng(1).standard_normal((3, {classes}))


def report(case, run):
    try:
        out = run()
        print(json.dumps({{"case": case, "value": backend.to_numpy(out).tolist()}}))
    except Exception as exc:
        print(json.dumps({{"case": case, "error": type(exc).__name__,
                          "bases": [c.__name__ for c in type(exc).__mro__],
                          "message": str(exc)}}))


def embedding_model(shape):
    model = Model()
    if len(shape) == 1:
        model |= Embedding()(input=IOKey("ids"), weight=IOKey("weight"),
                             output=IOKey("output"))
    else:  # ids reach the embedding through a reshape
        model |= Reshape(shape=(-1,))(input=IOKey("ids"))
        model += Embedding()(weight=IOKey("weight"), output=IOKey("output"))
    return ml.compile(model, backend, shapes={{"ids": list(shape),
                      "weight": [{rows}, {dim}]}}, data_keys={{"ids"}}, jit=jit)


def embed(ids, dtype, gradients=False):
    ids = np.asarray(ids)
    pm = embedding_model(ids.shape)
    params = {{"weight": backend.array(weight)}}
    data = {{"ids": backend.array(ids, dtype=dtype)}}
    if gradients:
        rows = ids.size
        seed = {{"output": backend.array(np.ones((rows, {dim})))}}
        return lambda: pm.evaluate(params, data, seed)[1]["weight"]
    return lambda: pm.evaluate(params, data)["output"]


def cross_entropy(target, dtype, classes_known=True):
    model = Model()
    model |= CrossEntropy()(input=IOKey("logits"), target=IOKey("target"),
                            output=IOKey("output"))
    classes = {classes} if classes_known else None
    pm = ml.compile(model, backend, shapes={{"logits": [3, classes]}},
                    data_keys={{"logits", "target"}}, jit=jit)
    data = {{"logits": backend.array(logits),
             "target": backend.array(np.asarray(target), dtype=dtype)}}
    return lambda: pm.evaluate({{}}, data)["output"]


def index(positions):
    model = Model()
    model |= Indexer()(input=IOKey("table"), index=IOKey("at", type=Tensor[int]),
                       output=IOKey("output"))
    pm = ml.compile(model, backend, shapes={{"table": [{rows}, {dim}], "at": [2]}},
                    data_keys={{"table", "at"}}, jit=jit)
    data = {{"table": backend.array(weight), "at": backend.array(np.array(positions))}}
    return lambda: pm.evaluate({{}}, data)["output"]


report("valid_int64", embed([0, 4, 2, 2], "int64"))
report("valid_int32", embed([0, 4, 2, 2], "int32"))
report("empty", embed(np.zeros((0,), np.int64), "int64"))
report("negative_int64", embed([0, -1, 2, 2], "int64"))
report("negative_int32", embed([0, 1, -3, 2], "int32"))
report("equal_rows_int64", embed([0, {rows}, 2, 2], "int64"))
report("equal_rows_int32", embed([0, {rows}, 2, 2], "int32"))
report("huge_int64", embed([0, 2**40, 2, 2], "int64"))
report("huge_int32", embed([0, 2**31 - 1, 2, 2], "int32"))
report("reshape_valid", embed([[0, 1], [4, 3]], "int64"))
report("reshape_negative", embed([[0, 1], [-2, 3]], "int64"))
report("gradient_valid", embed([0, 4, 4, 1], "int64", gradients=True))
report("gradient_equal_rows", embed([0, {rows}, 1, 1], "int64", gradients=True))
report("target_valid", cross_entropy([0, 3, 1], "int64"))
report("target_valid_int32", cross_entropy([0, 3, 1], "int32"))
report("target_equal_classes", cross_entropy([0, {classes}, 1], "int64"))
report("target_negative", cross_entropy([0, -1, 1], "int32"))
report("target_classes_from_shape", cross_entropy([0, 9, 1], "int64", False))
report("index_valid", index([{rows} - 1, -{rows}]))
report("index_equal_rows", index([0, {rows}]))
report("index_below_minus_rows", index([-{rows} - 1, 0]))
print("OK")
"""

INVALID = {
    # case: (key, bound, min, max)
    "negative_int64": ("ids", ROWS, -1, 2),
    "negative_int32": ("ids", ROWS, -3, 2),
    "equal_rows_int64": ("ids", ROWS, 0, ROWS),
    "equal_rows_int32": ("ids", ROWS, 0, ROWS),
    "huge_int64": ("ids", ROWS, 0, 2**40),
    "huge_int32": ("ids", ROWS, 0, 2**31 - 1),
    "reshape_negative": ("ids", ROWS, -2, 3),
    "gradient_equal_rows": ("ids", ROWS, 0, ROWS),
    "target_equal_classes": ("target", CLASSES, 0, CLASSES),
    "target_negative": ("target", CLASSES, -1, 1),
    "target_classes_from_shape": ("target", CLASSES, 0, 9),
    "index_equal_rows": ("at", ROWS, 0, ROWS),
    "index_below_minus_rows": ("at", ROWS, -ROWS - 1, 0),
}


# (backend, case) -> the error it gives instead, and why.
KNOWN_GAPS = {
    ("c", "index_valid"): (
        "CompileError",
        "the C backend needs static shapes; indexing with a tensor gives an output "
        "shape only NumPy semantics know",
    ),
}


def _modes() -> list[Any]:
    """Every backend eagerly; jitted too where the backend jits (torch.compile of
    each small model takes seconds, and the check runs before dispatch either way,
    so torch is covered eagerly)."""
    modes = []
    for name in ml.available_backends():
        if not get_registry().backend_class(name).supports_gradients:
            continue  # these cases take gradients
        modes.append(pytest.param(name, False, id=f"{name}-eager"))
        if get_registry().backend_class(name).supports_jit and name != "torch":
            modes.append(pytest.param(name, True, id=f"{name}-jit"))
    return modes


def _results(isolated: Any, clean_exit: Any, backend_name: str, jit: bool) -> dict:
    source = CHILD.format(
        backend=backend_name, jit=jit, rows=ROWS, dim=DIM, classes=CLASSES
    )
    outcome = isolated(source, timeout=300)
    clean_exit(outcome)
    lines = outcome.stdout.strip().splitlines()
    assert lines[-1] == "OK"
    return {r["case"]: r for r in map(json.loads, lines[:-1])}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@pytest.mark.parametrize(("backend_name", "jit"), _modes())
def test_indices(backend_name: str, jit: bool, isolated: Any, clean_exit: Any) -> None:
    results = _results(isolated, clean_exit, backend_name, jit)
    weight = np.random.default_rng(0).standard_normal((ROWS, DIM))
    logits = np.random.default_rng(1).standard_normal((3, CLASSES))
    expected = {
        "valid_int64": weight[[0, 4, 2, 2]],
        "valid_int32": weight[[0, 4, 2, 2]],
        "empty": np.zeros((0, DIM)),
        "reshape_valid": weight[[0, 1, 4, 3]],
        "gradient_valid": np.array(
            [[1.0] * DIM, [1.0] * DIM, [0.0] * DIM, [0.0] * DIM, [2.0] * DIM]
        ),
        "target_valid": -_log_softmax(logits)[[0, 1, 2], [0, 3, 1]],
        "target_valid_int32": -_log_softmax(logits)[[0, 1, 2], [0, 3, 1]],
        "index_valid": weight[[ROWS - 1, -ROWS]],
    }
    assert set(results) == set(expected) | set(INVALID)
    for case, want in expected.items():
        got = results[case]
        gap = KNOWN_GAPS.get((backend_name, case))
        if gap is not None:
            assert got.get("error") == gap[0], (case, got)
            continue
        assert "error" not in got, (case, got)
        np.testing.assert_allclose(
            np.asarray(got["value"]).reshape(want.shape),
            want,
            rtol=1e-5,
            atol=1e-6,
            err_msg=case,
        )
    for case, (key, bound, low, high) in INVALID.items():
        got = results[case]
        assert got.get("error") == "IndexRangeError", (case, got)
        assert "IndexError" in got["bases"], case
        what, first, rule = {
            "ids": ("embedding ids", 0, "do not count"),
            "target": ("cross_entropy targets", 0, "do not count"),
            "at": ("indexer indices", -bound, "count"),
        }[key]
        assert got["message"].startswith(
            f"{key}: {what} must be in [{first}, {bound}), got min {low} max {high} ("
        ), (case, got["message"])
        assert f"negative indices {rule} from the end" in got["message"]


def test_message_names_the_indexing_call_and_what_it_indexes() -> None:
    from mithril_core.errors import IndexRangeError
    from mithril_core.models import IOKey, Model
    from mithril_core.primitives import Embedding

    backend = ml.backend("numpy")
    model = Model()
    model |= Embedding(name="token_table")(
        input=IOKey("tokens"), weight=IOKey("table"), output=IOKey("output")
    )
    pm = ml.compile(model, backend, shapes={"tokens": [2], "table": [50, 4]})
    params = pm.randomize_params()
    with pytest.raises(IndexRangeError) as info:
        pm.evaluate(params, {"tokens": np.array([-1, 7])})
    assert str(info.value) == (
        "tokens: embedding ids must be in [0, 50), got min -1 max 7 (token_table "
        "indexes the 50 rows of table; negative indices do not count from the end). "
        "Fix the data."
    )


COMPUTED = """
import numpy as np
import mithril_core as ml
from mithril_core.models import IOKey, Model, Tensor
from mithril_core.primitives import Add, Embedding

backend = ml.backend({backend!r})
model = Model()
model |= Add()(left=IOKey("ids", type=Tensor[int]), right=3)
model += Embedding()(weight=IOKey("weight"), output=IOKey("output"))
pm = ml.compile(model, backend, shapes={{"ids": [3], "weight": [5, 2]}},
                data_keys={{"ids"}}, jit=False)
params = {{"weight": backend.array(np.arange(10.0).reshape(5, 2))}}
out = pm.evaluate(params, {{"ids": backend.array(np.array([0, 1, -3]))}})["output"]
print(backend.to_numpy(out).tolist())
try:
    pm.evaluate(params, {{"ids": backend.array(np.array([0, 2, 1]))}})
except IndexError as exc:
    print("RAISED", type(exc).__name__, exc)
print("OK")
"""


@pytest.mark.parametrize("backend_name", ["numpy", "torch", "c"])
def test_computed_indices_are_checked_in_the_kernel(
    backend_name: str, isolated: Any, clean_exit: Any
) -> None:
    """Ids computed inside the model (not inputs) cannot be checked before dispatch:
    NumPy and C check them in the kernel, torch itself raises. (JAX and MLX are
    documented as checking inputs only.)"""
    if backend_name not in ml.available_backends():
        pytest.skip(f"{backend_name} is not installed")
    outcome = isolated(COMPUTED.format(backend=backend_name))
    clean_exit(outcome)
    lines = outcome.stdout.strip().splitlines()
    assert lines[-1] == "OK"
    assert json.loads(lines[0]) == [[6.0, 7.0], [8.0, 9.0], [0.0, 1.0]]
    assert lines[1].startswith("RAISED ")
    assert "IndexError" in lines[1] or "IndexRangeError" in lines[1]
    if backend_name == "numpy":
        assert lines[1] == (
            "RAISED IndexRangeError embedding: ids must be in [0, 5), got min 3 "
            "max 5; negative indices do not count from the end."
        )


def test_untyped_ids_through_arithmetic_reach_an_embedding(backend_name: str) -> None:
    # ``ids + 1`` could be int or float until the embedding makes it int; the C backend
    # assumed float at compile and raised a type conflict.
    from mithril_core.models import Add, IOKey, Model
    from mithril_core.primitives import Embedding

    model = Model()
    model |= Add()(left=IOKey("ids"), right=1, output="shifted")
    model |= Embedding(num_embeddings=ROWS, dim=DIM)(
        input="shifted", output=IOKey("out")
    )
    backend = ml.backend(backend_name, dtype=ml.float32)
    pm = ml.compile(model, backend, shapes={"ids": [4]}, data_keys={"ids"})
    weight = np.random.default_rng(2).standard_normal((ROWS, DIM)).astype(np.float32)
    ids = np.array([0, 3, 1, 2])
    out = pm.evaluate(
        {"embedding_0_weight": backend.array(weight)}, {"ids": backend.array(ids)}
    )["out"]
    np.testing.assert_allclose(backend.to_numpy(out), weight[ids + 1], rtol=1e-6)
