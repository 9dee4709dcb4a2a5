"""torch, jax and mlx plugins: lowerings against float64 NumPy, backends, evaluators.

Each test runs once per installed framework; a framework that is not installed is
skipped. References are computed here with NumPy in float64 from the exact values handed
to the backend.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import pytest

from mithril_core import hookspecs
from mithril_core.backends.base import Program
from mithril_core.primitives.lowering import Lowering

DOCS = Path(__file__).resolve().parents[2] / "docs" / "primitives.md"

# name: (module to import, plugin package, backend class, test dtype, rtol, atol)
FRAMEWORKS: dict[str, tuple[str, str, str, str, float, float]] = {
    "torch": ("torch", "mithril_torch", "TorchBackend", "float64", 1e-5, 1e-10),
    "jax": ("jax", "mithril_jax", "JaxBackend", "float64", 1e-5, 1e-10),
    # MLX float64 transcendental functions are float32-accurate; test at float32.
    "mlx": ("mlx.core", "mithril_mlx", "MlxBackend", "float32", 1e-3, 1e-5),
}


@dataclass
class Framework:
    name: str
    package: str
    backend: Any
    lowerings: dict[str, Lowering]
    rtol: float
    atol: float


@pytest.fixture(params=list(FRAMEWORKS), scope="module")
def fw(request: pytest.FixtureRequest) -> Framework:
    module, package, cls, dtype, rtol, atol = FRAMEWORKS[request.param]
    pytest.importorskip(module)
    backend_cls = getattr(importlib.import_module(f"{package}.backend"), cls)
    lowerings = importlib.import_module(f"{package}.lowerings").LOWERINGS
    return Framework(
        request.param, package, backend_cls(dtype=dtype), lowerings, rtol, atol
    )


# -- documented op names --------------------------------------------------------------
def documented_ops() -> set[str]:
    ops: set[str] = set()
    for line in DOCS.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0] in {
            "elementwise",
            "reduction",
            "shape",
            "linalg",
            "nn",
            "loss",
        }:
            ops.update(name.strip() for name in cells[1].split(","))
    return ops


# -- the case table -------------------------------------------------------------------
rng = np.random.default_rng(0)
X = rng.standard_normal((2, 3, 4))
Y = rng.standard_normal((3, 4))
POS = np.abs(X) + 0.5
WIDE = np.array([-40.0, -3.0, -0.5, 0.0, 0.5, 3.0, 40.0])
INTS = np.array([[7, -7, 3], [2, 5, -1]])
A = rng.standard_normal((2, 3)) > 0
B = rng.standard_normal((2, 3)) > 0
TIES = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]])
COL = rng.standard_normal((3, 1))
ONES = rng.standard_normal((2, 1, 4, 1))
M = rng.standard_normal((4, 5))
V = rng.standard_normal(4)

erf = np.vectorize(math.erf)


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def np_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_split(x: np.ndarray, size: int, axis: int) -> list[np.ndarray]:
    return np.split(x, list(range(size, x.shape[axis], size)), axis=axis)


# nn and loss inputs (their own generator: the arrays above keep their values)
nn_rng = np.random.default_rng(1)
IMG = nn_rng.standard_normal((2, 4, 5, 6))
KERNEL = nn_rng.standard_normal((6, 2, 3, 2))
SEQ = nn_rng.standard_normal((2, 3, 7))
KERNEL1D = nn_rng.standard_normal((4, 3, 3))
Q, K, VAL = (nn_rng.standard_normal((2, 3, n, 4)) for n in (4, 5, 5))
MASK = nn_rng.standard_normal((4, 5)) > -0.3
MASK[:, 0] = True
LOGITS = nn_rng.standard_normal((4, 5, 2))
LABELS = nn_rng.integers(0, 5, (4, 2))
PROBS, SOFT = (np_softmax(nn_rng.standard_normal((4, 5, 2)), 1) for _ in range(2))
UNIT, UNIT2 = nn_rng.uniform(0.05, 0.95, (2, 3, 4))
TOKENS = np.array([[1, 3, 1], [0, 2, 3]])  # rows of M


def np_conv(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, ...],
    padding: Any,
    dilation: tuple[int, ...],
    groups: int,
) -> np.ndarray:
    """Cross-correlation as torch's conv1d/conv2d, one output position at a time."""
    kernel = w.shape[2:]
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        pads = [(t // 2, t - t // 2) for t in totals]
    elif padding == "valid":
        pads = [(0, 0)] * len(kernel)
    else:
        pads = [(p, p) for p in padding]
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    out = [
        (n - s) // st + 1 for n, s, st in zip(x.shape[2:], span, stride, strict=True)
    ]
    per_in, per_out = x.shape[1] // groups, w.shape[0] // groups
    result = np.zeros((x.shape[0], w.shape[0], *out))
    for o in range(w.shape[0]):
        g = o // per_out
        for pos in np.ndindex(*out):
            window = tuple(
                slice(p * st, p * st + s, d)
                for p, st, s, d in zip(pos, stride, span, dilation, strict=True)
            )
            patch = x[(slice(None), slice(g * per_in, (g + 1) * per_in), *window)]
            result[(slice(None), o, *pos)] = (patch * w[o]).reshape(len(x), -1).sum(1)
    return result


def np_pool(
    x: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
    *,
    reduce: Callable[..., Any],
    fill: float,
) -> np.ndarray:
    x = np.pad(x, [(0, 0), (0, 0), *((p, p) for p in padding)], constant_values=fill)
    span = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    out = [
        (n - s) // st + 1 for n, s, st in zip(x.shape[2:], span, stride, strict=True)
    ]
    result = np.zeros((*x.shape[:2], *out))
    for i, j in np.ndindex(*out):
        window = x[
            :,
            :,
            i * stride[0] : i * stride[0] + span[0] : dilation[0],
            j * stride[1] : j * stride[1] + span[1] : dilation[1],
        ]
        result[:, :, i, j] = reduce(window, axis=(2, 3))
    return result


def np_adaptive_avg_pool2d(x: np.ndarray, size: tuple[Any, Any]) -> np.ndarray:
    sizes = [n if o is None else o for n, o in zip(x.shape[2:], size, strict=True)]
    result = np.zeros((*x.shape[:2], *sizes))
    for i, j in np.ndindex(*sizes):
        (h, oh), (w, ow) = zip(x.shape[2:], sizes, strict=True)
        rows = slice(math.floor(i * h / oh), math.ceil((i + 1) * h / oh))
        cols = slice(math.floor(j * w / ow), math.ceil((j + 1) * w / ow))
        result[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
    return result


def np_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None,
    is_causal: bool,
    scale: float | None,
) -> np.ndarray:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = q @ np.swapaxes(k, -1, -2) * scale
    if is_causal:
        scores = np.where(np.tril(np.ones(scores.shape[-2:], bool)), scores, -np.inf)
    if mask is not None:
        scores = (
            np.where(mask, scores, -np.inf) if mask.dtype == bool else scores + mask
        )
    return np_softmax(scores, -1) @ v


def np_log_q(x: np.ndarray, axis: int, input_type: str) -> np.ndarray:
    if input_type == "logits":
        return np.log(np_softmax(x, axis))
    return np.log(x) if input_type == "probs" else x


def np_cross_entropy(
    x: np.ndarray, target: np.ndarray, axis: int, input_type: str
) -> np.ndarray:
    onehot = np.moveaxis(np.eye(x.shape[axis])[target], -1, axis)
    return -(onehot * np_log_q(x, axis, input_type)).sum(axis)


def np_cross_entropy_soft(
    x: np.ndarray, target: np.ndarray, axis: int, input_type: str
) -> np.ndarray:
    return -(target * np_log_q(x, axis, input_type)).sum(axis)


def np_binary_cross_entropy(
    x: np.ndarray, target: np.ndarray, input_type: str
) -> np.ndarray:
    p = np_sigmoid(x) if input_type == "logits" else x
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


@dataclass
class Case:
    op: str
    args: tuple[Any, ...]
    reference: Callable[..., Any]
    id: str = ""
    known_gaps: dict[str, str] = field(default_factory=dict)


CASES = [
    Case("add", (X, Y), np.add),
    Case("add", (X, 2.0), np.add, "scalar_right"),
    Case("add", (2.0, X), np.add, "scalar_left"),
    Case("subtract", (X, Y), np.subtract),
    Case("subtract", (1.5, X), np.subtract, "scalar_left"),
    Case("multiply", (X, Y), np.multiply),
    Case("multiply", (X, 3), np.multiply, "int_scalar"),
    Case("divide", (X, POS), np.divide),
    Case("divide", (INTS, 2), np.divide, "ints"),
    Case("floor_divide", (INTS, 2), np.floor_divide, "ints"),
    Case("floor_divide", (X, 0.7), np.floor_divide, "floats"),
    Case("power", (POS, Y), np.power),
    Case("power", (X, 2), np.power, "scalar_exponent"),
    Case("power", (2.0, X), np.power, "scalar_base"),
    Case("minimum", (X, Y), np.minimum),
    Case("minimum", (X, 0.0), np.minimum, "scalar"),
    Case("maximum", (X, Y), np.maximum),
    Case("maximum", (0.5, X), np.maximum, "scalar"),
    Case("negate", (X,), np.negative),
    Case("absolute", (X,), np.abs),
    Case("exponential", (X,), np.exp),
    Case("log", (POS,), np.log),
    Case("sqrt", (POS,), np.sqrt),
    Case("sine", (X,), np.sin),
    Case("cosine", (X,), np.cos),
    Case("relu", (X,), lambda x: np.maximum(x, 0)),
    Case("sigmoid", (X,), np_sigmoid),
    Case("tanh", (X,), np.tanh),
    Case("softplus", (WIDE,), lambda x: np.logaddexp(x, 0)),
    Case("silu", (X,), lambda x: x * np_sigmoid(x)),
    Case("leaky_relu", (X, 0.1), lambda x, s: np.where(x > 0, x, s * x)),
    Case("gelu", (X, False), lambda x, _: 0.5 * x * (1 + erf(x / np.sqrt(2))), "exact"),
    Case("gelu", (X, True), lambda x, _: np_gelu_tanh(x), "tanh"),
    Case("greater", (X, Y), np.greater),
    Case("greater_equal", (TIES, 2.0), np.greater_equal),
    Case("less", (X, 0.0), np.less),
    Case("less_equal", (TIES, 2.0), np.less_equal),
    Case("equal", (INTS, 7), np.equal),
    Case("not_equal", (INTS, 7), np.not_equal),
    Case("logical_and", (A, B), np.logical_and),
    Case("logical_or", (A, B), np.logical_or),
    Case("logical_xor", (A, B), np.logical_xor),
    Case("logical_not", (A,), np.logical_not),
    Case("where", (A[:, :, None], X, 0.0), np.where),
    Case("where", (A[0, :, None], X, Y), np.where, "broadcast"),
    Case("cast", (X, "int32"), lambda x, d: x.astype(d), "to_int32"),
    Case("cast", (INTS, "float32"), lambda x, d: x.astype(d), "to_float32"),
    Case("cast", (X, "bool"), lambda x, d: x.astype(d), "to_bool"),
    Case("stop_gradient", (X,), lambda x: x),
    Case("sum", (X, None, False), lambda x, a, k: np.sum(x, axis=a, keepdims=k)),
    Case("sum", (X, 1, True), lambda x, a, k: np.sum(x, axis=a, keepdims=k), "axis"),
    Case("sum", (X, (0, 2), False), lambda x, a, k: np.sum(x, axis=a), "tuple"),
    Case("mean", (X, -1, False), lambda x, a, k: np.mean(x, axis=a, keepdims=k)),
    Case(
        "mean", (X, None, True), lambda x, a, k: np.mean(x, axis=a, keepdims=k), "all"
    ),
    Case("max", (X, 1, False), lambda x, a, k: np.max(x, axis=a, keepdims=k)),
    Case("max", (X, None, True), lambda x, a, k: np.max(x, axis=a, keepdims=k), "all"),
    Case("max", (X, None, False), lambda x, a, k: np.max(x, axis=a), "all_flat"),
    Case("min", (X, (1, 2), True), lambda x, a, k: np.min(x, axis=a, keepdims=k)),
    Case("min", (X, None, False), lambda x, a, k: np.min(x, axis=a), "all"),
    Case(
        "variance",
        (X, 1, False, 1),
        lambda x, a, k, c: np.var(x, axis=a, keepdims=k, ddof=c),
    ),
    Case(
        "variance",
        (X, None, True, 0),
        lambda x, a, k, c: np.var(x, axis=a, keepdims=k, ddof=c),
        "all",
    ),
    Case("arg_max", (X, 1, False), lambda x, a, k: np.argmax(x, axis=a, keepdims=k)),
    Case(
        "arg_max",
        (X, None, False),
        lambda x, a, k: np.argmax(x, axis=a, keepdims=k),
        "flat",
    ),
    Case(
        "arg_max", (X, 2, True), lambda x, a, k: np.argmax(x, axis=a, keepdims=k), "kd"
    ),
    Case("arg_min", (X, 0, False), lambda x, a, k: np.argmin(x, axis=a, keepdims=k)),
    Case(
        "arg_min",
        (X, None, True),
        lambda x, a, k: np.argmin(x, axis=a, keepdims=k),
        "flat_kd",
    ),
    Case("reshape", (X, (6, -1)), np.reshape),
    Case("transpose", (X, None), np.transpose, "reverse"),
    Case("transpose", (X, (1, 0, 2)), np.transpose, "axes"),
    Case("flatten", (X, 1, -1), lambda x, s, e: x.reshape(2, 12)),
    Case("flatten", (X, 0, 1), lambda x, s, e: x.reshape(6, 4), "leading"),
    Case("concat", ([X, X], 1), lambda xs, a: np.concatenate(xs, axis=a)),
    Case("split", (X, 2, 2), np_split),
    Case("split", (X, 3, 2), np_split, "ragged"),
    Case("indexer", (X, (0, slice(None), None, Ellipsis)), lambda x, i: x[i]),
    Case("indexer", (X, (Ellipsis, slice(1, 3))), lambda x, i: x[i], "ellipsis"),
    Case("indexer", (X, 1), lambda x, i: x[i], "int"),
    Case("indexer", ([X, Y, POS], slice(0, 2)), lambda x, i: x[i], "list"),
    Case("indexer", ((X, Y), 1), lambda x, i: x[i], "tuple"),
    Case("shape", (X,), np.shape),
    Case("to_list", (X, Y, 3), lambda *a: list(a)),
    Case("to_tuple", (X, 3), lambda *a: a),
    Case("buffer", (X,), lambda x: x),
    Case("unsqueeze", (X, 1), np.expand_dims),
    Case("unsqueeze", (X, -1), np.expand_dims, "last"),
    Case("squeeze", (ONES, None), lambda x, a: np.squeeze(x, axis=a), "all"),
    Case("squeeze", (ONES, 1), lambda x, a: np.squeeze(x, axis=a), "axis"),
    Case("expand", (COL, (2, -1, 5)), lambda x, s: np.broadcast_to(x, (2, 3, 5))),
    Case("matrix_multiply", (X, M), np.matmul),
    Case("matrix_multiply", (V, M), np.matmul, "vector_left"),
    Case("matrix_multiply", (X, V), np.matmul, "vector_right"),
    Case("matrix_multiply", (V, V), np.matmul, "dot"),
    Case(
        "matrix_multiply",
        (X[:, None], rng.standard_normal((5, 4, 2))),
        np.matmul,
        "batch_broadcast",
    ),
    Case("softmax", (X, -1), np_softmax),
    Case("softmax", (X, 0), np_softmax, "axis0"),
    Case("log_softmax", (X, 1), lambda x, a: np.log(np_softmax(x, a))),
    Case("conv2d", (IMG, KERNEL, (2, 1), (1, 0), (1, 2), 2), np_conv, "groups"),
    # "same": (2, 2) rows, (0, 1) columns (the odd unit after)
    Case("conv2d", (IMG, KERNEL, (1, 1), "same", (2, 1), 2), np_conv, "same"),
    Case("conv2d", (IMG, KERNEL[:2], (1, 1), "valid", (1, 1), 2), np_conv, "valid"),
    Case("conv1d", (SEQ, KERNEL1D, (2,), (1,), (1,), 1), np_conv),
    # "same" with total padding 3: (1, 2)
    Case("conv1d", (SEQ, KERNEL1D[..., :2], (1,), "same", (3,), 1), np_conv, "same"),
    Case(
        "max_pool2d",
        (IMG, (3, 2), (2, 1), (1, 1), (1, 2)),
        lambda *a: np_pool(*a, reduce=np.max, fill=-np.inf),
    ),
    Case(
        "avg_pool2d",
        (IMG, (3, 3), (2, 2), (1, 1)),
        lambda *a: np_pool(*a, reduce=np.mean, fill=0.0),
    ),
    Case("adaptive_avg_pool2d", (IMG, (3, 4)), np_adaptive_avg_pool2d),
    Case("adaptive_avg_pool2d", (IMG, (1, None)), np_adaptive_avg_pool2d, "keep"),
    Case("embedding", (TOKENS, M), lambda i, w: w[i]),
    Case(
        "scaled_dot_product",
        (Q, K, VAL, False, None),
        lambda q, k, v, c, s: np_attention(q, k, v, None, c, s),
    ),
    Case(
        "scaled_dot_product",
        (Q, K, VAL, True, 0.3),
        lambda q, k, v, c, s: np_attention(q, k, v, None, c, s),
        "causal_scale",
    ),
    Case("scaled_dot_product_masked", (Q, K, VAL, MASK, False, None), np_attention),
    Case(
        "scaled_dot_product_masked",
        (Q, K, VAL, np.where(MASK, 0.5, -1e4), True, None),
        np_attention,
        "additive_causal",
    ),
    Case("dropout", (X, 0.5, True), lambda x, p, i: x, "inference"),
    Case("dropout", (X, 0.0, False), lambda x, p, i: x, "p0"),
    Case(
        "pad",
        (X, ((0, 0), (1, 2), (2, 0)), "constant", 1.5),
        lambda x, w, m, v: np.pad(x, w, constant_values=v),
    ),
    Case(
        "pad",
        (X, ((1, 0), (2, 1), (0, 3)), "reflect", 0.0),
        lambda x, w, m, v: np.pad(x, w, mode=m),
        "reflect",
    ),
    Case(
        "pad",
        (X, ((0, 2), (0, 0), (3, 1)), "edge", 0.0),
        lambda x, w, m, v: np.pad(x, w, mode=m),
        "edge",
    ),
    Case("squared_error", (X, Y), lambda x, t: (x - t) ** 2),
    Case("absolute_error", (X, Y), lambda x, t: np.abs(x - t)),
    Case("cross_entropy", (LOGITS, LABELS, 1, "logits"), np_cross_entropy),
    Case(
        "cross_entropy",
        (PROBS, LABELS, 1, "probs"),
        np_cross_entropy,
        "probs",
    ),
    Case(
        "cross_entropy",
        (np.log(PROBS).transpose(0, 2, 1), LABELS, -1, "log_probs"),
        np_cross_entropy,
        "log_probs_axis_last",
    ),
    Case("cross_entropy_soft", (LOGITS, PROBS, 1, "logits"), np_cross_entropy_soft),
    Case(
        "cross_entropy_soft",
        (PROBS, SOFT, 1, "probs"),
        np_cross_entropy_soft,
        "probs",
    ),
    Case("binary_cross_entropy", (UNIT, UNIT2, "probs"), np_binary_cross_entropy),
    Case(
        "binary_cross_entropy",
        (3 * Y, UNIT, "logits"),
        np_binary_cross_entropy,
        "logits",
    ),
]


def _to_backend(fw: Framework, value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return fw.backend.array(value)
    if isinstance(value, list | tuple) and any(
        isinstance(v, np.ndarray) for v in value
    ):
        return type(value)(_to_backend(fw, v) for v in value)
    return value


def _to_numpy(fw: Framework, value: Any) -> Any:
    if fw.backend.array_info(value) is not None:
        return fw.backend.to_numpy(value)
    if isinstance(value, list | tuple):
        return type(value)(_to_numpy(fw, v) for v in value)
    return value


def _float64(value: Any) -> Any:
    # The reference sees exactly the values the backend got, in float64.
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return value.astype(np.float64)
    if isinstance(value, list | tuple):
        return type(value)(_float64(v) for v in value)
    return value


def _assert_close(fw: Framework, actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, list | tuple) and not isinstance(expected, np.ndarray):
        assert type(actual) is type(expected), f"{where}: {type(actual)}"
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_close(fw, a, e, f"{where}[{i}]")
        return
    if not isinstance(expected, np.ndarray | np.generic):
        assert actual == expected, where
        return
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, (
        f"{where}: {actual.shape} != {expected.shape}"
    )
    if expected.dtype.kind == "f":
        assert actual.dtype.kind == "f", f"{where}: dtype {actual.dtype}"
        np.testing.assert_allclose(
            actual, expected, rtol=fw.rtol, atol=fw.atol, err_msg=where
        )
    else:
        assert actual.dtype.kind == expected.dtype.kind, f"{where}: {actual.dtype}"
        np.testing.assert_array_equal(actual, expected, err_msg=where)


@pytest.mark.parametrize(
    "case", CASES, ids=lambda c: f"{c.op}-{c.id}" if c.id else c.op
)
def test_lowering_matches_numpy(fw: Framework, case: Case) -> None:
    if fw.name in case.known_gaps:
        pytest.skip(case.known_gaps[fw.name])
    args = [_to_backend(fw, arg) for arg in case.args]
    reference_args = [_float64(_to_numpy(fw, arg)) for arg in args]
    expected = case.reference(*reference_args)
    actual = _to_numpy(fw, fw.lowerings[case.op](*args))
    _assert_close(fw, actual, expected, f"{fw.name}.{case.op}")


def test_every_documented_op_is_lowered_and_tested(fw: Framework) -> None:
    ops = documented_ops()
    assert len(ops) >= 58, "could not parse docs/primitives.md"
    assert not ops - set(fw.lowerings), "no lowering"
    assert not ops - {case.op for case in CASES}, "no test case"
    for op, lowering in fw.lowerings.items():
        assert lowering.forward.__name__ == op


def test_arg_reductions_are_int64(fw: Framework) -> None:
    x = fw.backend.array(X)
    for op in ("arg_max", "arg_min"):
        assert fw.backend.array_info(fw.lowerings[op](x, 1, False))[1] == "int64"


def test_cast_dtype_names(fw: Framework) -> None:
    x = fw.backend.array(X)
    for name in ("float16", "bfloat16", "float32", "int8", "int64", "uint8", "bool"):
        assert fw.backend.array_info(fw.lowerings["cast"](x, name))[1] == name


# -- backend array API ----------------------------------------------------------------
def test_array_dtypes(fw: Framework) -> None:
    backend = fw.backend
    assert backend.array_info(backend.array([1.0, 2.0])) == ((2,), backend.dtype.name)
    assert backend.array_info(backend.array(np.float32([1.0]))) == (
        (1,),
        backend.dtype.name,
    )
    assert backend.array_info(backend.array([[1, 2]])) == ((1, 2), "int64")
    assert backend.array_info(backend.array(np.uint8([1]))) == ((1,), "int64")
    assert backend.array_info(backend.array([True])) == ((1,), "bool")
    assert backend.array_info(backend.array([1, 2], dtype="float16")) == (
        (2,),
        "float16",
    )
    assert backend.array_info(np.zeros(2)) is None
    assert backend.array_info([1.0]) is None
    roundtrip = backend.to_numpy(backend.array(INTS))
    np.testing.assert_array_equal(roundtrip, INTS)
    assert roundtrip.dtype == np.int64
    bf16 = backend.array([1.5, 2.0], dtype="bfloat16")
    assert backend.array_info(bf16) == ((2,), "bfloat16")
    bf16_numpy = backend.to_numpy(bf16)
    assert bf16_numpy.dtype == np.float32
    np.testing.assert_array_equal(bf16_numpy, [1.5, 2.0])
    assert backend.array_info(backend.scalar(2, "float32")) == ((), "float32")
    assert backend.array_info(backend.scalar(True, "bool")) == ((), "bool")


def test_array_of_own_array_is_converted(fw: Framework) -> None:
    backend = fw.backend
    x = backend.array(X)
    y = backend.array(x, dtype="float32")
    assert backend.array_info(y) == ((2, 3, 4), "float32")
    np.testing.assert_allclose(backend.to_numpy(y), X, rtol=1e-6)


def test_seeded_random_matches_philox(fw: Framework) -> None:
    backend = fw.backend
    backend.seed(7)
    values = backend.to_numpy(backend.randn(2, 3))
    expected = np.random.Generator(np.random.Philox(7)).standard_normal((2, 3))
    np.testing.assert_array_equal(values, expected.astype(backend.dtype.name))
    assert backend.array_info(backend.zeros((2, 3)))[0] == (2, 3)
    assert backend.array_info(backend.arange(5)) == ((5,), "int64")


def test_unknown_device_is_an_error(fw: Framework) -> None:
    from mithril_core.errors import CompileError

    with pytest.raises(CompileError, match="not 'abacus'"):
        type(fw.backend)(device="abacus")


def test_float64_backend(fw: Framework) -> None:
    backend = type(fw.backend)(dtype="float64")
    assert backend.array_info(backend.array([0.1])) == ((1,), "float64")
    np.testing.assert_array_equal(backend.to_numpy(backend.array([0.1])), [0.1])


# -- evaluators -----------------------------------------------------------------------
def _program(fw: Framework) -> Program:
    low = fw.lowerings

    def forward(inputs: dict[str, Any]) -> dict[str, Any]:
        out = low["matrix_multiply"](inputs["x"], inputs["w"])
        frozen = low["stop_gradient"](inputs["b"])
        return {
            "out": out,
            "idx": low["arg_max"](out, -1, False),
            "total": low["sum"](low["add"](out, frozen), None, False),
            "mask": low["greater"](out, 0.0),
        }

    return Program(
        forward=forward,
        forward_backward=None,
        input_keys=("x", "w", "b"),
        output_keys=("out", "idx", "total", "mask"),
        grad_keys=("w", "x", "b"),
    )


def _evaluator_inputs(fw: Framework) -> tuple[dict[str, Any], dict[str, Any]]:
    inputs = {
        "x": fw.backend.array(rng.standard_normal((3, 4))),
        "w": fw.backend.array(rng.standard_normal((4, 2))),
        "b": fw.backend.array(rng.standard_normal((3, 2))),
    }
    return inputs, {"out": fw.backend.array(rng.standard_normal((3, 2)))}


def _check_gradients(
    fw: Framework, inputs: dict[str, Any], cotangents: dict[str, Any], result: Any
) -> None:
    outputs, grads = result
    x, w, b = (fw.backend.to_numpy(inputs[k]).astype(np.float64) for k in "xwb")
    cot = fw.backend.to_numpy(cotangents["out"]).astype(np.float64)
    out = x @ w
    _assert_close(fw, fw.backend.to_numpy(outputs["out"]), out, "out")
    _assert_close(fw, fw.backend.to_numpy(outputs["idx"]), out.argmax(-1), "idx")
    _assert_close(fw, fw.backend.to_numpy(outputs["total"]), (out + b).sum(), "total")
    _assert_close(fw, fw.backend.to_numpy(outputs["mask"]), out > 0, "mask")
    assert set(grads) == {"w", "x", "b"}
    _assert_close(fw, fw.backend.to_numpy(grads["w"]), x.T @ cot, "grad w")
    _assert_close(fw, fw.backend.to_numpy(grads["x"]), cot @ w.T, "grad x")
    _assert_close(fw, fw.backend.to_numpy(grads["b"]), np.zeros_like(b), "grad b")


def test_evaluator_forward_and_vjp(fw: Framework) -> None:
    evaluate = fw.backend.build_evaluator(_program(fw), jit=False)
    inputs, cotangents = _evaluator_inputs(fw)
    outputs, grads = evaluate(inputs, None)
    assert grads is None
    assert set(outputs) == {"out", "idx", "total", "mask"}
    _check_gradients(fw, inputs, cotangents, evaluate(inputs, cotangents))


def test_evaluator_two_cotangents(fw: Framework) -> None:
    evaluate = fw.backend.build_evaluator(_program(fw), jit=False)
    inputs, cotangents = _evaluator_inputs(fw)
    cotangents["total"] = fw.backend.array(2.0)
    _, grads = evaluate(inputs, cotangents)
    x, w = (fw.backend.to_numpy(inputs[k]).astype(np.float64) for k in "xw")
    cot = fw.backend.to_numpy(cotangents["out"]).astype(np.float64) + 2.0
    _assert_close(fw, fw.backend.to_numpy(grads["w"]), x.T @ cot, "grad w")


def test_evaluator_max_ties_split_gradient(fw: Framework) -> None:
    low = fw.lowerings
    program = Program(
        forward=lambda inputs: {"out": low["max"](inputs["x"], 1, False)},
        forward_backward=None,
        input_keys=("x",),
        output_keys=("out",),
        grad_keys=("x",),
    )
    evaluate = fw.backend.build_evaluator(program, jit=False)
    _, grads = evaluate({"x": fw.backend.array(TIES)}, {"out": fw.backend.ones(2)})
    expected = np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5]])
    _assert_close(fw, fw.backend.to_numpy(grads["x"]), expected, "max ties")


def test_evaluator_jit_equals_eager(fw: Framework) -> None:
    inputs, cotangents = _evaluator_inputs(fw)
    eager = fw.backend.build_evaluator(_program(fw), jit=False)
    jitted = fw.backend.build_evaluator(_program(fw), jit=True)
    for output_gradients in (None, cotangents):
        expected_out, expected_grads = eager(inputs, output_gradients)
        # Twice: the second call runs the cached compiled function.
        for _ in range(2):
            out, grads = jitted(inputs, output_gradients)
            for key, value in expected_out.items():
                _assert_close(
                    fw, _to_numpy(fw, out[key]), _to_numpy(fw, value), f"jit {key}"
                )
            if output_gradients is None:
                assert grads is None
            else:
                assert set(grads) == set(expected_grads)
                for key, value in expected_grads.items():
                    _assert_close(
                        fw,
                        _to_numpy(fw, grads[key]),
                        _to_numpy(fw, value),
                        f"jit grad {key}",
                    )
    _check_gradients(fw, inputs, cotangents, jitted(inputs, cotangents))


@pytest.mark.parametrize("jit", [False, True])
def test_evaluator_with_non_array_inputs(fw: Framework, jit: bool) -> None:
    low = fw.lowerings
    backend = fw.backend
    program = Program(
        forward=lambda inputs: {
            "out": low["multiply"](
                low["reshape"](inputs["x"], inputs["shape"]), inputs["scale"]
            )
        },
        forward_backward=None,
        input_keys=("x", "shape", "scale"),
        output_keys=("out",),
        grad_keys=("x",),
    )
    evaluate = backend.build_evaluator(program, jit=jit)
    x = backend.array(np.arange(6.0))
    for shape, scale in (((2, 3), 2), ((3, 2), 2), ((3, 2), 2.5)):
        out, _ = evaluate({"x": x, "shape": shape, "scale": scale}, None)
        expected = np.arange(6.0).reshape(shape) * scale
        _assert_close(fw, backend.to_numpy(out["out"]), expected, f"{shape} {scale}")
    _, grads = evaluate(
        {"x": x, "shape": (2, 3), "scale": 3}, {"out": backend.ones(2, 3)}
    )
    _assert_close(fw, backend.to_numpy(grads["x"]), np.full(6, 3.0), "grad")


def test_jax_backend_keeps_int64() -> None:
    pytest.importorskip("jax")
    from mithril_jax.backend import JaxBackend

    backend = JaxBackend()
    assert backend.array_info(backend.array([2**40])) == ((1,), "int64")
    assert backend.to_numpy(backend.array([2**40]))[0] == 2**40


def test_torch_evaluator_leaves_user_tensors_alone() -> None:
    torch = pytest.importorskip("torch")
    from mithril_torch.backend import TorchBackend
    from mithril_torch.lowerings import LOWERINGS

    fw = Framework("torch", "mithril_torch", TorchBackend(), LOWERINGS, 1e-5, 1e-6)
    evaluate = fw.backend.build_evaluator(_program(fw), jit=False)
    inputs, cotangents = _evaluator_inputs(fw)
    _, grads = evaluate(inputs, cotangents)
    assert not any(t.requires_grad for t in inputs.values())
    assert all(g.grad_fn is None for g in grads.values())
    assert isinstance(grads["b"], torch.Tensor)


def test_torch_compile_failure_warns_and_runs_eagerly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch = pytest.importorskip("torch")
    from mithril_torch.backend import TorchBackend
    from mithril_torch.lowerings import LOWERINGS

    def broken_backend(graph: Any, example_inputs: Any) -> Any:
        raise RuntimeError("no compiler in this test")

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda fn, **kw: real_compile(fn, backend=broken_backend)
    )
    fw = Framework("torch", "mithril_torch", TorchBackend(), LOWERINGS, 1e-5, 1e-6)
    evaluate = fw.backend.build_evaluator(_program(fw), jit=True)
    inputs, cotangents = _evaluator_inputs(fw)
    with pytest.warns(RuntimeWarning, match="no compiler in this test"):
        result = evaluate(inputs, cotangents)
    _check_gradients(fw, inputs, cotangents, result)
    _check_gradients(fw, inputs, cotangents, evaluate(inputs, cotangents))


def test_torch_model_error_is_not_a_compile_warning() -> None:
    pytest.importorskip("torch")
    from mithril_torch.backend import TorchBackend
    from mithril_torch.lowerings import LOWERINGS

    backend = TorchBackend()
    program = Program(
        forward=lambda inputs: {
            "out": LOWERINGS["matrix_multiply"](inputs["x"], inputs["x"])
        },
        forward_backward=None,
        input_keys=("x",),
        output_keys=("out",),
        grad_keys=(),
    )
    evaluate = backend.build_evaluator(program, jit=True)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        evaluate({"x": backend.ones(2, 3)}, None)


def test_mlx_float64_only_on_cpu() -> None:
    pytest.importorskip("mlx.core")
    from mithril_mlx.backend import MlxBackend

    backend = MlxBackend(dtype="float64")
    assert backend.array_info(backend.array([1.0])) == ((1,), "float64")


# -- plugin wiring --------------------------------------------------------------------
def test_hooks_with_fresh_plugin_manager(fw: Framework) -> None:
    plugin = importlib.import_module(f"{fw.package}.plugin")
    pm = pluggy.PluginManager("mithril")
    pm.add_hookspecs(hookspecs)
    pm.register(plugin)
    pm.check_pending()
    (backends,) = pm.hook.mithril_backends()
    assert backends == {fw.name: type(fw.backend)}
    assert type(fw.backend).name == fw.name
    assert type(fw.backend).has_autograd and type(fw.backend).supports_jit
    assert pm.hook.mithril_lowerings(backend=fw.name) == [fw.lowerings]
    assert pm.hook.mithril_lowerings(backend="numpy") == []


def test_entry_point(fw: Framework) -> None:
    points = importlib.metadata.entry_points(group="mithril")
    assert {p.name: p.value for p in points}.get(fw.name) == f"{fw.package}.plugin"


def test_listing_backends_does_not_import_the_framework(fw: Framework) -> None:
    module = FRAMEWORKS[fw.name][0].split(".")[0]
    code = (
        f"import sys, {fw.package}.plugin as p\n"
        f"cls = p.mithril_backends()[{fw.name!r}]\n"
        f"assert cls.name == {fw.name!r}\n"
        f"assert p.mithril_lowerings('numpy') is None\n"
        f"assert {module!r} not in sys.modules, 'framework imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lowering_modules_define_only_documented_names(fw: Framework) -> None:
    # A lowering table key must name a documented primitive (or a typo goes unnoticed).
    assert set(fw.lowerings) <= documented_ops()
    for family in ("elementwise", "reduction", "shape", "linalg", "nn", "loss"):
        module = importlib.import_module(f"{fw.package}.lowerings.{family}")
        text = Path(module.__file__).read_text()
        assert re.search(r"^LOWERINGS", text, re.M), family
