"""The nn and loss primitives (convolution, pooling, embedding, attention, dropout, pad,
losses) against PyTorch autograd in float64, outputs and gradients, on every installed
backend (float32 and a looser tolerance where a backend has no float64)."""

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mithril_core as ml
from mithril_core.errors import ShapeError
from mithril_core.models import IOKey, Model
from mithril_core.plugins import get_registry
from mithril_core.primitives import (
    AbsoluteError,
    AdaptiveAvgPool2D,
    AvgPool2D,
    BinaryCrossEntropy,
    Convolution1D,
    Convolution2D,
    CrossEntropy,
    Dropout,
    Embedding,
    MaskedScaledDotProduct,
    MaxPool2D,
    Pad,
    ScaledDotProduct,
    SoftCrossEntropy,
    SquaredError,
)

RNG = np.random.default_rng(0)


def randn(*shape):
    return RNG.standard_normal(shape)


def probs(*shape, axis=1):
    e = np.exp(randn(*shape))
    return e / e.sum(axis=axis, keepdims=True)


def uniform(*shape):
    return RNG.uniform(0.05, 0.95, shape)


def ints(high, *shape):
    return RNG.integers(0, high, shape)


@dataclass
class Case:
    """``make()`` builds the primitive; ``inputs`` are float64 / int / bool arrays;
    ``reference(**torch_tensors)`` is the PyTorch result; float inputs named in
    ``grads`` get their gradient checked."""

    make: Any
    inputs: dict[str, np.ndarray]
    reference: Any
    grads: tuple[str, ...] = ("input",)
    compile_options: dict[str, Any] = field(default_factory=dict)


def conv2d_ref(**kw):
    return lambda input, weight: F.conv2d(input, weight, None, **kw)


def conv1d_ref(**kw):
    return lambda input, weight: F.conv1d(input, weight, None, **kw)


def cross_entropy_axis_last(input, target):
    return F.cross_entropy(input.movedim(-1, 1), target, reduction="none")


def sdp_bool_mask():
    mask = RNG.random((5, 6)) > 0.5
    mask[:, 0] = True
    mask[2] = False  # a fully masked row: zeros and zero gradients, as PyTorch
    return mask


CASES = {
    # -- convolution -------------------------------------------------------------------
    "conv2d_stride_pad": Case(
        lambda: Convolution2D(stride=2, padding=1, groups=1),
        {"input": randn(2, 4, 7, 6), "weight": randn(6, 4, 3, 3)},
        conv2d_ref(stride=2, padding=1),
        ("input", "weight"),
    ),
    "conv2d_pairs_dilation": Case(
        lambda: Convolution2D(stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=1),
        {"input": randn(2, 3, 9, 6), "weight": randn(5, 3, 3, 2)},
        conv2d_ref(stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
        ("input", "weight"),
    ),
    "conv2d_groups": Case(
        lambda: Convolution2D(stride=2, padding=1, groups=2),
        {"input": randn(2, 4, 7, 6), "weight": randn(6, 2, 3, 3)},
        conv2d_ref(stride=2, padding=1, groups=2),
        ("input", "weight"),
    ),
    "conv2d_depthwise": Case(
        lambda: Convolution2D(padding=1, groups=4),
        {"input": randn(2, 4, 6, 5), "weight": randn(8, 1, 3, 3)},
        conv2d_ref(padding=1, groups=4),
        ("input", "weight"),
    ),
    "conv2d_same_even_kernel": Case(
        lambda: Convolution2D(padding="same", dilation=(1, 2), groups=1),
        {"input": randn(2, 3, 6, 7), "weight": randn(4, 3, 4, 3)},
        conv2d_ref(padding="same", dilation=(1, 2)),
        ("input", "weight"),
    ),
    "conv2d_valid": Case(
        lambda: Convolution2D(padding="valid", groups=1),
        {"input": randn(1, 2, 5, 5), "weight": randn(3, 2, 2, 2)},
        conv2d_ref(padding="valid"),
        ("input", "weight"),
    ),
    "conv1d": Case(
        lambda: Convolution1D(stride=2, padding=1, dilation=2, groups=2),
        {"input": randn(2, 4, 11), "weight": randn(6, 2, 3)},
        conv1d_ref(stride=2, padding=1, dilation=2, groups=2),
        ("input", "weight"),
    ),
    "conv1d_same": Case(
        lambda: Convolution1D(padding="same", groups=1),
        {"input": randn(2, 3, 8), "weight": randn(5, 3, 4)},
        conv1d_ref(padding="same"),
        ("input", "weight"),
    ),
    # -- pooling -----------------------------------------------------------------------
    "max_pool2d": Case(
        lambda: MaxPool2D(kernel_size=3, stride=2, padding=1),
        {"input": randn(2, 3, 7, 6)},
        lambda input: F.max_pool2d(input, 3, 2, 1),
    ),
    "max_pool2d_pairs_dilation": Case(
        lambda: MaxPool2D(kernel_size=(3, 2), stride=(1, 2), padding=1, dilation=2),
        {"input": randn(1, 2, 8, 7)},
        lambda input: F.max_pool2d(input, (3, 2), (1, 2), 1, 2),
    ),
    "avg_pool2d": Case(
        lambda: AvgPool2D(kernel_size=2),
        {"input": randn(2, 3, 6, 5)},
        lambda input: F.avg_pool2d(input, 2),
    ),
    "avg_pool2d_pad": Case(
        lambda: AvgPool2D(kernel_size=3, stride=2, padding=1),
        {"input": randn(2, 3, 7, 6)},
        lambda input: F.avg_pool2d(input, 3, 2, 1),
    ),
    "adaptive_avg_pool2d_1x1": Case(
        lambda: AdaptiveAvgPool2D((1, 1)),
        {"input": randn(2, 3, 5, 4)},
        lambda input: F.adaptive_avg_pool2d(input, (1, 1)),
    ),
    "adaptive_avg_pool2d_uneven": Case(
        lambda: AdaptiveAvgPool2D((3, None)),
        {"input": randn(2, 3, 7, 5)},
        lambda input: F.adaptive_avg_pool2d(input, (3, None)),
    ),
    # -- embedding, attention, pad -----------------------------------------------------
    "embedding": Case(
        lambda: Embedding(),
        {"input": np.array([[1, 3, 1], [0, 9, 3]]), "weight": randn(10, 4)},
        lambda input, weight: F.embedding(input, weight),
        ("weight",),
    ),
    "scaled_dot_product": Case(
        lambda: ScaledDotProduct(),
        {
            "query": randn(2, 3, 5, 4),
            "key": randn(2, 3, 6, 4),
            "value": randn(2, 3, 6, 7),
        },
        F.scaled_dot_product_attention,
        ("query", "key", "value"),
    ),
    "scaled_dot_product_causal_scale": Case(
        lambda: ScaledDotProduct(is_causal=True, scale=0.3),
        {"query": randn(2, 5, 4), "key": randn(2, 6, 4), "value": randn(2, 6, 3)},
        lambda **kw: F.scaled_dot_product_attention(**kw, is_causal=True, scale=0.3),
        ("query", "key", "value"),
    ),
    "scaled_dot_product_bool_mask": Case(
        lambda: ScaledDotProduct(use_mask=True),
        {
            "query": randn(2, 3, 5, 4),
            "key": randn(2, 3, 6, 4),
            "value": randn(2, 3, 6, 7),
            "mask": sdp_bool_mask(),
        },
        lambda mask, **kw: F.scaled_dot_product_attention(**kw, attn_mask=mask),
        ("query", "key", "value"),
    ),
    "scaled_dot_product_float_mask": Case(
        lambda: ScaledDotProduct(use_mask=True),
        {
            "query": randn(2, 3, 5, 4),
            "key": randn(2, 3, 6, 4),
            "value": randn(2, 3, 6, 7),
            "mask": np.where(sdp_bool_mask(), randn(2, 1, 5, 6), -np.inf),
        },
        lambda mask, **kw: F.scaled_dot_product_attention(**kw, attn_mask=mask),
        ("query", "key", "value"),
    ),
    "pad_constant": Case(
        lambda: Pad(((0, 0), (1, 2), (2, 0)), value=1.5),
        {"input": randn(2, 3, 4)},
        lambda input: F.pad(input, (2, 0, 1, 2), value=1.5),
    ),
    "pad_reflect": Case(
        lambda: Pad(((0, 0), (0, 0), (1, 2), (2, 1)), mode="reflect"),
        {"input": randn(2, 3, 5, 4)},
        lambda input: F.pad(input, (2, 1, 1, 2), mode="reflect"),
    ),
    "pad_edge": Case(
        lambda: Pad(((0, 0), (0, 0), (3, 1), (0, 2)), mode="edge"),
        {"input": randn(2, 3, 4, 3)},
        lambda input: F.pad(input, (0, 2, 3, 1), mode="replicate"),
    ),
    # -- losses ------------------------------------------------------------------------
    "squared_error": Case(
        lambda: SquaredError(),
        {"input": randn(3, 4), "target": randn(3, 4)},
        lambda input, target: F.mse_loss(input, target, reduction="none"),
        ("input", "target"),
    ),
    "absolute_error": Case(
        lambda: AbsoluteError(),
        {"input": randn(3, 4), "target": randn(3, 4)},
        lambda input, target: F.l1_loss(input, target, reduction="none"),
        ("input", "target"),
    ),
    "cross_entropy": Case(
        lambda: CrossEntropy(),
        {"input": randn(4, 5), "target": ints(5, 4)},
        lambda input, target: F.cross_entropy(input, target, reduction="none"),
    ),
    "cross_entropy_axis_last": Case(
        lambda: CrossEntropy(axis=-1),
        {"input": randn(2, 3, 5), "target": ints(5, 2, 3)},
        cross_entropy_axis_last,
    ),
    "cross_entropy_probs": Case(
        lambda: CrossEntropy(input_type="probs"),
        {"input": probs(4, 5), "target": ints(5, 4)},
        lambda input, target: F.nll_loss(input.log(), target, reduction="none"),
    ),
    "cross_entropy_log_probs": Case(
        lambda: CrossEntropy(input_type="log_probs"),
        {"input": np.log(probs(4, 5)), "target": ints(5, 4)},
        lambda input, target: F.nll_loss(input, target, reduction="none"),
    ),
    "cross_entropy_soft": Case(
        lambda: CrossEntropy(categorical=False),
        {"input": randn(4, 5, 2), "target": probs(4, 5, 2)},
        lambda input, target: F.cross_entropy(input, target, reduction="none"),
        ("input", "target"),
    ),
    "cross_entropy_soft_probs": Case(
        lambda: CrossEntropy(input_type="probs", categorical=False),
        {"input": probs(4, 5), "target": probs(4, 5)},
        lambda input, target: -(target * input.log()).sum(1),
        ("input", "target"),
    ),
    "binary_cross_entropy": Case(
        lambda: BinaryCrossEntropy(),
        {"input": uniform(3, 4), "target": uniform(3, 4)},
        lambda input, target: F.binary_cross_entropy(input, target, reduction="none"),
        ("input", "target"),
    ),
    "binary_cross_entropy_logits": Case(
        lambda: BinaryCrossEntropy(input_type="logits"),
        {"input": randn(3, 4) * 3, "target": uniform(3, 4)},
        lambda input, target: F.binary_cross_entropy_with_logits(
            input, target, reduction="none"
        ),
        ("input", "target"),
    ),
}


def widest_float(name):
    if name == "mlx":  # MLX's float64 lacks convolutions and full-precision matmul
        return "float32"
    supported = get_registry().backend_class(name).supported_dtypes
    return "float64" if "float64" in supported else "float32"


def tolerance(dtype):
    return (
        {"rtol": 1e-5, "atol": 1e-8}
        if dtype == "float64"
        else {"rtol": 1e-3, "atol": 1e-4}
    )


def skip_unless_lowered(backend_name, op):
    if op not in get_registry().lowerings(backend_name):
        pytest.skip(f"{backend_name} has no lowering for {op!r}")


def single(primitive):
    model = Model()
    terminals = {name: IOKey(name) for name in primitive.input_names()}
    constants = {
        n for n, c in primitive._terminals.items() if c.value is not ml_novalue()
    }
    terminals = {n: k for n, k in terminals.items() if n not in constants}
    model |= primitive(**terminals, output=IOKey("output"))
    return model


def ml_novalue():
    from mithril_core.logical.connection import NOVALUE

    return NOVALUE


_backends: dict[tuple[str, str], Any] = {}


def get_backend(name, dtype):
    if (name, dtype) not in _backends:
        _backends[name, dtype] = ml.backend(name, dtype=getattr(ml, dtype))
    return _backends[name, dtype]


@pytest.mark.parametrize("case_id", list(CASES))
def test_matches_torch(backend_name, case_id):
    case = CASES[case_id]
    primitive = case.make()
    skip_unless_lowered(backend_name, primitive.op_name)
    dtype = widest_float(backend_name)
    backend = get_backend(backend_name, dtype)
    pm = ml.compile(
        single(primitive),
        backend,
        shapes={k: list(v.shape) for k, v in case.inputs.items()},
        trainable_keys=set(case.grads),
        jit=False,
        **case.compile_options,
    )
    arrays = {
        k: backend.array(v.astype(dtype) if v.dtype.kind == "f" else v)
        for k, v in case.inputs.items()
    }
    params = {k: v for k, v in arrays.items() if k in case.grads}
    data = {k: v for k, v in arrays.items() if k not in case.grads}

    tensors = {
        k: torch.tensor(v, requires_grad=k in case.grads)
        for k, v in case.inputs.items()
    }
    with warnings.catch_warnings():  # PyTorch's own note on even "same" kernels
        warnings.simplefilter("ignore", UserWarning)
        expected = case.reference(**tensors)
    out_grad = randn(*expected.shape)
    expected.backward(torch.from_numpy(out_grad))

    outputs, grads = pm.evaluate(
        params, data, output_gradients={"output": backend.array(out_grad.astype(dtype))}
    )
    tol = tolerance(dtype)
    np.testing.assert_allclose(
        np.asarray(backend.to_numpy(outputs["output"]), dtype=np.float64),
        expected.detach().numpy(),
        **tol,
        err_msg="output",
    )
    for key in case.grads:
        np.testing.assert_allclose(
            np.asarray(backend.to_numpy(grads[key]), dtype=np.float64),
            tensors[key].grad.numpy(),
            **tol,
            err_msg=f"gradient of {key}",
        )


# -- dropout ---------------------------------------------------------------------------


def test_dropout_is_removed_in_inference(backend_name):
    pm = ml.compile(
        single(Dropout(0.5)),
        get_backend(backend_name, widest_float(backend_name)),
        shapes={"input": [3, 4]},
        inference=True,
        jit=False,
    )
    assert not [node for node in pm.graph.nodes if node.op == "dropout"]
    x = randn(3, 4).astype(widest_float(backend_name))
    out = pm.evaluate({}, {"input": pm.backend.array(x)})["output"]
    np.testing.assert_array_equal(np.asarray(pm.backend.to_numpy(out)), x)


def test_dropout_zero_p_is_removed(backend_name):
    pm = ml.compile(
        single(Dropout(0.0)),
        get_backend(backend_name, widest_float(backend_name)),
        shapes={"input": [3, 4]},
        jit=False,
    )
    assert not [node for node in pm.graph.nodes if node.op == "dropout"]


def test_dropout_training(backend_name):
    skip_unless_lowered(backend_name, "dropout")
    dtype = widest_float(backend_name)
    backend = get_backend(backend_name, dtype)
    pm = ml.compile(
        single(Dropout(0.25)),
        backend,
        shapes={"input": [40, 50]},
        trainable_keys={"input"},
        jit=False,
    )
    x = (np.abs(randn(40, 50)) + 0.1).astype(dtype)
    g = randn(40, 50).astype(dtype)
    outputs, grads = pm.evaluate(
        {"input": backend.array(x)}, {}, output_gradients={"output": backend.array(g)}
    )
    out = np.asarray(backend.to_numpy(outputs["output"]), dtype=np.float64)
    grad = np.asarray(backend.to_numpy(grads["input"]), dtype=np.float64)
    kept = out != 0
    assert 0.6 < kept.mean() < 0.9  # p = 0.25 over 2000 draws
    tol = tolerance(dtype)
    np.testing.assert_allclose(out[kept], x[kept] / 0.75, **tol)
    np.testing.assert_allclose(grad, np.where(kept, g / 0.75, 0.0), **tol)


# -- declarations: shapes, types, errors, serialization (NumPy only) -------------------


def compile_shapes(primitive, shapes, **options):
    backend = get_backend("numpy", "float64")
    return ml.compile(
        single(primitive), backend, shapes=shapes, jit=False, **options
    ).shapes


def test_conv_shape_rule_from_partial_shapes():
    # C_in from weight.shape[1] * groups, C_out from weight.shape[0], rest from input.
    shapes = compile_shapes(
        Convolution2D(stride=2, padding=1, groups=2),
        {"input": [None, None, 9, 8], "weight": [6, 3, 3, 3]},
    )
    assert shapes["input"] == [None, 6, 9, 8]
    assert shapes["output"] == [None, 6, 5, 4]
    # weight.shape[1] from the input channels.
    shapes = compile_shapes(
        Convolution1D(groups=3), {"input": [2, 6, 10], "weight": [9, None, 4]}
    )
    assert shapes["weight"] == [9, 2, 4]
    assert shapes["output"] == [2, 9, 7]
    # Stride 1: the input's spatial size from the output's.
    shapes = compile_shapes(
        Convolution2D(padding=1, dilation=2, groups=1),
        {"output": [2, 5, 6, 7], "weight": [5, 3, 3, 3]},
    )
    assert shapes["input"] == [2, 3, 8, 9]


def test_conv_same_padding_keeps_unknown_spatial_dims():
    shapes = compile_shapes(
        Convolution2D(padding="same", groups=1),
        {"input": [2, 3, None, None], "weight": [4, 3, 3, 3]},
    )
    assert shapes["output"] == [2, 4, None, None]


def test_conv_errors():
    with pytest.raises(ShapeError, match="divisible by groups"):
        compile_shapes(
            Convolution2D(groups=2), {"input": [1, 5, 6, 6], "weight": [4, None, 3, 3]}
        )
    with pytest.raises(ShapeError):
        compile_shapes(
            Convolution2D(groups=1), {"input": [1, 3, 6, 6], "weight": [4, 2, 3, 3]}
        )
    with pytest.raises(ValueError, match="stride 1"):
        Convolution2D(stride=2, padding="same")
    with pytest.raises(ShapeError, match="does not fit"):
        compile_shapes(
            Convolution2D(groups=1), {"input": [1, 3, 2, 2], "weight": [4, 3, 3, 3]}
        )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MaxPool2D(3, padding=-1), "padding=-1: every value must be >= 0"),
        (lambda: MaxPool2D(3, dilation=0), "dilation=0: every value must be >= 1"),
        (lambda: AvgPool2D(0), "kernel_size=0: every value must be >= 1"),
        (lambda: Convolution2D(dilation=0), "dilation=0: every value must be >= 1"),
        (lambda: Convolution1D(stride=0), "stride=0: every value must be >= 1"),
        (lambda: Convolution2D(padding=(1, -2)), r"padding=\(1, -2\): every value"),
    ],
)
def test_window_arguments_out_of_range_raise_at_construction(make, message):
    # C computed a result for these while NumPy raised at evaluate.
    with pytest.raises(ValueError, match=message):
        make()


def test_conv_groups_bound_at_call():
    prim = Convolution2D(padding=1)
    model = Model()
    model |= prim(
        input=IOKey("input"), weight=IOKey("weight"), groups=3, output=IOKey("output")
    )
    shapes = ml.compile(
        model,
        get_backend("numpy", "float64"),
        shapes={"input": [1, 6, 4, 4], "weight": [3, None, 3, 3]},
        jit=False,
    ).shapes
    assert shapes["weight"] == [3, 2, 3, 3]


def test_pool_and_other_shapes():
    assert compile_shapes(MaxPool2D(3, 2, 1), {"input": [2, 3, 7, 6]})["output"] == [
        2,
        3,
        4,
        3,
    ]
    assert compile_shapes(AdaptiveAvgPool2D(1), {"input": [2, 3, 7, 6]})["output"] == [
        2,
        3,
        1,
        1,
    ]
    shapes = compile_shapes(Embedding(), {"input": [2, 5], "weight": [10, 4]})
    assert shapes["output"] == [2, 5, 4]
    shapes = compile_shapes(Pad(((1, 2), (0, 0))), {"input": [3, 4]})
    assert shapes["output"] == [6, 4]
    shapes = compile_shapes(Pad(((1, 2), (0, 0))), {"output": [6, 4]})
    assert shapes["input"] == [3, 4]
    shapes = compile_shapes(CrossEntropy(axis=-1), {"input": [2, 3, 5]})
    assert shapes["target"] == [2, 3] and shapes["output"] == [2, 3]
    shapes = compile_shapes(CrossEntropy(), {"target": [4, 6]})
    assert shapes["input"] == [4, None, 6]
    shapes = compile_shapes(CrossEntropy(categorical=False), {"input": [4, 5]})
    assert shapes["target"] == [4, 5] and shapes["output"] == [4]


def test_class_dispatch_and_serialization():
    masked = ScaledDotProduct(is_causal=True, use_mask=True)
    assert type(masked) is MaskedScaledDotProduct
    assert masked.input_names() == [
        "query",
        "key",
        "value",
        "mask",
        "is_causal",
        "scale",
    ]
    soft = CrossEntropy(input_type="probs", categorical=False)
    assert type(soft) is SoftCrossEntropy and soft.op_name == "cross_entropy_soft"
    for primitive in (masked, soft, Convolution2D(stride=2, padding="valid", groups=1)):
        model = single(primitive)
        assert Model.from_dict(model.to_dict()).to_dict() == model.to_dict()


def test_embedding_input_must_be_int():
    backend = get_backend("numpy", "float64")
    pm = ml.compile(
        single(Embedding(num_embeddings=10, dim=4)),
        backend,
        shapes={"input": [3]},
        jit=False,
    )
    assert pm.shapes["weight"] == [10, 4]
    with pytest.raises(Exception, match="input"):
        pm.evaluate({"weight": backend.array(randn(10, 4))}, {"input": randn(3)})
