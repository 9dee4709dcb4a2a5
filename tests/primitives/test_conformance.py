"""Every core primitive on every installed backend, against float64 NumPy.

One case table. Each case builds a small model, runs it on each backend (float64 where
the backend has it, and float32), and checks the outputs against a float64 NumPy
reference computed here, and the gradients of float inputs against central finite
differences of that same reference (with a random output gradient), never against our
own VJP rules. Backends that jit are also checked jit=True against jit=False.

Known gaps live in the table (``known_gaps={"mlx-float64": "reason"}``; a key is a
backend name, optionally with ``-float64``/``-float32``/``-jit``); conftest xfails them
strictly.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.models import IOKey, Model, Tensor
from mithril_core.primitives import (
    CORE_PRIMITIVES,
    Absolute,
    AbsoluteError,
    AdaptiveAvgPool2D,
    Add,
    ArgMax,
    ArgMin,
    AvgPool2D,
    BinaryCrossEntropy,
    Buffer,
    Cast,
    Concat,
    Convolution1D,
    Convolution2D,
    Cosine,
    CrossEntropy,
    DimFromValue,
    Divide,
    Dropout,
    Embedding,
    Equal,
    Expand,
    Exponential,
    Flatten,
    FloorDivide,
    Gelu,
    Greater,
    GreaterEqual,
    Indexer,
    LeakyRelu,
    Less,
    LessEqual,
    Log,
    LogicalAnd,
    LogicalNot,
    LogicalOr,
    LogicalXor,
    LogSoftmax,
    MaskedScaledDotProduct,
    MatrixMultiply,
    Max,
    Maximum,
    MaxPool2D,
    Mean,
    Min,
    Minimum,
    ModeSwitch,
    Multiply,
    Negate,
    NotEqual,
    Pad,
    Power,
    Relu,
    Reshape,
    ScaledDotProduct,
    Shape,
    Sigmoid,
    SiLU,
    Sine,
    SoftCrossEntropy,
    Softmax,
    Softplus,
    Split,
    Sqrt,
    SquaredError,
    Squeeze,
    StopGradient,
    Subtract,
    Sum,
    Tanh,
    Transpose,
    Unsqueeze,
    Variance,
    Where,
)

Build = Callable[[tuple[str, ...]], Model]

_rng = np.random.default_rng(1234)


# -- inputs --
def randn(*shape: int) -> np.ndarray:
    return _rng.standard_normal(shape)


def fixed(seed: int, *shape: int) -> np.ndarray:
    """Normal samples from their own seed: the same whatever cases come before (for
    cases whose pass/xfail on a backend depends on the exact numbers)."""
    return np.random.default_rng(seed).standard_normal(shape)


def away(*shape: int) -> np.ndarray:
    """Normal samples at least 0.1 away from 0 (kinks of relu, abs, sign)."""
    x = _rng.standard_normal(shape)
    return np.sign(x) * (0.1 + np.abs(x))


def positive(*shape: int) -> np.ndarray:
    return _rng.uniform(0.5, 2.0, shape)


def distinct(*shape: int) -> np.ndarray:
    """Values at least 0.1 apart (no ties for max/min/argmax)."""
    n = math.prod(shape)
    return (_rng.permutation(n) * 0.1 - n * 0.05 + _rng.uniform(0, 0.02, n)).reshape(
        shape
    )


def ints(*shape: int, high: int = 4) -> np.ndarray:
    return _rng.integers(-high, high, shape).astype(np.int64)


def bools(*shape: int) -> np.ndarray:
    return _rng.random(shape) > 0.5


def labels(classes: int, *shape: int) -> np.ndarray:
    """Int class indices in ``[0, classes)``."""
    return _rng.integers(0, classes, shape).astype(np.int64)


def unit(*shape: int) -> np.ndarray:
    """Probabilities away from 0 and 1 (where log and its derivatives are tame)."""
    return _rng.uniform(0.05, 0.95, shape)


def simplex(*shape: int, axis: int = 1) -> np.ndarray:
    """Values summing to 1 along ``axis``, none near 0 (finite differences of log)."""
    e = _rng.uniform(0.5, 2.0, shape)
    return e / e.sum(axis=axis, keepdims=True)


def apart(*shape: int) -> dict[str, np.ndarray]:
    """``input`` and ``target`` at least 0.1 apart everywhere (kink of abs)."""
    target = _rng.standard_normal(shape)
    return {"input": target + away(*shape), "target": target}


# -- models --
def op(
    factory: Callable[..., Any],
    call: Mapping[str, Any] | None = None,
    types: Mapping[str, Any] | None = None,
    **kw: Any,
):
    """Model around one primitive ``factory(**kw)``: each case input is an ``IOKey``
    of the same name (typed by ``types``), ``call`` binds constants (``right=2.0``),
    the output is ``output``."""

    def build(names: tuple[str, ...]) -> Model:
        model = Model()
        terminals = {n: IOKey(n, type=(types or {}).get(n)) for n in names}
        model |= factory(**kw)(**terminals, **(call or {}), output=IOKey("output"))
        return model

    return build


def split_then_index(names: tuple[str, ...]) -> Model:
    model = Model()
    split = Split(split_size=2, axis=1)
    model |= split(input=IOKey("input"))
    model |= Buffer()(input=split.output[1], output=IOKey("output"))
    return model


def split_last_chunk(names: tuple[str, ...]) -> Model:
    model = Model()
    split = Split(split_size=2, axis=0)
    model |= split(input=IOKey("input"))
    model |= Indexer(index=-1)(input=split.output, output=IOKey("output"))
    return model


def concat_list(names: tuple[str, ...]) -> Model:
    model = Model()
    model |= Concat(axis=1)(input=[IOKey("a"), IOKey("b")], output=IOKey("output"))
    return model


def concat_tuple(names: tuple[str, ...]) -> Model:
    model = Model()
    model |= Concat(axis=0)(input=(IOKey("a"), IOKey("b")), output=IOKey("output"))
    return model


def reshape_like(names: tuple[str, ...]) -> Model:
    """``input.reshape(other.shape) + other``: Shape, folded at compile time."""
    model = Model()
    model |= Shape()(input=IOKey("other"), output="other_shape")
    model |= Reshape()(input=IOKey("input"), shape="other_shape", output="reshaped")
    model |= Add()(left="reshaped", right="other", output=IOKey("output"))
    return model


def dim_from_value(names: tuple[str, ...]) -> Model:
    """``left.shape[1]`` constrained to ``right.shape[0]``, then ``left @ right``."""
    model = Model()
    right = IOKey("right")
    model |= DimFromValue(axis=1)(input=IOKey("left"), value=right.shape[0])
    model |= MatrixMultiply()(left="left", right=right, output=IOKey("output"))
    return model


def mode_switch(names: tuple[str, ...]) -> Model:
    """``switch(training=a, inference=b) * b``."""
    model = Model()
    model |= ModeSwitch()(
        training=IOKey("a"), inference_value=IOKey("b"), output="chosen"
    )
    model |= Multiply()(left="chosen", right="b", output=IOKey("output"))
    return model


def stop_gradient(names: tuple[str, ...]) -> Model:
    """``input * stop_gradient(input)``."""
    model = Model()
    model |= StopGradient()(input=IOKey("input"), output="frozen")
    model |= Multiply()(left="input", right="frozen", output=IOKey("output"))
    return model


def chained_binary(names: tuple[str, ...]) -> Model:
    """``(left - 1.5) / (right + 2) * 0.5`` with constants on both sides."""
    model = Model()
    model |= Subtract()(left=IOKey("left"), right=1.5, output="shifted")
    model |= Add()(left=2.0, right=IOKey("right"), output="denominator")
    model |= Divide()(left="shifted", right="denominator", output="ratio")
    model |= Multiply()(left="ratio", right=0.5, output=IOKey("output"))
    return model


def functional(names: tuple[str, ...]) -> Model:
    """Connection arithmetic: ``(x @ w).sum(axis=1) - x.mean()``."""
    model = Model()
    x, w = IOKey("x"), IOKey("w")
    y = (x @ w).sum(axis=1) - x.mean()
    model |= Buffer()(input=y, output=IOKey("output"))
    return model


def cross_entropy_mean(names: tuple[str, ...]) -> Model:
    """``mean(cross_entropy(input, target))``: a loss reduced to a scalar."""
    model = Model()
    model |= CrossEntropy()(input=IOKey("input"), target=IOKey("target"), output="loss")
    model |= Mean()(input="loss", output=IOKey("output"))
    return model


# -- references --
_erf = np.vectorize(math.erf)


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def variance(x: np.ndarray, axis: Any, keepdim: bool, correction: int) -> np.ndarray:
    mean = x.mean(axis=axis, keepdims=True)
    n = (
        x.size
        if axis is None
        else math.prod(np.shape(x)[a] for a in np.atleast_1d(axis))
    )
    return ((x - mean) ** 2).sum(axis=axis, keepdims=keepdim) / (n - correction)


def _pairs(value: Any, rank: int) -> tuple[int, ...]:
    return (value,) * rank if isinstance(value, int) else tuple(value)


def _window_slices(
    offset: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...], out
) -> tuple[slice, ...]:
    """Where kernel tap ``offset`` reads, for every output position, per axis."""
    return tuple(
        slice(o * d, o * d + s * (m - 1) + 1, s)
        for o, d, s, m in zip(offset, dilation, stride, out, strict=True)
    )


def _out_sizes(padded, kernel, stride, dilation) -> list[int]:
    return [
        (n - d * (k - 1) - 1) // s + 1
        for n, k, s, d in zip(padded, kernel, stride, dilation, strict=True)
    ]


def conv(
    x: np.ndarray,
    w: np.ndarray,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    groups: int = 1,
) -> np.ndarray:
    """Cross-correlation as ``torch.nn.functional.conv1d/2d`` (no bias): a sum over
    kernel taps of strided input slices times that tap's weights, per group."""
    rank = w.ndim - 2
    kernel = w.shape[2:]
    stride, dilation = _pairs(stride, rank), _pairs(dilation, rank)
    if padding == "same":  # total d * (k - 1), the odd unit after
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        pads = [(t // 2, t - t // 2) for t in totals]
    else:
        pads = [(p, p) for p in _pairs(padding, rank)]
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    out = _out_sizes(x.shape[2:], kernel, stride, dilation)
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, c // groups, *x.shape[2:])
    wg = w.reshape(groups, w.shape[0] // groups, *w.shape[1:])
    result = np.zeros((n, groups, w.shape[0] // groups, *out))
    for offset in np.ndindex(*kernel):
        taps = xg[(..., *_window_slices(offset, dilation, stride, out))]
        result += np.einsum("ngc...,gfc->ngf...", taps, wg[(..., *offset)])
    return result.reshape(n, w.shape[0], *out)


def pool2d(
    x: np.ndarray,
    reduce: Callable[..., np.ndarray],
    kernel: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    fill: float = 0.0,
) -> np.ndarray:
    """``reduce`` over the (``fill``-padded) windows, floor mode."""
    kernel = _pairs(kernel, 2)
    stride = kernel if stride is None else _pairs(stride, 2)
    dilation = _pairs(dilation, 2)
    pads = [(p, p) for p in _pairs(padding, 2)]
    x = np.pad(x, [(0, 0), (0, 0), *pads], constant_values=fill)
    out = _out_sizes(x.shape[2:], kernel, stride, dilation)
    taps = [
        x[(..., *_window_slices(offset, dilation, stride, out))]
        for offset in np.ndindex(*kernel)
    ]
    return reduce(np.stack(taps, axis=-1), axis=-1)


def adaptive_avg_pool2d(x: np.ndarray, size: tuple[int | None, int | None]):
    """Means over cells ``[floor(i*n/o), ceil((i+1)*n/o))``, as PyTorch."""
    sizes = [n if o is None else o for n, o in zip(x.shape[2:], size, strict=True)]
    rows, cols = (
        [(math.floor(i * n / o), math.ceil((i + 1) * n / o)) for i in range(o)]
        for n, o in zip(x.shape[2:], sizes, strict=True)
    )
    return np.stack(
        [
            np.stack([x[:, :, r0:r1, c0:c1].mean(axis=(2, 3)) for c0, c1 in cols], -1)
            for r0, r1 in rows
        ],
        axis=-2,
    )


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> np.ndarray:
    """``softmax(q k^T * scale [+ mask]) v``; a bool mask keeps ``True``, causal keeps
    the top-left lower triangle, a fully masked row gives zeros (as PyTorch)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ np.swapaxes(k, -1, -2) * scale
    keep = np.ones(scores.shape[-2:], dtype=bool)
    if causal:
        keep = np.tril(keep)
    if mask is not None and mask.dtype == bool:
        keep = keep & mask
    elif mask is not None:
        scores = scores + mask
    scores = np.where(keep, scores, -np.inf)
    top = scores.max(axis=-1, keepdims=True)
    e = np.exp(scores - np.where(np.isfinite(top), top, 0.0))
    probs = e / np.maximum(e.sum(axis=-1, keepdims=True), np.finfo(float).tiny)
    return probs @ v


def _log_q(x: np.ndarray, axis: int, input_type: str) -> np.ndarray:
    if input_type == "logits":
        return log_softmax(x, axis)
    return np.log(x) if input_type == "probs" else x


def cross_entropy(
    x: np.ndarray, target: np.ndarray, axis: int = 1, input_type: str = "logits"
) -> np.ndarray:
    """``-sum(onehot(target) * log q, axis)`` with int class ``target``."""
    onehot = np.moveaxis(np.eye(x.shape[axis])[target], -1, axis)
    return -(onehot * _log_q(x, axis, input_type)).sum(axis=axis)


def soft_cross_entropy(
    x: np.ndarray, target: np.ndarray, axis: int = 1, input_type: str = "logits"
) -> np.ndarray:
    return -(target * _log_q(x, axis, input_type)).sum(axis=axis)


def binary_cross_entropy(p: np.ndarray, target: np.ndarray) -> np.ndarray:
    return -(target * np.log(p) + (1 - target) * np.log(1 - p))


def binary_cross_entropy_logits(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    # log sigmoid(x) = -softplus(-x), log(1 - sigmoid(x)) = -softplus(x)
    return target * np.logaddexp(0.0, -x) + (1 - target) * np.logaddexp(0.0, x)


def _torch_run(fn: Callable[..., Any], arrays: list[np.ndarray]) -> tuple[list, Any]:
    """``fn`` on float64 torch tensors (float arrays require grad) and its result."""
    import torch

    tensors = [
        torch.tensor(a, dtype=torch.float64, requires_grad=True)
        if _is_float(a)
        else torch.from_numpy(a)
        for a in arrays
    ]
    # torch warns where the case is the point (variance with no degrees of freedom).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "var\\(\\): degrees of freedom", UserWarning)
        return tensors, fn(*tensors)


def by_torch(fn: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    """``reference`` and ``grad_reference`` of a case from torch autograd: ``fn`` maps
    torch tensors (in table order) to the output, as PyTorch defines the op."""

    def reference(*arrays: np.ndarray) -> np.ndarray:
        return _torch_run(fn, list(arrays))[1].detach().numpy()

    def grad_reference(
        inputs: dict[str, np.ndarray], g: np.ndarray
    ) -> dict[str, np.ndarray]:
        import torch

        tensors, out = _torch_run(fn, list(inputs.values()))
        keys = [k for k, t in zip(inputs, tensors, strict=True) if t.requires_grad]
        wrt = [t for t in tensors if t.requires_grad]
        found = torch.autograd.grad(out, wrt, torch.from_numpy(g))
        return {k: v.numpy() for k, v in zip(keys, found, strict=True)}

    return {"reference": reference, "grad_reference": grad_reference}


def torch_bce(p: Any, t: Any) -> Any:
    import torch.nn.functional as F  # noqa: N812 - the usual spelling

    return F.binary_cross_entropy(p, t, reduction="none")


def torch_bce_logits(x: Any, t: Any) -> Any:
    import torch.nn.functional as F  # noqa: N812 - the usual spelling

    return F.binary_cross_entropy_with_logits(x, t, reduction="none")


# -- the table --
@dataclass(frozen=True, eq=False)
class Case:
    """``build(input names)`` gives a model with output ``output``;
    ``reference(*inputs)`` (inputs in table order, float64) gives its expected value.
    Float inputs get gradients when ``grads``; int and bool inputs are data."""

    id: str
    build: Build
    inputs: dict[str, np.ndarray]
    reference: Callable[..., Any]
    grads: bool = True
    known_gaps: dict[str, str] = field(default_factory=dict)
    # Analytic gradients (inputs, output_grad) -> {name: grad}, where finite differences
    # of ``reference`` do not apply (stop_gradient).
    grad_reference: Callable[..., dict[str, np.ndarray]] | None = None
    out_dtype: str | None = None  # when a float output's dtype is not the backend's
    shapes: dict[str, list[int | None]] | None = None  # default: the inputs' shapes
    compile_options: dict[str, Any] = field(default_factory=dict)
    jit: bool = True  # in the (small) torch jit subset

    def __repr__(self) -> str:
        return self.id


def case(id: str, build: Build, inputs: dict[str, np.ndarray], reference, **kw) -> Case:
    return Case(id, build, inputs, reference, **kw)


def _with_axis(fn: Callable[..., Any], **kw: Any) -> Callable[..., Any]:
    return lambda x: fn(x, **kw)


# Int inputs to an always-float op: the output dtype follows the framework's promotion
# (NumPy and JAX float64, torch and MLX float32), not the backend's dtype. Reported.

MLX_FLOAT64_CONV = {
    "mlx-float64": "MLX's float64 convolution runs at float32 precision (CPU)"
}

# onnxruntime's CPU kernels of these ops are float32 only (no double).
ONNX_FLOAT64_CONV = {"onnx-float64": "onnxruntime's CPU Conv has no float64 kernel"}
ONNX_FLOAT64_POOL = {
    "onnx-float64": "onnxruntime's CPU AveragePool has no float64 kernel"
}
ONNX_FLOAT64_ERF = {"onnx-float64": "onnxruntime's CPU Erf has no float64 kernel"}

TORCH_JIT = {
    "add_broadcast",
    "matmul_batched_broadcast",
    "softmax_axis1",
    "sum_axis_keepdim",
    "concat_list",
    "split_then_index",
    "conv2d_groups2",
    "scaled_dot_product_additive_mask_causal",
}

CASES: list[Case] = [
    # -- element-wise arithmetic, broadcasting and scalar constants --
    case("add", op(Add), {"left": randn(3, 4), "right": randn(3, 4)}, np.add),
    case("add_broadcast", op(Add), {"left": randn(3, 4), "right": randn(4)}, np.add),
    case(
        "add_broadcast_both",
        op(Add),
        {"left": randn(2, 1, 4), "right": randn(3, 1)},
        np.add,
    ),
    case(
        "add_scalar_constant",
        op(Add, call={"right": 2.0}),
        {"left": randn(3, 4)},
        lambda x: x + 2.0,
    ),
    case(
        "add_batch_of_1", op(Add), {"left": randn(1, 4), "right": randn(1, 1)}, np.add
    ),
    case(
        "subtract", op(Subtract), {"left": randn(3, 4), "right": randn(4)}, np.subtract
    ),
    case(
        "subtract_constant_left",
        op(Subtract, call={"left": 1.5}),
        {"right": randn(2, 3)},
        lambda y: 1.5 - y,
    ),
    case(
        "multiply",
        op(Multiply),
        {"left": randn(2, 3, 4), "right": randn(3, 1)},
        np.multiply,
    ),
    case("divide", op(Divide), {"left": randn(3, 4), "right": positive(4)}, np.divide),
    case(
        "divide_int_by_int",
        op(Divide, types={"left": Tensor[int], "right": Tensor[int]}),
        {"left": ints(3, 4), "right": np.array([1, 2, 3, 4])},
        np.divide,
        grads=False,
    ),
    case(
        "chained_constants",
        chained_binary,
        {"left": randn(3, 4), "right": positive(4)},
        lambda a, b: (a - 1.5) / (b + 2.0) * 0.5,
    ),
    case(
        "floor_divide",
        op(FloorDivide),
        {"left": 3 * randn(3, 4), "right": positive(4)},
        np.floor_divide,
    ),
    case(
        "floor_divide_int",
        op(FloorDivide),
        {"left": ints(3, 4, high=9), "right": np.array([1, 2, 3, 4])},
        np.floor_divide,
        grads=False,
    ),
    case(
        "power", op(Power), {"base": positive(3, 4), "exponent": randn(3, 4)}, np.power
    ),
    case(
        "power_scalar_exponent",
        op(Power, call={"exponent": 3.0}),
        {"base": randn(3, 4)},
        lambda x: x**3.0,
    ),
    # Where b ** e has no derivative (or an infinite one), gradients are PyTorch's:
    # d/db is 0 where e == 0, d/de is 0 where b == 0 <= e and NaN where b < 0.
    # (0 ** -1 and (-0.5) ** 0.5, where NumPy's forward warns:
    # tests/reliability/test_numerics.py)
    case(
        "power_base_zero_and_negative",
        op(Power),
        {
            "base": np.array([[0.0, 0.0, 0.0, 0.0], [-2.0, -2.0, -2.0, 1.5]]),
            "exponent": np.array([[0.0, 1.0, 2.0, 0.5], [2.0, 3.0, -1.0, 0.0]]),
        },
        **by_torch(lambda b, e: b**e),
    ),
    case(
        "power_scalar_exponent_zero",
        op(Power, call={"exponent": 0.0}),
        {"base": np.array([0.0, -2.0, 1.5])},
        **by_torch(lambda b: b**0.0),
    ),
    case(
        "minimum",
        op(Minimum),
        {"left": distinct(3, 4), "right": distinct(4)},
        np.minimum,
    ),
    case(
        "maximum",
        op(Maximum),
        {"left": distinct(3, 4), "right": distinct(3, 4)},
        np.maximum,
    ),
    case("negate", op(Negate), {"input": randn(3, 4)}, np.negative),
    case("absolute", op(Absolute), {"input": away(3, 4)}, np.abs),
    case("exponential", op(Exponential), {"input": randn(3, 4)}, np.exp),
    case("log", op(Log), {"input": positive(3, 4)}, np.log),
    case("sqrt", op(Sqrt), {"input": positive(3, 4)}, np.sqrt),
    case("sine", op(Sine), {"input": randn(3, 4)}, np.sin),
    case("cosine", op(Cosine), {"input": randn(3, 4)}, np.cos),
    # -- activations --
    case("relu", op(Relu), {"input": away(3, 4)}, lambda x: np.maximum(x, 0.0)),
    case(
        "leaky_relu",
        op(LeakyRelu, slope=0.2),
        {"input": away(3, 4)},
        lambda x: np.where(x > 0, x, 0.2 * x),
    ),
    case(
        "leaky_relu_default",
        op(LeakyRelu),
        {"input": away(2, 5)},
        lambda x: np.where(x > 0, x, 0.01 * x),
    ),
    case(
        "gelu",
        op(Gelu),
        {"input": 2 * randn(3, 4)},
        gelu,
        known_gaps={
            "mlx-float64": "MLX computes erf in float32 precision",
            **ONNX_FLOAT64_ERF,
        },
    ),
    case(
        "gelu_tanh", op(Gelu, approximate=True), {"input": 2 * randn(3, 4)}, gelu_tanh
    ),
    case("sigmoid", op(Sigmoid), {"input": 3 * randn(3, 4)}, sigmoid),
    case("tanh", op(Tanh), {"input": 2 * randn(3, 4)}, np.tanh),
    case(
        "softplus",
        op(Softplus),
        {"input": np.array([[-40.0, -3.0, -0.5, 0.0], [0.7, 2.0, 25.0, 60.0]])},
        lambda x: np.logaddexp(0.0, x),
    ),
    case("silu", op(SiLU), {"input": 3 * randn(3, 4)}, lambda x: x * sigmoid(x)),
    case("softmax", op(Softmax), {"input": randn(3, 5)}, _with_axis(softmax, axis=-1)),
    case(
        "softmax_axis1",
        op(Softmax, axis=1),
        {"input": randn(2, 3, 4)},
        _with_axis(softmax, axis=1),
    ),
    case(
        "softmax_batch_of_1",
        op(Softmax),
        {"input": randn(1, 5)},
        _with_axis(softmax, axis=-1),
    ),
    case(
        "log_softmax",
        op(LogSoftmax),
        {"input": 3 * randn(3, 5)},
        _with_axis(log_softmax, axis=-1),
    ),
    case(
        "log_softmax_axis0",
        op(LogSoftmax, axis=0),
        {"input": randn(4, 3)},
        _with_axis(log_softmax, axis=0),
    ),
    # -- comparisons and logic (bool outputs, no gradients) --
    case(
        "greater",
        op(Greater),
        {"left": randn(3, 4), "right": randn(4)},
        np.greater,
        grads=False,
    ),
    case(
        "greater_scalar",
        op(Greater, call={"right": 0.0}),
        {"left": away(3, 4)},
        lambda x: x > 0.0,
        grads=False,
    ),
    case(
        "greater_equal",
        op(GreaterEqual),
        {"left": ints(3, 4).astype(float), "right": ints(4).astype(float)},
        np.greater_equal,
        grads=False,
    ),
    case(
        "less",
        op(Less),
        {"left": randn(3, 4), "right": randn(3, 4)},
        np.less,
        grads=False,
    ),
    case(
        "less_equal",
        op(LessEqual),
        {"left": ints(3, 4).astype(float), "right": ints(3, 1).astype(float)},
        np.less_equal,
        grads=False,
    ),
    case(
        "equal",
        op(Equal),
        {
            "left": ints(3, 4, high=2).astype(float),
            "right": ints(4, high=2).astype(float),
        },
        np.equal,
        grads=False,
    ),
    case(
        "equal_int",
        op(Equal),
        {"left": ints(3, 4), "right": ints(3, 4)},
        np.equal,
        grads=False,
    ),
    case(
        "not_equal",
        op(NotEqual),
        {
            "left": ints(3, 4, high=2).astype(float),
            "right": ints(3, 4, high=2).astype(float),
        },
        np.not_equal,
        grads=False,
    ),
    case(
        "logical_and",
        op(LogicalAnd),
        {"left": bools(3, 4), "right": bools(4)},
        np.logical_and,
        grads=False,
    ),
    case(
        "logical_or",
        op(LogicalOr),
        {"left": bools(3, 4), "right": bools(3, 4)},
        np.logical_or,
        grads=False,
    ),
    case(
        "logical_xor",
        op(LogicalXor),
        {"left": bools(3, 4), "right": bools(3, 4)},
        np.logical_xor,
        grads=False,
    ),
    case(
        "logical_not",
        op(LogicalNot),
        {"input": bools(3, 4)},
        np.logical_not,
        grads=False,
    ),
    # -- where, cast, stop_gradient --
    case(
        "where",
        op(Where),
        {"condition": bools(3, 4), "input1": randn(3, 4), "input2": randn(4)},
        np.where,
    ),
    case(
        "where_scalar",
        op(Where, call={"input2": 0.0}),
        {"condition": bools(3, 4), "input1": randn(3, 4)},
        lambda c, x: np.where(c, x, 0.0),
    ),
    case(
        "cast_float_to_int",
        op(Cast, dtype="int64"),
        {"input": 3 * randn(3, 4)},
        lambda x: x.astype(np.int64),
        grads=False,
    ),
    case(
        "cast_int_to_float32",
        op(Cast, dtype="float32"),
        {"input": ints(3, 4)},
        lambda x: x.astype(np.float32),
        grads=False,
        out_dtype="float32",
    ),
    case(
        "cast_bool_to_int",
        op(Cast, dtype="int32"),
        {"input": bools(3, 4)},
        lambda x: x.astype(np.int32),
        grads=False,
    ),
    case(
        "cast_float_to_bool",
        op(Cast, dtype="bool"),
        {"input": np.array([[0.0, 1.5, -2.0], [0.0, 0.0, 3.0]])},
        lambda x: x.astype(bool),
        grads=False,
    ),
    case(
        "stop_gradient",
        stop_gradient,
        {"input": randn(3, 4)},
        lambda x: x * x,
        grad_reference=lambda inputs, g: {"input": g * inputs["input"]},
    ),
    # -- reductions --
    case("sum_all", op(Sum), {"input": randn(3, 4)}, np.sum),
    case(
        "sum_axis_keepdim",
        op(Sum, axis=1, keepdim=True),
        {"input": randn(3, 4)},
        lambda x: x.sum(axis=1, keepdims=True),
    ),
    case(
        "sum_axes_tuple",
        op(Sum, axis=(0, 2)),
        {"input": randn(2, 3, 4)},
        lambda x: x.sum(axis=(0, 2)),
    ),
    case(
        "sum_negative_axis_batch_of_1",
        op(Sum, axis=-1),
        {"input": randn(1, 4)},
        lambda x: x.sum(axis=-1),
    ),
    case("mean_all", op(Mean), {"input": randn(3, 4)}, np.mean),
    case(
        "mean_axis0_keepdim",
        op(Mean, axis=0, keepdim=True),
        {"input": randn(3, 4)},
        lambda x: x.mean(axis=0, keepdims=True),
    ),
    case(
        "mean_int",
        op(Mean, types={"input": Tensor[int]}, axis=1),
        {"input": ints(3, 4)},
        lambda x: x.mean(axis=1),
        grads=False,
    ),
    case("max_all", op(Max), {"input": distinct(3, 4)}, np.max),
    case(
        "max_axis",
        op(Max, axis=1),
        {"input": distinct(2, 3, 4)},
        lambda x: x.max(axis=1),
    ),
    case(
        "min_axis_keepdim",
        op(Min, axis=-1, keepdim=True),
        {"input": distinct(3, 4)},
        lambda x: x.min(axis=-1, keepdims=True),
    ),
    case("min_all", op(Min), {"input": distinct(2, 3)}, np.min),
    case("variance_all", op(Variance), {"input": randn(3, 4)}, lambda x: x.var()),
    case(
        "variance_axis_correction",
        op(Variance, axis=1, correction=1),
        {"input": randn(3, 5)},
        lambda x: variance(x, 1, False, 1),
    ),
    case(
        "variance_axes_keepdim",
        op(Variance, axis=(0, 2), keepdim=True),
        {"input": randn(2, 3, 4)},
        lambda x: variance(x, (0, 2), True, 0),
    ),
    # One sample, correction 1: no degrees of freedom, NaN value and gradient (PyTorch).
    case(
        "variance_one_sample_correction",
        op(Variance, axis=1, correction=1),
        {"input": randn(3, 1)},
        **by_torch(lambda x: x.var(dim=1, correction=1)),
    ),
    case(
        "variance_all_one_element_correction",
        op(Variance, correction=1),
        {"input": randn(1)},
        **by_torch(lambda x: x.var(correction=1)),
    ),
    case("arg_max_all", op(ArgMax), {"input": distinct(3, 4)}, np.argmax, grads=False),
    case(
        "arg_max_axis",
        op(ArgMax, axis=1),
        {"input": distinct(3, 4)},
        lambda x: x.argmax(axis=1),
        grads=False,
    ),
    case(
        "arg_max_keepdim",
        op(ArgMax, axis=0, keepdim=True),
        {"input": distinct(3, 4)},
        lambda x: x.argmax(axis=0)[None],
        grads=False,
    ),
    case(
        "arg_min_axis",
        op(ArgMin, axis=-1),
        {"input": distinct(2, 3, 4)},
        lambda x: x.argmin(axis=-1),
        grads=False,
    ),
    case("arg_min_all", op(ArgMin), {"input": distinct(3, 4)}, np.argmin, grads=False),
    # -- linear algebra --
    case(
        "matmul",
        op(MatrixMultiply),
        {"left": randn(3, 4), "right": randn(4, 2)},
        np.matmul,
    ),
    case(
        "matmul_1d_left",
        op(MatrixMultiply),
        {"left": randn(4), "right": randn(4, 2)},
        np.matmul,
    ),
    case(
        "matmul_1d_right",
        op(MatrixMultiply),
        {"left": randn(3, 4), "right": randn(4)},
        np.matmul,
    ),
    case(
        "matmul_1d_both",
        op(MatrixMultiply),
        {"left": randn(4), "right": randn(4)},
        np.matmul,
    ),
    case(
        "matmul_batched",
        op(MatrixMultiply),
        {"left": randn(2, 3, 4), "right": randn(2, 4, 5)},
        np.matmul,
    ),
    case(
        "matmul_batched_broadcast",
        op(MatrixMultiply),
        {"left": randn(2, 1, 3, 4), "right": randn(5, 4, 2)},
        np.matmul,
    ),
    case(
        "matmul_batch_of_1",
        op(MatrixMultiply),
        {"left": randn(1, 3), "right": randn(3, 2)},
        np.matmul,
    ),
    case(
        "functional_expression",
        functional,
        {"x": randn(3, 4), "w": randn(4, 2)},
        lambda x, w: (x @ w).sum(axis=1) - x.mean(),
    ),
    # -- shape manipulation --
    case(
        "reshape",
        op(Reshape, shape=(4, -1)),
        {"input": randn(2, 3, 2)},
        lambda x: x.reshape(4, -1),
    ),
    case(
        "reshape_like_shape",
        reshape_like,
        {"input": randn(2, 6), "other": randn(3, 4)},
        lambda x, y: x.reshape(3, 4) + y,
    ),
    case(
        "transpose_reverse",
        op(Transpose, axes=None),
        {"input": randn(2, 3, 4)},
        np.transpose,
    ),
    case(
        "transpose_axes",
        op(Transpose, axes=(1, 0, 2)),
        {"input": randn(2, 3, 4)},
        lambda x: x.transpose(1, 0, 2),
    ),
    case(
        "flatten",
        op(Flatten),
        {"input": randn(2, 3, 4)},
        lambda x: x.reshape(-1),
    ),
    case(
        "flatten_start_end",
        op(Flatten, start_dim=1, end_dim=2),
        {"input": randn(2, 3, 4, 2)},
        lambda x: x.reshape(2, 12, 2),
    ),
    case(
        "concat_list",
        concat_list,
        {"a": randn(2, 3), "b": randn(2, 2)},
        lambda a, b: np.concatenate([a, b], axis=1),
    ),
    case(
        "concat_tuple",
        concat_tuple,
        {"a": randn(1, 3), "b": randn(2, 3)},
        lambda a, b: np.concatenate([a, b], axis=0),
    ),
    case(
        "split_then_index",
        split_then_index,
        {"input": randn(3, 5)},
        lambda x: x[:, 2:4],
    ),
    case(
        "split_last_chunk",
        split_last_chunk,
        {"input": randn(5, 2)},
        lambda x: x[4:],
    ),
    case("index_int", op(Indexer, index=1), {"input": randn(3, 4)}, lambda x: x[1]),
    case(
        "index_negative",
        op(Indexer, index=-1),
        {"input": randn(3, 4)},
        lambda x: x[-1],
    ),
    case(
        "index_slices",
        op(Indexer, index=(slice(None), slice(1, 3))),
        {"input": randn(3, 4)},
        lambda x: x[:, 1:3],
    ),
    case(
        "index_step",
        op(Indexer, index=slice(None, None, 2)),
        {"input": randn(5, 2)},
        lambda x: x[::2],
    ),
    case(
        "index_ellipsis_none",
        op(Indexer, index=(Ellipsis, None, 0)),
        {"input": randn(2, 3, 4)},
        lambda x: x[..., None, 0],
    ),
    case(
        "squeeze_axis",
        op(Squeeze, axis=1),
        {"input": randn(3, 1, 4)},
        lambda x: x.squeeze(1),
    ),
    case("squeeze_all", op(Squeeze), {"input": randn(1, 3, 1)}, np.squeeze),
    case(
        "unsqueeze",
        op(Unsqueeze, axis=-1),
        {"input": randn(3, 4)},
        lambda x: x[..., None],
    ),
    case(
        "expand",
        op(Expand, shape=(2, 3, -1)),
        {"input": randn(1, 4)},
        lambda x: np.broadcast_to(x, (2, 3, 4)),
    ),
    case("buffer", op(Buffer), {"input": randn(3, 4)}, lambda x: x),
    # -- compile-time primitives --
    case(
        "dim_from_value",
        dim_from_value,
        {"left": randn(3, 4), "right": randn(4, 2)},
        np.matmul,
        shapes={"left": [3, None], "right": [4, 2]},
    ),
    case(
        "mode_switch_training",
        mode_switch,
        {"a": randn(3, 4), "b": randn(3, 4)},
        lambda a, b: a * b,
    ),
    case(
        "mode_switch_inference",
        mode_switch,
        {"b": randn(3, 4)},
        lambda b: b * b,
        grads=False,
        compile_options={"inference": True},
    ),
    # -- convolution (groups is a constructor argument, or bound at the call) --
    case(
        "conv2d_stride2_pad1",
        op(Convolution2D, stride=2, padding=1, groups=1),
        {"input": randn(2, 3, 5, 6), "weight": randn(4, 3, 3, 3)},
        lambda x, w: conv(x, w, stride=2, padding=1),
        known_gaps={**MLX_FLOAT64_CONV, **ONNX_FLOAT64_CONV},
    ),
    case(
        "conv2d_same_dilation_batch_of_1",
        op(Convolution2D, padding="same", dilation=(2, 1), groups=1),
        {"input": randn(1, 2, 5, 6), "weight": randn(3, 2, 3, 4)},
        lambda x, w: conv(x, w, padding="same", dilation=(2, 1)),
        known_gaps={**MLX_FLOAT64_CONV, **ONNX_FLOAT64_CONV},
    ),
    case(
        "conv2d_dilation2",
        op(Convolution2D, dilation=2, groups=1),
        {"input": randn(2, 2, 6, 5), "weight": randn(3, 2, 2, 2)},
        lambda x, w: conv(x, w, dilation=2),
        known_gaps={**MLX_FLOAT64_CONV, **ONNX_FLOAT64_CONV},
    ),
    case(
        "conv2d_groups2",
        op(Convolution2D, padding=1, groups=2),
        {"input": randn(2, 4, 4, 4), "weight": randn(6, 2, 3, 3)},
        lambda x, w: conv(x, w, padding=1, groups=2),
        known_gaps={**MLX_FLOAT64_CONV, **ONNX_FLOAT64_CONV},
    ),
    case(
        "conv2d_groups_at_call_stride_pair",
        op(Convolution2D, call={"groups": 2}, stride=(1, 2)),
        {"input": randn(1, 4, 4, 5), "weight": randn(2, 2, 2, 2)},
        lambda x, w: conv(x, w, stride=(1, 2), groups=2),
        known_gaps={**MLX_FLOAT64_CONV, **ONNX_FLOAT64_CONV},
    ),
    # Their own seeds: whether MLX's float32-precision float64 result misses the
    # tolerance depends on the exact numbers.
    case(
        "conv1d_padding",
        op(Convolution1D, padding=2, groups=1),
        {"input": fixed(11, 2, 3, 6), "weight": fixed(12, 4, 3, 3)},
        lambda x, w: conv(x, w, padding=2),
        known_gaps={**MLX_FLOAT64_CONV, **ONNX_FLOAT64_CONV},
    ),
    case(
        "conv1d_same_even_kernel",
        op(Convolution1D, padding="same", groups=1),
        {"input": fixed(15, 2, 2, 7), "weight": fixed(16, 3, 2, 4)},
        lambda x, w: conv(x, w, padding="same"),
        known_gaps=ONNX_FLOAT64_CONV,
    ),
    case(
        "conv1d_stride2_dilation2_groups2",
        op(Convolution1D, stride=2, dilation=2, groups=2),
        {"input": randn(1, 4, 9), "weight": randn(4, 2, 3)},
        lambda x, w: conv(x, w, stride=2, dilation=2, groups=2),
        known_gaps={**MLX_FLOAT64_CONV, **ONNX_FLOAT64_CONV},
    ),
    # -- pooling (max pool inputs without ties) --
    case(
        "max_pool2d_k3_s2_p1",
        op(MaxPool2D, kernel_size=3, stride=2, padding=1),
        {"input": distinct(2, 2, 5, 6)},
        lambda x: pool2d(x, np.max, 3, 2, 1, fill=-np.inf),
    ),
    case(
        "max_pool2d_default_stride",
        op(MaxPool2D, kernel_size=2),
        {"input": distinct(1, 3, 4, 5)},
        lambda x: pool2d(x, np.max, 2, fill=-np.inf),
    ),
    case(
        "max_pool2d_pairs_dilation",
        op(MaxPool2D, kernel_size=(2, 3), stride=1, padding=1, dilation=2),
        {"input": distinct(1, 2, 5, 6)},
        lambda x: pool2d(x, np.max, (2, 3), 1, 1, 2, fill=-np.inf),
    ),
    case(
        "avg_pool2d_k3_s2_p1",
        op(AvgPool2D, kernel_size=3, stride=2, padding=1),
        {"input": randn(2, 2, 5, 6)},
        lambda x: pool2d(x, np.mean, 3, 2, 1),
        known_gaps=ONNX_FLOAT64_POOL,
    ),
    case(
        "avg_pool2d_default_stride",
        op(AvgPool2D, kernel_size=(2, 2)),
        {"input": randn(1, 3, 4, 5)},
        lambda x: pool2d(x, np.mean, 2),
        known_gaps=ONNX_FLOAT64_POOL,
    ),
    case(
        "adaptive_avg_pool2d_1x1",
        op(AdaptiveAvgPool2D, output_size=(1, 1)),
        {"input": randn(2, 3, 4, 5)},
        lambda x: adaptive_avg_pool2d(x, (1, 1)),
        known_gaps=ONNX_FLOAT64_POOL,
    ),
    case(
        "adaptive_avg_pool2d_uneven",
        op(AdaptiveAvgPool2D, output_size=(3, 2)),
        {"input": randn(1, 2, 5, 7)},
        lambda x: adaptive_avg_pool2d(x, (3, 2)),
    ),
    case(
        "adaptive_avg_pool2d_keep_height",
        op(AdaptiveAvgPool2D, output_size=(None, 3)),
        {"input": randn(1, 2, 3, 5)},
        lambda x: adaptive_avg_pool2d(x, (None, 3)),
    ),
    # -- embedding (int indices are data; repeated rows sum their gradients) --
    case(
        "embedding",
        op(Embedding),
        {"input": np.array([[1, 4, 1], [0, 3, 4]]), "weight": randn(5, 3)},
        lambda i, w: w[i],
    ),
    case(
        "embedding_fixed_sizes_1d",
        op(Embedding, num_embeddings=4, dim=2),
        {"input": np.array([3, 0, 3, 3]), "weight": randn(4, 2)},
        lambda i, w: w[i],
    ),
    # -- attention --
    case(
        "scaled_dot_product",
        op(ScaledDotProduct),
        {"query": randn(2, 3, 4), "key": randn(2, 5, 4), "value": randn(2, 5, 3)},
        attention,
    ),
    case(
        "scaled_dot_product_causal_scale",
        op(ScaledDotProduct, is_causal=True, scale=0.5),
        {
            "query": randn(1, 2, 4, 3),
            "key": randn(1, 2, 5, 3),
            "value": randn(1, 2, 5, 2),
        },
        lambda q, k, v: attention(q, k, v, causal=True, scale=0.5),
    ),
    case(
        "scaled_dot_product_bool_mask",
        op(MaskedScaledDotProduct),
        {
            "query": randn(2, 3, 4),
            "key": randn(2, 4, 4),
            "value": randn(2, 4, 2),
            # Row 1 fully masked: zeros out, no gradient, as PyTorch.
            "mask": np.array(
                [
                    [True, False, True, True],
                    [False, False, False, False],
                    [False, True, False, True],
                ]
            ),
        },
        attention,
    ),
    case(
        "scaled_dot_product_additive_mask_causal",
        op(ScaledDotProduct, use_mask=True, is_causal=True),
        {
            "query": randn(2, 3, 4),
            "key": randn(2, 3, 4),
            "value": randn(2, 3, 2),
            "mask": randn(3, 3),  # a float mask gets a gradient too
        },
        lambda q, k, v, m: attention(q, k, v, m, causal=True),
    ),
    # -- dropout: the identity in inference or with p == 0 (training draws are
    # random; tests/models/test_nn_primitives.py checks their statistics) --
    case(
        "dropout_inference",
        op(Dropout, p=0.5),
        {"input": randn(3, 4)},
        lambda x: x,
        grads=False,  # an inference model has no gradients
        compile_options={"inference": True},
    ),
    case(
        "dropout_p0_training", op(Dropout, p=0.0), {"input": randn(3, 4)}, lambda x: x
    ),
    # -- pad --
    case(
        "pad_constant",
        op(Pad, pad_width=((0, 0), (1, 2), (2, 0)), value=1.5),
        {"input": randn(2, 3, 4)},
        lambda x: np.pad(x, ((0, 0), (1, 2), (2, 0)), constant_values=1.5),
    ),
    case(
        "pad_reflect",
        op(Pad, pad_width=((1, 2), (2, 1)), mode="reflect"),
        {"input": randn(4, 3)},
        lambda x: np.pad(x, ((1, 2), (2, 1)), mode="reflect"),
    ),
    case(
        "pad_edge",
        op(Pad, pad_width=((0, 0), (3, 1), (0, 2)), mode="edge"),
        {"input": randn(2, 3, 2)},
        lambda x: np.pad(x, ((0, 0), (3, 1), (0, 2)), mode="edge"),
    ),
    # -- losses (unreduced; a reduction is a separate primitive) --
    case(
        "squared_error_broadcast",
        op(SquaredError),
        {"input": randn(3, 4), "target": randn(4)},
        lambda x, t: (x - t) ** 2,
    ),
    case("absolute_error", op(AbsoluteError), apart(3, 4), lambda x, t: np.abs(x - t)),
    case(
        "cross_entropy",
        op(CrossEntropy),
        {"input": randn(4, 5), "target": labels(5, 4)},
        cross_entropy,
    ),
    case(
        "cross_entropy_axis_last",
        op(CrossEntropy, axis=-1),
        {"input": randn(2, 3, 4), "target": labels(4, 2, 3)},
        lambda x, t: cross_entropy(x, t, axis=-1),
    ),
    case(
        "cross_entropy_probs",
        op(CrossEntropy, input_type="probs"),
        {"input": simplex(3, 4), "target": labels(4, 3)},
        lambda x, t: cross_entropy(x, t, input_type="probs"),
    ),
    case(
        "cross_entropy_log_probs_spatial",
        op(CrossEntropy, input_type="log_probs"),
        {"input": np.log(simplex(2, 3, 2)), "target": labels(3, 2, 2)},
        lambda x, t: cross_entropy(x, t, input_type="log_probs"),
    ),
    case(
        "cross_entropy_mean",
        cross_entropy_mean,
        {"input": randn(4, 3), "target": labels(3, 4)},
        lambda x, t: cross_entropy(x, t).mean(),
    ),
    case(
        "cross_entropy_soft",
        op(SoftCrossEntropy),
        {"input": randn(3, 4), "target": simplex(3, 4)},
        soft_cross_entropy,
    ),
    case(
        "cross_entropy_soft_one_hot",
        op(CrossEntropy, categorical=False),
        {"input": randn(3, 4), "target": np.eye(4)[labels(4, 3)]},
        soft_cross_entropy,
    ),
    case(
        "cross_entropy_soft_probs_axis0",
        op(SoftCrossEntropy, input_type="probs", axis=0),
        {"input": simplex(4, 3, axis=0), "target": simplex(4, 3, axis=0)},
        lambda x, t: soft_cross_entropy(x, t, axis=0, input_type="probs"),
    ),
    case(
        "binary_cross_entropy",
        op(BinaryCrossEntropy),
        {"input": unit(3, 4), "target": unit(3, 4)},
        binary_cross_entropy,
    ),
    case(
        "binary_cross_entropy_logits",
        op(BinaryCrossEntropy, input_type="logits"),
        {"input": 3 * randn(3, 4), "target": unit(3, 4)},
        binary_cross_entropy_logits,
    ),
    # At logit 0 the gradient is sigmoid(0) - target, with no kink.
    case(
        "binary_cross_entropy_logits_at_zero",
        op(BinaryCrossEntropy, input_type="logits"),
        {
            "input": np.array([[0.0, 0.0, 0.0], [0.0, 1.5, -2.0]]),
            "target": np.array([[1.0, 0.0, 0.5], [0.25, 1.0, 0.0]]),
        },
        **by_torch(torch_bce_logits),
    ),
    # p = 0 or 1: logs clamped at -100 and the input gradient's denominator at 1e-12,
    # as PyTorch (whose target gradient, -logit(p), is infinite there).
    case(
        "binary_cross_entropy_probs_at_0_and_1",
        op(BinaryCrossEntropy),
        {
            "input": np.array([[0.0, 0.0, 1.0, 1.0], [0.25, 0.6, 1e-30, 0.5]]),
            "target": np.array([[0.0, 1.0, 0.0, 1.0], [0.5, 1.0, 0.3, 0.5]]),
        },
        **by_torch(torch_bce),
    ),
]

CASE_IDS = [c.id for c in CASES]


# -- running --
def _is_float(x: np.ndarray) -> bool:
    return x.dtype.kind == "f"


def _rounded(case: Case, dtype: str) -> dict[str, np.ndarray]:
    """The inputs as the backend sees them (floats rounded to ``dtype``), in float64."""
    return {
        k: v.astype(dtype).astype(np.float64) if _is_float(v) else v
        for k, v in case.inputs.items()
    }


def _trainable(case: Case) -> list[str]:
    if not case.grads:
        return []
    return [k for k, v in case.inputs.items() if _is_float(v)]


def _compile(case: Case, backend: Any, *, jit: bool) -> Any:
    shapes = case.shapes or {k: list(v.shape) for k, v in case.inputs.items()}
    trainable = set(_trainable(case))
    return ml.compile(
        case.build(tuple(case.inputs)),
        backend,
        shapes=shapes,
        trainable_keys=trainable,
        data_keys=set(case.inputs) - trainable,
        jit=jit,
        **case.compile_options,
    )


def _run(case: Case, backend: Any, dtype: str, *, jit: bool) -> tuple[Any, Any]:
    """Outputs (and gradients, if the case has them) as NumPy arrays."""
    pm = _compile(case, backend, jit=jit)
    assert set(pm.input_keys) == set(case.inputs)
    trainable = _trainable(case)
    params, data = {}, {}
    for key, value in case.inputs.items():
        target = params if key in trainable else data
        target[key] = backend.array(value.astype(dtype) if _is_float(value) else value)
    if not trainable:
        outputs = pm.evaluate(params, data)
        return backend.to_numpy(outputs["output"]), None
    out_grad = _output_gradient(case, dtype)
    outputs, grads = pm.evaluate(
        params, data, output_gradients={"output": backend.array(out_grad)}
    )
    return backend.to_numpy(outputs["output"]), {
        k: backend.to_numpy(v) for k, v in grads.items()
    }


@cache
def _expected(case_id: str, dtype: str) -> np.ndarray:
    case = CASES[CASE_IDS.index(case_id)]
    return np.asarray(case.reference(*_rounded(case, dtype).values()))


@cache
def _reference(case_id: str, dtype: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    case = CASES[CASE_IDS.index(case_id)]
    inputs = _rounded(case, dtype)
    expected = _expected(case_id, dtype)
    if not _trainable(case):
        return expected, {}
    g = _output_gradient(case, dtype).astype(np.float64)
    if case.grad_reference is not None:
        return expected, case.grad_reference(inputs, g)
    return expected, {
        k: _finite_difference(case, inputs, k, g) for k in _trainable(case)
    }


def _output_gradient(case: Case, dtype: str) -> np.ndarray:
    inputs = _rounded(case, "float64")
    shape = np.shape(case.reference(*inputs.values()))
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    return rng.standard_normal(shape).astype(dtype)


def _finite_difference(
    case: Case, inputs: dict[str, np.ndarray], key: str, g: np.ndarray, h: float = 1e-3
) -> np.ndarray:
    """d/d inputs[key] of sum(g * reference(inputs)), by fourth-order central
    differences."""

    def phi(x: np.ndarray) -> float:
        return float(np.sum(g * case.reference(*{**inputs, key: x}.values())))

    x = inputs[key]
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        values = []
        for step in (2, 1, -1, -2):
            shifted = x.copy()
            shifted[index] += step * h
            values.append(phi(shifted))
        f2, f1, m1, m2 = values
        grad[index] = (-f2 + 8 * f1 - 8 * m1 + m2) / (12 * h)
    return grad


def _tolerance(dtype: str) -> dict[str, float]:
    return (
        {"rtol": 1e-5, "atol": 1e-8}
        if dtype == "float64"
        else {"rtol": 1e-3, "atol": 1e-5}
    )


def _check_output(
    case: Case, got: np.ndarray, expected: np.ndarray, dtype: str
) -> None:
    assert got.shape == expected.shape, f"shape {got.shape} != {expected.shape}"
    if expected.dtype == bool:
        assert got.dtype == bool, f"dtype {got.dtype}, expected bool"
        np.testing.assert_array_equal(got, expected)
    elif expected.dtype.kind in "iu":
        assert got.dtype.kind in "iu", f"dtype {got.dtype}, expected an int dtype"
        np.testing.assert_array_equal(got, expected)
    else:
        assert got.dtype.name == (case.out_dtype or dtype), f"dtype {got.dtype}"
        np.testing.assert_allclose(got, expected, **_tolerance(dtype))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_primitive(
    case: Case, backend_name: str, float_dtype: str, make_backend: Callable[..., Any]
) -> None:
    backend = make_backend(backend_name, float_dtype)
    got, grads = _run(case, backend, float_dtype, jit=False)
    expected, expected_grads = _reference(case.id, float_dtype)
    _check_output(case, got, expected, float_dtype)
    if grads is None:
        return
    assert set(grads) == set(expected_grads)
    for key, expected_grad in expected_grads.items():
        assert grads[key].shape == case.inputs[key].shape, key
        assert grads[key].dtype.name == float_dtype, (key, grads[key].dtype)
        np.testing.assert_allclose(
            grads[key], expected_grad, **_tolerance(float_dtype), err_msg=f"d/d{key}"
        )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_primitive_forward(
    case: Case,
    inference_backend_name: str,
    float_dtype: str,
    make_backend: Callable[..., Any],
) -> None:
    """Inference-only backends (onnx): the forward pass of every case."""
    backend = make_backend(inference_backend_name, float_dtype)
    pm = _compile(case, backend, jit=False)
    trainable = _trainable(case)
    params, data = {}, {}
    for key, value in case.inputs.items():
        target = params if key in trainable else data
        target[key] = backend.array(
            value.astype(float_dtype) if _is_float(value) else value
        )
    got = backend.to_numpy(pm.evaluate(params, data)["output"])
    _check_output(case, got, _expected(case.id, float_dtype), float_dtype)


def _jit_params() -> list[Any]:
    from mithril_core.plugins import get_registry

    params = []
    for name in ml.available_backends():
        if not get_registry().backend_class(name).supports_jit:
            continue
        for c in CASES:
            if name != "torch" or c.id in TORCH_JIT:
                params.append(pytest.param(name, c, id=f"{name}-{c.id}"))
    return params


@pytest.mark.parametrize(("jit_backend", "case"), _jit_params())
def test_jit_matches_eager(
    jit_backend: str, case: Case, make_backend: Callable[..., Any]
) -> None:
    backend = make_backend(jit_backend, "float32")
    eager, eager_grads = _run(case, backend, "float32", jit=False)
    jitted, jitted_grads = _run(case, backend, "float32", jit=True)
    tolerance = {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(jitted, eager, **tolerance)
    assert jitted.dtype == eager.dtype
    for key in eager_grads or {}:
        np.testing.assert_allclose(jitted_grads[key], eager_grads[key], **tolerance)


def test_every_core_primitive_has_a_case() -> None:
    covered: set[type] = set()
    for c in CASES:
        covered.update(type(p) for p, _ in c.build(tuple(c.inputs)).primitives())
    missing = sorted(cls.__name__ for cls in CORE_PRIMITIVES if cls not in covered)
    assert not missing, f"core primitives without a conformance case: {missing}"


def test_case_ids_are_unique() -> None:
    assert len(set(CASE_IDS)) == len(CASE_IDS)


def test_torch_jit_subset_names_cases() -> None:
    assert TORCH_JIT <= set(CASE_IDS)
