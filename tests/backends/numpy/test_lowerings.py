from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mithril_core.backends.numpy.lowerings import LOWERINGS
from mithril_core.backends.numpy.lowerings._utils import unbroadcast
from mithril_core.backends.numpy.lowerings.elementwise import _erf
from mithril_core.primitives import CORE_PRIMITIVES, DimFromValue, ModeSwitch

_erf_ref = np.vectorize(math.erf, otypes=[np.float64])


def rand(*shape, low=None, high=None, seed=0):
    rng = np.random.default_rng(seed + 7 * len(shape) + int(np.prod(shape)))
    if low is not None:
        return rng.uniform(low, high, size=shape)
    return rng.standard_normal(shape)


def away_from_zero(*shape, seed=0):
    x = rand(*shape, seed=seed)
    return np.where(np.abs(x) < 0.1, 0.5, x)


def numeric_grads(f, xs, output_grad, eps=1e-6):
    grads = []
    for x in xs:
        g = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            orig = x[idx]
            x[idx] = orig + eps
            plus = np.sum(output_grad * f(*xs))
            x[idx] = orig - eps
            minus = np.sum(output_grad * f(*xs))
            x[idx] = orig
            g[idx] = (plus - minus) / (2 * eps)
        grads.append(g)
    return grads


def check(name, args, reference=None, rtol=1e-7, atol=1e-7, grad_atol=1e-6):
    forward, vjp = _pair(name)
    args = list(args)
    output = forward(*args)
    if reference is not None:
        np.testing.assert_allclose(output, reference(*args), rtol=rtol, atol=atol)
    diff = [
        i
        for i, a in enumerate(args)
        if isinstance(a, np.ndarray) and a.dtype == np.float64
    ]
    output_grad = rand(*np.shape(output), seed=1)
    grads = vjp(output_grad, output, *args)
    assert isinstance(grads, tuple) and len(grads) == len(args)

    def f(*xs):
        full = list(args)
        for i, x in zip(diff, xs, strict=True):
            full[i] = x
        return forward(*full)

    expected = numeric_grads(f, [args[i].copy() for i in diff], output_grad)
    for i, grad in enumerate(grads):
        if i in diff:
            assert grad is not None, f"{name}: input {i} has no gradient"
            assert np.shape(grad) == np.shape(args[i])
            np.testing.assert_allclose(
                grad, expected[diff.index(i)], atol=grad_atol, rtol=1e-5
            )
        else:
            assert grad is None, f"{name}: input {i} should have no gradient"
    for i in diff:
        needs = [True] * len(args)
        needs[i] = False
        assert vjp(output_grad, output, *args, needs=needs)[i] is None
    return output, grads


# --- helpers -------------------------------------------------------------


def test_unbroadcast_sums_broadcast_axes():
    grad = np.ones((2, 3, 4))
    np.testing.assert_array_equal(unbroadcast(grad, (3, 1)), np.full((3, 1), 8.0))
    np.testing.assert_array_equal(unbroadcast(grad, ()), np.array(24.0))
    assert unbroadcast(grad, (2, 3, 4)) is grad


def _pair(name: str) -> tuple[Any, Any]:
    lowering = LOWERINGS[name]
    return lowering.forward, lowering.vjp


def test_merged_table_has_every_primitive():
    # Compile removes these (a shape constraint, a training/inference choice).
    compile_time = {DimFromValue.op_name, ModeSwitch.op_name}
    assert set(LOWERINGS) == {cls.op_name for cls in CORE_PRIMITIVES} - compile_time
    for name, lowering in LOWERINGS.items():
        # Non-differentiable ops too have a VJP (it returns None gradients).
        assert callable(lowering.forward) and callable(lowering.vjp), name


# --- elementwise -----------------------------------------------------------

BINARY_SHAPES = [
    pytest.param((2, 3), (2, 3), id="same"),
    pytest.param((3, 1), (4,), id="3x1-4"),
    pytest.param((4,), (2, 3, 1), id="4-2x3x1"),
    pytest.param((), (3,), id="0d-3"),
]

BINARY = {
    "add": lambda a, b: a + b,
    "subtract": lambda a, b: a - b,
    "multiply": lambda a, b: a * b,
    "divide": lambda a, b: a / b,
    "power": lambda a, b: a**b,
}


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize(("left_shape", "right_shape"), BINARY_SHAPES)
def test_binary_arrays(name, left_shape, right_shape):
    positive = name in ("divide", "power")
    left = rand(*left_shape, low=0.5, high=2.0) if positive else rand(*left_shape)
    right = (
        rand(*right_shape, low=0.5, high=2.0, seed=3)
        if positive
        else rand(*right_shape, seed=3)
    )
    check(name, [left, right], BINARY[name])


@pytest.mark.parametrize("name", BINARY)
@pytest.mark.parametrize("scalar", [2.0, 3])
def test_binary_with_python_scalar(name, scalar):
    x = rand(3, 4, low=0.5, high=2.0)
    check(name, [x, scalar], BINARY[name])
    check(name, [scalar, x], BINARY[name])


@pytest.mark.parametrize("name", ["minimum", "maximum"])
@pytest.mark.parametrize(("left_shape", "right_shape"), BINARY_SHAPES)
def test_minimum_maximum(name, left_shape, right_shape):
    reference = getattr(np, name)
    check(name, [rand(*left_shape), rand(*right_shape, seed=5)], reference)
    check(name, [rand(*left_shape), 0.25], reference)


@pytest.mark.parametrize("name", ["minimum", "maximum"])
def test_minimum_maximum_ties_split_gradient(name):
    left = np.array([1.0, 2.0, 3.0])
    right = np.array([1.0, 5.0, 0.0])
    forward, vjp = _pair(name)
    output = forward(left, right)
    g_left, g_right = vjp(np.ones(3), output, left, right)
    left_wins = [0.5, 0.0, 1.0] if name == "maximum" else [0.5, 1.0, 0.0]
    np.testing.assert_allclose(g_left, left_wins)
    np.testing.assert_allclose(g_right, 1.0 - np.array(left_wins))


def test_floor_divide():
    forward, vjp = _pair("floor_divide")
    left, right = rand(3, 1) * 10, rand(4, low=1.0, high=3.0)
    out = forward(left, right)
    np.testing.assert_array_equal(out, np.floor(left / right))
    assert vjp(np.ones_like(out), out, left, right) == (None, None)
    assert forward(np.arange(7), 2).dtype == np.int64


def test_power_exponent_gradient_at_zero_base_is_zero():
    forward, vjp = _pair("power")
    base, exponent = np.array([0.0, 2.0]), np.array([2.0, 3.0])
    out = forward(base, exponent)
    grads = vjp(np.ones(2), out, base, exponent)
    np.testing.assert_allclose(grads[0], [0.0, 12.0])
    np.testing.assert_allclose(grads[1], [0.0, 8.0 * math.log(2.0)])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


UNARY = {
    "negate": (lambda x: -x, rand),
    "absolute": (np.abs, away_from_zero),
    "exponential": (np.exp, rand),
    "log": (np.log, lambda *s: rand(*s, low=0.5, high=3.0)),
    "sqrt": (np.sqrt, lambda *s: rand(*s, low=0.5, high=3.0)),
    "sine": (np.sin, rand),
    "cosine": (np.cos, rand),
    "relu": (lambda x: x * (x > 0), away_from_zero),
    "sigmoid": (_sigmoid, rand),
    "tanh": (np.tanh, rand),
    "softplus": (lambda x: np.log1p(np.exp(x)), rand),
    "silu": (lambda x: x * _sigmoid(x), rand),
}


@pytest.mark.parametrize("name", UNARY)
@pytest.mark.parametrize("shape", [(3, 4), ()], ids=["3x4", "0d"])
def test_unary(name, shape):
    reference, make = UNARY[name]
    check(name, [make(*shape)], reference)


def test_sigmoid_softplus_stable_for_large_inputs():
    x = np.array([-1000.0, -40.0, 0.0, 40.0, 1000.0])
    sig = LOWERINGS["sigmoid"].forward(x)
    np.testing.assert_allclose(
        sig, [0.0, math.exp(-40.0) / (1 + math.exp(-40.0)), 0.5, 1.0, 1.0], rtol=1e-14
    )
    np.testing.assert_allclose(
        LOWERINGS["softplus"].forward(x),
        [0.0, math.log1p(math.exp(-40.0)), math.log(2.0), 40.0, 1000.0],
        rtol=1e-14,
    )
    np.testing.assert_allclose(LOWERINGS["silu"].forward(x), x * sig)


def test_leaky_relu():
    x = away_from_zero(3, 4)
    check("leaky_relu", [x, 0.1], lambda x, s: np.where(x > 0, x, s * x))


def test_erf_matches_math_erf():
    x = np.concatenate(
        [np.linspace(-7.0, 7.0, 20001), [0.0, -0.0, 1e-300, 0.46875, 4.0, 27.0, -1e300]]
    )
    expected = _erf_ref(x)
    np.testing.assert_allclose(_erf(x), expected, rtol=2e-15, atol=1e-300)
    np.testing.assert_array_equal(_erf(np.array([np.inf, -np.inf])), [1.0, -1.0])


def test_gelu_exact():
    x = rand(3, 4) * 3
    check(
        "gelu",
        [x, False],
        lambda x, _: 0.5 * x * (1 + _erf_ref(x / math.sqrt(2.0))),
        rtol=1e-14,
    )


def test_gelu_approximate():
    def reference(x, _):
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    check("gelu", [rand(3, 4) * 3, True], reference, rtol=1e-14)


COMPARISONS = ["greater", "greater_equal", "less", "less_equal", "equal", "not_equal"]


@pytest.mark.parametrize("name", COMPARISONS)
def test_comparisons(name):
    left = np.array([[1.0], [2.0], [3.0]])
    right = np.array([1.0, 2.0, 3.0, 4.0])
    forward, vjp = _pair(name)
    out = forward(left, right)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, getattr(np, name)(left, right))
    assert forward(left, 2.0).dtype == np.bool_
    assert vjp(np.zeros(out.shape), out, left, right) == (None, None)


@pytest.mark.parametrize("name", ["logical_and", "logical_or", "logical_xor"])
def test_logical_binary(name):
    left = np.array([[True], [False]])
    right = np.array([True, False, True])
    forward, vjp = _pair(name)
    out = forward(left, right)
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, getattr(np, name)(left, right))
    assert vjp(out, out, left, right) == (None, None)


def test_logical_not():
    forward, vjp = _pair("logical_not")
    x = np.array([True, False])
    np.testing.assert_array_equal(forward(x), [False, True])
    assert vjp(x, forward(x), x) == (None,)


def test_where_broadcasts_and_unbroadcasts():
    condition = rand(3, 4, seed=9) > 0
    check("where", [condition, rand(3, 1), rand(4, seed=2)], np.where)
    check("where", [condition, rand(3, 4), 0.0], np.where)


def test_cast():
    forward, vjp = _pair("cast")
    x = rand(2, 3)
    out = forward(x, "float32")
    assert out.dtype == np.float32
    grad, none = vjp(np.ones((2, 3), np.float32), out, x, "float32")
    assert grad.dtype == np.float64 and none is None
    ints = forward(x * 10, "int64")
    assert ints.dtype == np.int64
    np.testing.assert_array_equal(ints, (x * 10).astype(np.int64))
    assert forward(x, "bool").dtype == np.bool_
    assert vjp(np.ones((2, 3)), forward(ints, "float64"), ints, "float64") == (
        None,
        None,
    )
    assert vjp(np.zeros((2, 3), np.int64), ints, x, "int64") == (None, None)


def test_stop_gradient():
    forward, vjp = _pair("stop_gradient")
    x = rand(3)
    np.testing.assert_array_equal(forward(x), x)
    assert vjp(np.ones(3), x, x) == (None,)


# --- float32 is preserved ----------------------------------------------------

FLOAT32_UNARY = [*UNARY, "gelu", "leaky_relu"]


@pytest.mark.parametrize("name", FLOAT32_UNARY)
def test_unary_preserves_float32(name):
    forward, vjp = _pair(name)
    x = rand(3, 4, low=0.5, high=2.0).astype(np.float32)
    extra = {"gelu": [False], "leaky_relu": [0.1]}.get(name, [])
    out = forward(x, *extra)
    assert out.dtype == np.float32
    grad = vjp(np.ones_like(out), out, x, *extra)[0]
    assert grad.dtype == np.float32
    if name == "gelu":
        assert forward(x, True).dtype == np.float32
        assert vjp(np.ones_like(out), out, x, True)[0].dtype == np.float32


@pytest.mark.parametrize("name", [*BINARY, "minimum", "maximum"])
def test_binary_preserves_float32(name):
    forward, vjp = _pair(name)
    x = rand(3, 4, low=0.5, high=2.0).astype(np.float32)
    y = rand(4, low=0.5, high=2.0).astype(np.float32)
    for left, right in [(x, y), (x, 2.0), (3.0, x), (x, 2)]:
        out = forward(left, right)
        assert out.dtype == np.float32
        for grad in vjp(np.ones_like(out), out, left, right):
            assert grad is None or grad.dtype == np.float32


@pytest.mark.parametrize(
    "name", ["sum", "mean", "max", "min", "variance", "softmax", "log_softmax"]
)
def test_reductions_preserve_float32(name):
    forward, vjp = _pair(name)
    x = rand(3, 4).astype(np.float32)
    extra = {"variance": [False, 1], "softmax": [], "log_softmax": []}.get(
        name, [False]
    )
    args = [x, -1, *extra]
    out = forward(*args)
    assert out.dtype == np.float32
    assert vjp(np.ones_like(out), out, *args)[0].dtype == np.float32


def test_where_and_matmul_preserve_float32():
    x = rand(3, 4).astype(np.float32)
    out = LOWERINGS["where"].forward(x > 0, x, 0.0)
    assert out.dtype == np.float32
    grads = LOWERINGS["where"].vjp(np.ones_like(out), out, x > 0, x, x)
    assert grads[1].dtype == grads[2].dtype == np.float32
    w = rand(4, 2).astype(np.float32)
    out = LOWERINGS["matrix_multiply"].forward(x, w)
    assert out.dtype == np.float32
    assert all(
        g.dtype == np.float32
        for g in LOWERINGS["matrix_multiply"].vjp(np.ones_like(out), out, x, w)
    )


def test_int_tensors_get_no_gradient():
    forward, vjp = _pair("add")
    left, right = np.arange(3), rand(3)
    out = forward(left, right)
    assert vjp(np.ones(3), out, left, right)[0] is None


# --- reductions --------------------------------------------------------------

AXES = [None, 0, -1, (0, 2), (-1, 1)]
REDUCTIONS = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}


@pytest.mark.parametrize("name", REDUCTIONS)
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdim", [False, True])
def test_reductions(name, axis, keepdim):
    def reference(x, axis, keepdim):
        return REDUCTIONS[name](x, axis=axis, keepdims=keepdim)

    check(name, [rand(2, 3, 4), axis, keepdim], reference)


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("keepdim", [False, True])
def test_max_min_ties_split_gradient(name, keepdim):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]]) * (1 if name == "max" else -1)
    forward, vjp = _pair(name)
    out = forward(x, -1, keepdim)
    grad = vjp(np.ones(out.shape), out, x, -1, keepdim)[0]
    np.testing.assert_allclose(grad, [[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    out = forward(x, None, keepdim)
    grad = vjp(np.ones(np.shape(out)), out, x, None, keepdim)[0]
    expected = [[0.0, 0.5, 0.5], [0.0, 0.0, 0.0]]
    np.testing.assert_allclose(grad, expected)


@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdim", [False, True])
@pytest.mark.parametrize("correction", [0, 1])
def test_variance(axis, keepdim, correction):
    def reference(x, axis, keepdim, correction):
        mean = np.mean(x, axis=axis, keepdims=True)
        n = x.size // mean.size
        return np.sum((x - mean) ** 2, axis=axis, keepdims=keepdim) / (n - correction)

    check("variance", [rand(2, 3, 4), axis, keepdim, correction], reference)


@pytest.mark.parametrize("name", ["arg_max", "arg_min"])
@pytest.mark.parametrize("axis", [None, 0, -1])
@pytest.mark.parametrize("keepdim", [False, True])
def test_arg_reductions(name, axis, keepdim):
    forward, vjp = _pair(name)
    x = rand(3, 4)
    out = forward(x, axis, keepdim)
    reference = np.argmax if name == "arg_max" else np.argmin
    np.testing.assert_array_equal(out, reference(x, axis=axis, keepdims=keepdim))
    assert np.asarray(out).dtype == np.int64
    assert vjp(None, out, x, axis, keepdim) == (None, None, None)


# --- shape -------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4, 6), (-1,), (2, -1, 3)], ids=str)
def test_reshape(shape):
    check("reshape", [rand(2, 3, 4), shape], lambda x, s: x.reshape(s))


@pytest.mark.parametrize("axes", [None, (1, 0, 2), (2, 0, 1), (-1, 0, -2)], ids=str)
def test_transpose(axes):
    check("transpose", [rand(2, 3, 4), axes], np.transpose)


@pytest.mark.parametrize(
    ("start", "end", "shape"),
    [
        (0, -1, (24,)),
        (1, -1, (2, 12)),
        (0, 1, (6, 4)),
        (-2, -1, (2, 12)),
        (1, 1, (2, 3, 4)),
    ],
)
def test_flatten(start, end, shape):
    output, _ = check("flatten", [rand(2, 3, 4), start, end])
    assert output.shape == shape
    np.testing.assert_array_equal(output.ravel(), rand(2, 3, 4).ravel())
    assert LOWERINGS["flatten"].forward(np.array(5.0), 0, -1).shape == (1,)


@pytest.mark.parametrize("axis", [0, 1, -1, None], ids=str)
def test_concat(axis):
    forward, vjp = _pair("concat")
    parts = [rand(2, 3), rand(2, 3, seed=1), rand(2, 3, seed=2)]
    out = forward(parts, axis)
    np.testing.assert_array_equal(out, np.concatenate(parts, axis=axis))
    output_grad = rand(*out.shape, seed=4)
    grads, none = vjp(output_grad, out, parts, axis)
    assert isinstance(grads, list) and none is None
    expected = numeric_grads(
        lambda *xs: forward(list(xs), axis), [p.copy() for p in parts], output_grad
    )
    for grad, exp in zip(grads, expected, strict=True):
        np.testing.assert_allclose(grad, exp, atol=1e-6)
    assert vjp(output_grad, out, parts, axis, needs=[False, False]) == (None, None)


def test_concat_int_element_gets_none():
    forward, vjp = _pair("concat")
    parts = [rand(2), np.arange(3)]
    out = forward(parts, 0)
    grads, _ = vjp(np.ones(5), out, parts, 0)
    np.testing.assert_array_equal(grads[0], np.ones(2))
    assert grads[1] is None


@pytest.mark.parametrize("axis", [0, -1])
def test_split(axis):
    forward, vjp = _pair("split")
    x = rand(5, 7)
    chunks = forward(x, 2, axis)
    assert isinstance(chunks, list)
    length = x.shape[axis]
    assert [c.shape[axis] for c in chunks] == [2] * (length // 2) + [1]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=axis), x)
    output_grad = [rand(*c.shape, seed=i) for i, c in enumerate(chunks)]
    output_grad[1] = None
    grad, *rest = vjp(output_grad, chunks, x, 2, axis)
    assert rest == [None, None]
    filled = [
        np.zeros_like(c) if g is None else g
        for g, c in zip(output_grad, chunks, strict=True)
    ]
    expected = numeric_grads(
        lambda x: np.concatenate(forward(x, 2, axis), axis=axis),
        [x.copy()],
        np.concatenate(filled, axis=axis),
    )[0]
    np.testing.assert_allclose(grad, expected, atol=1e-6)
    assert vjp(output_grad, chunks, x, 2, axis, needs=[False, False, False])[0] is None


@pytest.mark.parametrize(
    "index",
    [
        1,
        -1,
        slice(1, 3),
        (slice(None), 2),
        (None, Ellipsis, 1),
        (0, slice(None, None, 2), None),
        (),
    ],
    ids=str,
)
def test_indexer_tensor(index):
    check("indexer", [rand(3, 4, 5), index], lambda x, i: x[i])


def test_indexer_advanced_accumulates_duplicates():
    check("indexer", [rand(4, 3), np.array([0, 2, 0])], lambda x, i: x[i])
    check("indexer", [rand(4, 3), (np.array([1, 1]), slice(None))], lambda x, i: x[i])
    check("indexer", [rand(4, 3), [3, 3, 0]], lambda x, i: x[i])


def test_indexer_sequence():
    forward, vjp = _pair("indexer")
    items = [rand(2), rand(3), rand(4)]
    assert forward(items, 1) is items[1]
    grads, none = vjp(np.ones(3), items[1], items, 1)
    assert none is None and grads[0] is None and grads[2] is None
    np.testing.assert_array_equal(grads[1], np.ones(3))
    sliced = forward(tuple(items), slice(1, None))
    assert sliced == tuple(items[1:])
    grads, _ = vjp(("a", "b"), sliced, tuple(items), slice(1, None))
    assert grads == [None, "a", "b"]
    assert vjp(np.ones(3), items[1], items, 1, needs=[False, False]) == (None, None)


def test_shape():
    forward, vjp = _pair("shape")
    out = forward(rand(2, 3))
    assert out == (2, 3) and all(type(n) is int for n in out)
    assert vjp(None, out, rand(2, 3)) == (None,)


@pytest.mark.parametrize(("name", "kind"), [("to_list", list), ("to_tuple", tuple)])
def test_to_list_to_tuple(name, kind):
    forward, vjp = _pair(name)
    a, b = rand(2), rand(3)
    out = forward(a, b, 3)
    assert type(out) is kind and out[0] is a and out[1] is b and out[2] == 3
    g = rand(2, seed=1)
    grads = vjp(kind([g, None, None]), out, a, b, 3)
    assert isinstance(grads, tuple) and len(grads) == 3
    assert grads[0] is g and grads[1] is None and grads[2] is None
    assert vjp(kind([g, g, None]), out, a, b, 3, needs=[False, True, False]) == (
        None,
        g,
        None,
    )


def test_buffer():
    forward, vjp = _pair("buffer")
    x = rand(3)
    assert forward(x) is x
    assert vjp(x, x, x)[0] is x
    check("buffer", [x], lambda x: x)


@pytest.mark.parametrize("axis", [0, 1, -1, -3])
def test_unsqueeze(axis):
    check("unsqueeze", [rand(2, 3), axis], np.expand_dims)


@pytest.mark.parametrize("axis", [None, 1, -1, (1, 3)], ids=str)
def test_squeeze(axis):
    check("squeeze", [rand(2, 1, 3, 1), axis], np.squeeze)


@pytest.mark.parametrize(
    ("in_shape", "shape", "out_shape"),
    [
        ((3, 1), (3, 4), (3, 4)),
        ((3, 1), (2, -1, 4), (2, 3, 4)),
        ((4,), (2, 3, 4), (2, 3, 4)),
        ((), (2,), (2,)),
    ],
    ids=str,
)
def test_expand(in_shape, shape, out_shape):
    output, _ = check("expand", [rand(*in_shape), shape])
    assert output.shape == out_shape
    np.testing.assert_array_equal(output, np.broadcast_to(rand(*in_shape), out_shape))


# --- linalg ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((3, 4), (2, 4, 5)),
        ((2, 1, 3, 4), (5, 4, 2)),
        ((4,), (4, 5)),
        ((3, 4), (4,)),
        ((4,), (4,)),
        ((4,), (2, 4, 5)),
        ((2, 3, 4), (4,)),
    ],
    ids=str,
)
def test_matrix_multiply(left, right):
    check("matrix_multiply", [rand(*left), rand(*right, seed=3)], np.matmul)


def test_matrix_multiply_needs_skips_gradients():
    forward, vjp = _pair("matrix_multiply")
    left, right = rand(2, 3, 4), rand(4, 5)
    out = forward(left, right)
    g_left, g_right = vjp(np.ones(out.shape), out, left, right, needs=[False, True])
    assert g_left is None and g_right.shape == (4, 5)
    g_left, g_right = vjp(np.ones(out.shape), out, left, right, needs=(True, False))
    assert g_right is None and g_left.shape == (2, 3, 4)


# --- nn ----------------------------------------------------------------------


def _softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("axis", [0, -1])
def test_softmax(axis):
    check("softmax", [rand(3, 4), axis], _softmax)


@pytest.mark.parametrize("axis", [0, -1])
def test_log_softmax(axis):
    check("log_softmax", [rand(3, 4), axis], lambda x, a: np.log(_softmax(x, a)))


def test_softmax_stable_for_large_inputs():
    x = np.array([[1000.0, 1000.0, -1000.0]])
    np.testing.assert_allclose(LOWERINGS["softmax"].forward(x, -1), [[0.5, 0.5, 0.0]])
    np.testing.assert_allclose(
        LOWERINGS["log_softmax"].forward(x, -1),
        [[-math.log(2), -math.log(2), -2000 - math.log(2)]],
    )
