"""FLOP estimates: each primitive's ``flops`` rule, composite sums, and the FLOP column
of the logical and physical summaries. Expected counts are computed here from the
textbook formulas, never by our code."""

import math

import mithril_core as ml
from mithril_core.logical.summary import format_flops
from mithril_core.models import (
    MLP,
    Convolution2D,
    IOKey,
    Linear,
    Model,
    Primitive,
    Relu,
    Sigmoid,
)
from mithril_core.primitives import (
    Exponential,
    MatrixMultiply,
    MaxPool2D,
    Reshape,
    ScaledDotProduct,
    Softmax,
    Sum,
)


def last_cell(row):
    return row.rsplit("  ", 1)[-1].strip()  # a cell may hold one space: "1.2 K"


def column(text, label):
    """Last cell of the table row whose first cell is ``label``."""
    return last_cell(next(r for r in text.splitlines() if r.split()[:1] == [label]))


def linear_model(batch, d_in, d_out):
    model = Model(name="net")
    model |= Linear(d_out)(
        input=IOKey("input", shape=[batch, d_in]), output=IOKey("output")
    )
    return model


def test_linear_counts_matmul_and_bias():
    batch, d_in, d_out = 32, 64, 128
    expected = 2 * batch * d_in * d_out + batch * d_out
    model = linear_model(batch, d_in, d_out)
    counts = model.flop_counts()
    assert counts["net"] == expected
    assert counts["net.linear_0.transpose_0"] == 0
    text = model.summary()
    assert column(text, "linear_0") == format_flops(expected) == "528.4 K"
    assert column(text, "total") == "528.4 K"


def test_mlp_is_the_sum_of_its_layers():
    batch, d_in, dims = 10, 6, [16, 8, 4]
    model = Model(name="net")
    model |= MLP([Relu(), Sigmoid(), None], dims)(
        input=IOKey("input", shape=[batch, d_in]), output=IOKey("output")
    )
    widths = [d_in, *dims]
    linears = [
        2 * batch * a * b + batch * b for a, b in zip(widths, dims, strict=False)
    ]
    relu, sigmoid = batch * dims[0], 4 * batch * dims[1]  # 1 / (1 + exp(-x)): 4 ops
    expected = sum(linears) + relu + sigmoid
    assert model.flop_counts()["net"] == expected
    assert model.flop_counts()["net.mlp_0"] == expected
    text = model.summary()
    assert expected == 5880
    assert column(text, "total") == format_flops(expected) == "5.9 K"


def test_conv2d_counts_multiply_adds_per_group_and_bias():
    n, c_in, h, w, c_out, k, stride, pad, groups = 2, 4, 9, 11, 8, 3, 2, 1, 2
    model = Model(name="net")
    model |= Convolution2D(
        kernel_size=k, out_channels=c_out, stride=stride, padding=pad, groups=groups
    )(input=IOKey("input", shape=[n, c_in, h, w]), output=IOKey("output"))
    h_out = (h + 2 * pad - k) // stride + 1
    w_out = (w + 2 * pad - k) // stride + 1
    out_numel = n * c_out * h_out * w_out
    expected = 2 * out_numel * (c_in // groups) * k * k + out_numel
    assert model.flop_counts()["net"] == expected
    pm = ml.compile(model, ml.NumpyBackend(), data_keys={"input"})
    assert sum(pm.flop_counts().values()) == expected


def test_unknown_shapes_show_a_question_mark():
    model = Model(name="net")
    model += Linear(8)(input=IOKey("input", shape=[None, 4]))
    model += Relu()(output=IOKey("output"))
    counts = model.flop_counts()
    assert counts["net"] is None and counts["net.linear_0.matrix_multiply_0"] is None
    assert counts["net.linear_0.transpose_0"] == 0  # data movement: known anyway
    text = model.summary()
    assert column(text, "net") == column(text, "relu_0") == "?"
    assert column(text, "transpose_0") == "0"
    assert column(text, "total") == "?"
    pm = ml.compile(model, ml.NumpyBackend(), data_keys={"input"})
    assert column(pm.summary(), "total") == "?"


def test_physical_total_is_the_sum_of_its_nodes():
    model = Model(name="net")
    model |= MLP([Relu(), Sigmoid(), None], [16, 8, 4])(
        input=IOKey("input", shape=[10, 6]), output=IOKey("output")
    )
    pm = ml.compile(model, ml.NumpyBackend(), data_keys={"input"})
    counts = pm.flop_counts()
    text = pm.summary()
    lines = text.split("\n\n")[0].splitlines()
    header, rows, total = lines[0], lines[2:-2], lines[-1]
    assert header.split()[-1] == "flops"
    assert [row.split()[0] for row in rows] == list(counts)
    assert [last_cell(row) for row in rows] == [
        format_flops(c) for c in counts.values()
    ]
    assert total.split()[0] == "total"
    assert last_cell(total) == format_flops(sum(counts.values()))
    assert sum(counts.values()) == model.flop_counts()["net"]


def test_primitive_rules():
    assert MatrixMultiply().flops({"left": (3, 4, 5), "right": (5, 6)}, (3, 4, 6)) == (
        2 * 3 * 4 * 6 * 5
    )
    assert MatrixMultiply().flops({"left": (5,), "right": (5, 6)}, (6,)) == 2 * 6 * 5
    assert MatrixMultiply().flops({"left": None, "right": (5, 6)}, (3, 6)) is None
    assert Sum(axis=1).flops({"input": (4, 5)}, (4,)) == 20
    assert Softmax().flops({"input": (4, 5)}, (4, 5)) == 5 * 20
    assert Exponential().flops({"input": (4, 5)}, (4, 5)) == 20
    assert Reshape(shape=(20,)).flops({"input": None}, None) == 0
    pool = MaxPool2D(kernel_size=(2, 3))
    assert pool.flops({"input": (1, 2, 8, 9)}, (1, 2, 4, 3)) == 1 * 2 * 4 * 3 * 6
    b, lq, lk, e, ev = 2, 5, 7, 4, 3
    scores = b * lq * lk
    expected = 2 * scores * e + 5 * scores + scores + 2 * scores * ev  # + scale
    shapes = {"query": (b, lq, e), "key": (b, lk, e), "value": (b, lk, ev)}
    assert ScaledDotProduct().flops(shapes, (b, lq, ev)) == expected
    causal = ScaledDotProduct(is_causal=True).flops(shapes, (b, lq, ev))
    assert causal == expected + scores


class Softsign(Primitive):
    op_name = "test_flops.softsign"

    def __init__(self, name=None):
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)]),
            output=IOKey(shape=[("V", ...)]),
        )


class CostlySoftsign(Softsign):
    op_name = "test_flops.costly_softsign"
    flops_per_element = 3  # |x|, 1 + |x|, x / (1 + |x|)


def test_third_party_primitives_get_the_default_and_can_override():
    model = Model(name="net")
    model += Softsign()(input=IOKey("input", shape=[3, 5]))
    model += CostlySoftsign()(output=IOKey("output"))
    counts = model.flop_counts()
    assert counts["net.softsign_0"] == 15
    assert counts["net.costly_softsign_0"] == 45
    assert counts["net"] == 60


def test_format_flops_uses_metric_units():
    assert format_flops(None) == "?"
    assert format_flops(999) == "999"
    assert format_flops(1234) == "1.2 K"
    assert format_flops(999_960) == "1.0 M"
    assert format_flops(3_400_000_000) == "3.4 G"
    assert format_flops(math.prod([10] * 13)) == "10.0 T"
