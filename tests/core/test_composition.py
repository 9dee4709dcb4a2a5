"""Rules of composition (issue #11): canonical terminals, values on outputs,
pass-through types, shape solving in both directions, a solver that always finishes,
and error messages that name what the user named."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import mithril_core as ml
from mithril_core.errors import MithrilTypeError, ModelConnectionError, ShapeError
from mithril_core.logical import shapes as sh
from mithril_core.models import (
    LSTM,
    MLP,
    RNN,
    Add,
    ArgMax,
    BatchNorm2D,
    Buffer,
    Expand,
    GroupNorm,
    IOKey,
    Linear,
    LSTMCell,
    MatrixMultiply,
    Max,
    Mean,
    Model,
    MultiHeadAttention,
    Primitive,
    Relu,
    Reshape,
    RNNCell,
    Shape,
    Sigmoid,
    Sine,
    Sum,
    Tanh,
    Tensor,
    TransformerBlock,
    Variance,
    Where,
    gpt2,
)
from mithril_core.models.gpt import Conv1D, GPT2Block, PositionEmbedding


def shape_of(conn):
    return conn.find().shape_node.values()


def numpy64():
    return ml.NumpyBackend(dtype=ml.float64)


# -- 2: the canonical input is always a free input ------------------------------------


def _tanh_of_sine() -> Model:
    model = Model()
    model |= Tanh()(input="input1", output="output1")
    model |= Sine()(input="input2", output="input1")  # now input1 is written inside
    return model


def test_canonical_input_moves_when_a_later_child_writes_it():
    model = _tanh_of_sine()
    assert model.cin_name() == "input2"
    assert model.input_names() == ["input2"]


def test_parent_chains_into_the_moved_canonical_input():
    backend = numpy64()
    parent = Model()
    parent |= Buffer()(input=IOKey("x"), output="b")
    parent += _tanh_of_sine()
    pm = ml.compile(parent, backend, shapes={"x": [3]}, data_keys={"x"})
    x = np.array([0.3, -1.2, 2.0])
    out = pm.evaluate({}, {"x": backend.array(x)})
    (result,) = out.values()
    np.testing.assert_allclose(result, np.tanh(np.sin(x)), rtol=1e-12)


def test_a_constant_input_is_never_canonical():
    model = Model()
    model |= Add()(left=2.0, right="x", output=IOKey("output"))
    assert model.cin_name() == "x"
    parent = Model()
    parent |= Buffer()(input=IOKey("input"), output="b")
    parent += model
    backend = numpy64()
    pm = ml.compile(parent, backend, shapes={"input": [2]}, data_keys={"input"})
    x = np.array([1.0, -4.0])
    out = pm.evaluate({}, {"input": backend.array(x)})
    (result,) = out.values()
    np.testing.assert_allclose(result, x + 2.0)


# -- 3: |= reading the canonical output moves it, as += does ---------------------------


def test_or_assign_from_cout_moves_cout_even_past_an_exposed_output():
    model = Model()
    model |= Sigmoid()(input="input", output=IOKey("output"))
    model |= Tanh()(input=model.cout)
    model |= Sine()(input=model.cout)
    parent = Model()
    parent += model
    parent += Relu()(output=IOKey("result"))
    backend = numpy64()
    pm = ml.compile(
        parent, backend, shapes={"model_0_input": [4]}, data_keys={"model_0_input"}
    )
    x = np.array([-2.0, -0.1, 0.4, 3.0])
    out = pm.evaluate({}, {"model_0_input": backend.array(x)})
    expected = np.maximum(np.sin(np.tanh(1 / (1 + np.exp(-x)))), 0)
    np.testing.assert_allclose(out["result"], expected, rtol=1e-12)
    assert list(out) == ["result"]


# -- 4: no values on outputs -----------------------------------------------------------


def test_a_value_on_an_output_key_raises():
    model = Model()
    with pytest.raises(
        ModelConnectionError,
        match=r"model.sigmoid_0.output: model.sigmoid_0 writes its output into "
        r"model.y, which holds the value array\(\[1., 1., 1.\]\)",
    ):
        model |= Sigmoid()(input="input", output=IOKey("y", value=np.ones(3)))


def test_a_constant_bound_to_an_output_raises():
    model = Model()
    with pytest.raises(
        ModelConnectionError,
        match=r"writes its output into a constant, which holds the value 3.0",
    ):
        model |= Sigmoid()(input="input", output=3.0)


def test_writing_an_output_into_a_connection_holding_a_value_raises():
    model = Model()
    model |= Add()(left=IOKey("c", value=1.0), right="x", output=IOKey("out"))
    with pytest.raises(
        ModelConnectionError,
        match=r"model.relu_0.output: model.relu_0 writes its output into model.c, "
        r"which holds the value 1.0. Values are given to inputs only",
    ):
        model |= Relu()(input="input", output="c")


# -- 5: pass-through of any type -------------------------------------------------------


def test_buffer_passes_a_tuple_a_scalar_and_a_list():
    backend = numpy64()
    model = Model()
    model |= Shape()(input="input", output="s")
    model |= Buffer()(input="s", output=IOKey("shape_out"))
    model |= Buffer()(input=IOKey("k", type=float), output=IOKey("k_out"))
    model |= Buffer()(input=[IOKey("a"), IOKey("b")], output=IOKey("pair"))
    pm = ml.compile(
        model, backend, shapes={"input": [2, 3], "a": [2], "b": [3]}, data_keys={"k"}
    )
    a, b = np.arange(2.0), np.arange(3.0) + 10
    out = pm.evaluate({"a": backend.array(a), "b": backend.array(b)}, {"k": 2.5})
    assert out["shape_out"] == (2, 3)
    assert out["k_out"] == 2.5
    np.testing.assert_array_equal(out["pair"][0], a)
    np.testing.assert_array_equal(out["pair"][1], b)


def test_buffer_of_a_tuple_keeps_its_elements_indexable():
    model = Model()
    model |= Shape()(input=IOKey("input", shape=[4, 7]), output="s")
    model |= Buffer()(input="s", output=IOKey("shape_out"))
    second = model.shape_out[1]
    model |= Buffer()(input=second, output=IOKey("n"))
    assert second.find().value == 7
    assert model.n.find().types == frozenset({"int"})


# -- 6: Linear(dimension=None) ties weight rows, bias and output ----------------------


def test_linear_without_dimension_learns_it_from_the_output():
    model = Model()
    model |= Linear()(
        input=IOKey("input", shape=[5, 3]), output=IOKey("output", shape=[5, 7])
    )
    linear = model.children[0]
    assert shape_of(linear.weight) == [7, 3]
    assert shape_of(linear.bias) == [7]


def test_linear_without_dimension_learns_it_from_the_bias():
    model = Model()
    model |= Linear()(
        input=IOKey("input", shape=[5, 3]),
        bias=IOKey("b", shape=[4]),
        output=IOKey("output"),
    )
    assert shape_of(model.children[0].weight) == [4, 3]
    assert shape_of(model.output) == [5, 4]


def test_linear_without_dimension_learns_it_from_the_weight():
    model = Model()
    model |= Linear()(weight=IOKey("w", shape=[6, 2]), output=IOKey("output"))
    assert shape_of(model.children[0].bias) == [6]
    assert repr(model.output.find().shape_node) == "[..., 6]"


# -- 7 and 8: reshape solves back for an unknown dim; the solver always finishes -------


def test_reshape_infers_the_missing_input_dim():
    model = Model()
    model |= MLP([Relu(), None], [50, None])(
        input=IOKey("input", shape=[100, 8]), output="hidden"
    )
    model |= Reshape((100, 74, 1))(input="hidden", output=IOKey("output"))
    last = model.children[0].children[-1]
    assert shape_of(last.weight) == [74, 50]
    assert shape_of(last.bias) == [74]


def test_reshape_with_an_impossible_size_raises():
    model = Model()
    with pytest.raises(
        ShapeError, match=r"cannot reshape \[100, \?, 3\] into a shape of 7400 elements"
    ):
        model |= Reshape((100, 74, 1))(
            input=IOKey("input", shape=[100, None, 3]), output=IOKey("output")
        )


_BUILD_200 = textwrap.dedent(
    """
    from mithril_core.models import MLP, IOKey, Model, Relu, Reshape

    for _ in range(200):
        model = Model()
        model += MLP([Relu(), None], [50, None])
        model += Reshape((100, 74, 1))
        model = Model()
        model |= MLP([Relu(), None], [50, None])(
            input=IOKey("input", shape=[100, 8]), output="hidden"
        )
        model |= Reshape((100, 74, 1))(input="hidden", output=IOKey("output"))
    print("built")
    """
)


def test_building_mlp_then_reshape_200_times_finishes():
    # In a subprocess with a timeout, so that a hang fails the test instead of pytest.
    result = subprocess.run(
        [sys.executable, "-c", _BUILD_200],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "built"


def _restless_rule(rule: sh.Rule) -> bool:
    sh.notify({rule})  # claims news on every run: a buggy rule
    return False


class _Restless(Primitive):
    op_name = "restless"
    rules = (_restless_rule,)

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name, input=IOKey(), output=IOKey())


def test_a_rule_that_never_settles_stops_with_an_error():
    with pytest.raises(
        ShapeError, match=r"_restless: the shape solver made no progress"
    ):
        _Restless(name="_restless")
    sh.clear_queue()


# -- 9: expand checks broadcast compatibility at composition ---------------------------


def test_expand_to_an_incompatible_shape_raises_at_composition():
    model = Model()
    with pytest.raises(
        ShapeError,
        match=r"cannot broadcast input \[7, 8, 9\] to \[3, 4, 5\]: axis 0 has size 7",
    ):
        model |= Expand((3, 4, 5))(
            input=IOKey("input", shape=[7, 8, 9]), output=IOKey("output")
        )


def test_expand_checks_a_dim_learned_later():
    model = Model()
    model |= Expand((3, 4, 5))(
        input=IOKey("input", shape=[None, 4, 1]), output=IOKey("output")
    )
    with pytest.raises(ShapeError, match="axis 0 has size 2, which is neither 1 nor 3"):
        ml.compile(model, numpy64(), shapes={"input": [2, 4, 1]})


def test_expand_of_a_compatible_shape_evaluates():
    backend = numpy64()
    model = Model()
    model |= Expand((3, 4, 5))(
        input=IOKey("input", shape=[1, 4, 1]), output=IOKey("output")
    )
    pm = ml.compile(model, backend, data_keys={"input"})
    x = np.random.default_rng(0).standard_normal((1, 4, 1))
    out = pm.evaluate({}, {"input": backend.array(x)})
    np.testing.assert_array_equal(out["output"], np.broadcast_to(x, (3, 4, 5)))


# -- 10: symbolic constructor arguments of library composites --------------------------


def test_linear_with_a_symbolic_dimension():
    backend = numpy64()
    model = Model()
    x = IOKey("input")
    model |= Linear(x.shape[1] // 2)(input=x, output=IOKey("output"))
    pm = ml.compile(model, backend, shapes={"input": [4, 6]}, data_keys={"input"})
    assert pm.shapes["linear_0_weight"] == [3, 6]
    assert pm.shapes["linear_0_bias"] == [3]
    rng = np.random.default_rng(1)
    w, b = rng.standard_normal((3, 6)), rng.standard_normal(3)
    xv = rng.standard_normal((4, 6))
    out = pm.evaluate(
        {"linear_0_weight": backend.array(w), "linear_0_bias": backend.array(b)},
        {"input": backend.array(xv)},
    )
    np.testing.assert_allclose(out["output"], xv @ w.T + b, rtol=1e-12)


# -- 13: reduction axes are checked at construction; Where takes scalar branches ---


@pytest.mark.parametrize("cls", [Mean, Sum, Max, ArgMax, Variance])
def test_a_reduction_with_a_float_axis_raises_at_construction(cls):
    with pytest.raises(
        MithrilTypeError,
        match=rf"{cls.__name__}: axis=2.3 is not an int, a tuple of ints or None",
    ):
        cls(axis=2.3)


def test_a_reduction_accepts_a_list_of_numpy_ints():
    assert Sum(axis=[0, np.int64(2)]).attributes["axis"] == (0, 2)


def test_where_with_two_scalar_branches():
    backend = numpy64()
    model = Model()
    model |= Where()(condition=IOKey("c"), input1=1.5, input2=-2.0, output=IOKey("o"))
    pm = ml.compile(model, backend, shapes={"c": [4]}, data_keys={"c"})
    cond = np.array([True, False, False, True])
    out = pm.evaluate({}, {"c": backend.array(cond)})
    np.testing.assert_array_equal(out["o"], np.where(cond, 1.5, -2.0))


# -- 12: conflict messages name what the user named ------------------------------------


def test_broadcast_conflict_names_the_users_connections():
    model = Model()
    with pytest.raises(ShapeError) as info:
        model |= Add()(
            left=IOKey("lhs_tensor", shape=[3, 4]),
            right=IOKey("other_operand", shape=[5, 6]),
            output="o",
        )
    message = str(info.value)
    assert message.startswith("model.add_0: cannot broadcast dims [4, 6] at axis -1")
    assert "left: [3, 4] (model.lhs_tensor)" in message
    assert "right: [5, 6] (model.other_operand)" in message


def test_matmul_conflict_names_the_users_connections():
    model = Model()
    with pytest.raises(ShapeError) as info:
        model |= MatrixMultiply()(
            left=IOKey("mat_a", shape=[3, 4]),
            right=IOKey("part_a", shape=[5, 6]),
            output="o",
        )
    message = str(info.value)
    assert "inner dims do not match: left [3, 4] @ right [5, 6]" in message
    assert "left: [3, 4] (model.mat_a), right: [5, 6] (model.part_a)" in message


def test_conflict_names_the_models_that_write_both_sides():
    model = Model(name="custom_mlp")
    model |= Relu()(input=IOKey("input", shape=[None, 4]), output="part_a")
    model |= Sigmoid()(input=IOKey("x", shape=[None, 5]), output="q")
    with pytest.raises(ShapeError) as info:
        model |= Add()(left="part_a", right="q", output="z")
    message = str(info.value)
    assert "left: [None, 4] (custom_mlp.part_a, from custom_mlp.relu_0.output)" in (
        message
    )
    assert "right: [None, 5] (custom_mlp.q, from custom_mlp.sigmoid_0.output)" in (
        message
    )


def test_merge_conflict_names_the_unnamed_producer_side():
    model = Model(name="custom_mlp")
    model += Linear(16)(input=IOKey("input", shape=[None, 4]))
    model += Relu()
    with pytest.raises(ShapeError) as info:
        model += Linear(3)(weight=IOKey("w", shape=[3, 8]))
    assert str(info.value).startswith(
        "custom_mlp.linear_1.input: shape [..., 8] conflicts with [None, 16] from "
        "custom_mlp.relu_0.output (8 != 16)"
    )
    # The child side's 8 came from the user's key ``w`` through the shared dim.
    assert (
        "[custom_mlp.linear_1.input [..., 8]: 8 shared with custom_mlp.w [3, 8]"
        in str(info.value)
    )
    assert "; custom_mlp.relu_0.output [None, 16]" in str(info.value)


def test_merge_conflict_names_the_users_keys_on_both_sides():
    inner = Model(name="inner")
    inner |= MatrixMultiply()(
        left=IOKey("mat_a"),
        right=IOKey("other_operand", shape=[7, 2]),
        output=IOKey("out"),
    )
    model = Model(name="custom")
    model |= Relu()(input=IOKey("lhs_tensor", shape=[3, 4]), output="part_a")
    with pytest.raises(ShapeError) as info:
        model |= inner(mat_a="part_a", out=IOKey("y"))
    message = str(info.value)
    assert message.startswith(
        "custom.inner.mat_a: shape [..., 7] conflicts with [3, 4] from custom.part_a "
        "(7 != 4) [custom.inner.mat_a [..., 7]: 7 shared with "
        "custom.inner.other_operand [7, 2]; custom.part_a [3, 4] (from "
        "custom.relu_0.output): 4 shared with custom.lhs_tensor [3, 4]]"
    )


def test_merge_conflict_without_a_dim_names_both_sides():
    model = Model(name="custom")
    model |= Relu()(input=IOKey("lhs_tensor", shape=[3, 4]), output="part_a")
    with pytest.raises(ShapeError) as info:
        model |= Relu()(input="part_a", output=IOKey("mat_a", shape=[3, 4, 5]))
    assert str(info.value).startswith(
        "custom.relu_1.output: shape [3, 4] conflicts with [3, 4, 5] from "
        "custom.mat_a (rank mismatch) [custom.relu_1.output [3, 4]; "
        "custom.mat_a [3, 4, 5]]"
    )


def test_mlp_with_a_symbolic_dimension():
    backend = numpy64()
    model = Model()
    x = IOKey("input")
    model |= MLP([Relu(), None], [x.shape[1] // 2, 5])(input=x, output=IOKey("output"))
    pm = ml.compile(model, backend, shapes={"input": [4, 6]}, data_keys={"input"})
    assert pm.shapes["mlp_0_layer_0_weight"] == [3, 6]
    assert pm.shapes["mlp_0_layer_1_weight"] == [5, 3]
    rng = np.random.default_rng(2)
    w0, b0 = rng.standard_normal((3, 6)), rng.standard_normal(3)
    w1, b1 = rng.standard_normal((5, 3)), rng.standard_normal(5)
    xv = rng.standard_normal((4, 6))
    params = {
        "mlp_0_layer_0_weight": w0,
        "mlp_0_layer_0_bias": b0,
        "mlp_0_layer_1_weight": w1,
        "mlp_0_layer_1_bias": b1,
    }
    out = pm.evaluate(
        {k: backend.array(v) for k, v in params.items()},
        {"input": backend.array(xv)},
    )
    expected = np.maximum(xv @ w0.T + b0, 0) @ w1.T + b1
    np.testing.assert_allclose(out["output"], expected, rtol=1e-12)


def test_batch_norm_with_symbolic_num_features():
    model = Model()
    x = IOKey("input")
    model |= Relu()(input=x, output="r")
    model |= BatchNorm2D(x.shape[1] + 1)(input="r", output=IOKey("output"))
    with pytest.raises(ShapeError, match="6 != 5|5 != 6"):
        ml.compile(model, numpy64(), shapes={"input": [2, 5, 3, 3]})
    model = Model()
    x = IOKey("input")
    model |= Relu()(input=x, output="r")
    model |= BatchNorm2D(x.shape[1])(input="r", output=IOKey("output"))
    pm = ml.compile(model, numpy64(), shapes={"input": [2, 5, 3, 3]})
    assert pm.shapes["batch_norm2_d_0_running_mean"] == [5]
    assert pm.shapes["batch_norm2_d_0_weight"] == [5]


def _symbolic_matches_plain(make_symbolic, make_plain, bind, shapes, expected):
    """Compile a composite whose sizes come from ``x.shape`` and the same composite
    built with plain ints; both give ``expected`` parameter shapes, and equal outputs
    for the same parameters (float64, NumPy)."""
    backend = numpy64()
    compiled = []
    for make in (make_symbolic, make_plain):
        model = Model()
        x = IOKey("input")
        model |= make(x)(**bind(x))
        compiled.append(ml.compile(model, backend, shapes=shapes, data_keys={"input"}))
    symbolic, plain = compiled
    assert set(symbolic.input_keys) == set(plain.input_keys)
    params = [k for k in plain.input_keys if k != "input"]
    assert {k: symbolic.shapes[k] for k in params} == {
        k: plain.shapes[k] for k in params
    }
    assert {k: symbolic.shapes[k] for k in expected} == expected
    rng = np.random.default_rng(11)
    values = {k: backend.array(rng.standard_normal(plain.shapes[k])) for k in params}
    data = {"input": backend.array(rng.standard_normal(shapes["input"]))}
    got, want = symbolic.evaluate(values, data), plain.evaluate(values, data)
    assert list(got) == list(want) == ["output"]
    np.testing.assert_array_equal(got["output"], want["output"])


def _output(name="output"):
    return lambda x: {"input": x, name: IOKey("output")}


@pytest.mark.parametrize("cls", [RNNCell, LSTMCell])
def test_recurrent_cells_with_a_symbolic_hidden_size(cls):
    gates = 4 if cls is LSTMCell else 1
    _symbolic_matches_plain(
        lambda x: cls(x.shape[1] // 2),
        lambda x: cls(3),
        _output("h_new"),
        {"input": [4, 6]},
        {
            f"{cls.__name__.lower()[:-4]}_cell_0_weight_ih": [gates * 3, 6],
            f"{cls.__name__.lower()[:-4]}_cell_0_weight_hh": [gates * 3, 3],
            f"{cls.__name__.lower()[:-4]}_cell_0_bias_hh": [gates * 3],
            f"{cls.__name__.lower()[:-4]}_cell_0_h_prev": [4, 3],
        },
    )


@pytest.mark.parametrize("cls", [RNN, LSTM])
def test_rnn_and_lstm_with_a_symbolic_hidden_size(cls):
    gates = 4 if cls is LSTM else 1
    prefix = f"{cls.__name__.lower()}_0"
    _symbolic_matches_plain(
        lambda x: cls(x.shape[2] + 1, num_steps=3),
        lambda x: cls(7, num_steps=3),
        _output(),
        {"input": [2, 3, 6]},
        {
            f"{prefix}_weight_ih_l0": [gates * 7, 6],
            f"{prefix}_weight_hh_l0": [gates * 7, 7],
            f"{prefix}_bias_ih_l0": [gates * 7],
        },
    )


def test_rnn_steps_must_be_a_plain_int():
    x = IOKey("input")
    with pytest.raises(MithrilTypeError, match="LSTM: num_steps must be a plain int"):
        LSTM(4, num_steps=x.shape[1])


def test_multi_head_attention_with_symbolic_embed_dim_and_heads():
    _symbolic_matches_plain(
        lambda x: MultiHeadAttention(x.shape[2] * 2, x.shape[2] // 2),
        lambda x: MultiHeadAttention(12, 3),
        lambda x: {"query": x, "key": x, "value": x, "output": IOKey("output")},
        {"input": [2, 5, 6]},
        {
            "multi_head_attention_0_query_proj_weight": [12, 6],
            "multi_head_attention_0_value_proj_bias": [12],
            "multi_head_attention_0_out_proj_weight": [12, 12],
        },
    )


def test_symbolic_heads_that_do_not_divide_embed_dim_raise_at_compile():
    model = Model()
    x = IOKey("input")
    model |= MultiHeadAttention(x.shape[2], 4)(
        query=x, key=x, value=x, output=IOKey("output")
    )
    with pytest.raises(
        ShapeError,
        match=r"multi_head_attention_0.reshape_0: cannot reshape \[2, 5, 6\] into "
        r"\[2, 5, 4, 1\]",
    ):
        ml.compile(model, numpy64(), shapes={"input": [2, 5, 6]})


def test_transformer_block_with_symbolic_sizes():
    _symbolic_matches_plain(
        lambda x: TransformerBlock(x.shape[2], x.shape[2] // 3, x.shape[2] * 2),
        lambda x: TransformerBlock(6, 2, 12),
        _output(),
        {"input": [2, 5, 6]},
        {
            "transformer_block_0_attn_key_proj_weight": [6, 6],
            "transformer_block_0_mlp_fc_weight": [12, 6],
            "transformer_block_0_mlp_proj_weight": [6, 12],
            "transformer_block_0_ln_2_bias": [6],
        },
    )


def test_transformer_block_with_a_wrong_symbolic_dim_raises():
    model = Model()
    x = IOKey("input")
    model |= TransformerBlock(x.shape[2] + 1, 1, 4)(input=x, output=IOKey("output"))
    with pytest.raises(ShapeError, match="6 != 7|7 != 6"):
        ml.compile(model, numpy64(), shapes={"input": [2, 5, 6]})


def test_group_norm_with_symbolic_num_groups():
    _symbolic_matches_plain(
        lambda x: GroupNorm(x.shape[1] // 2),
        lambda x: GroupNorm(3),
        _output(),
        {"input": [2, 6, 3, 3]},
        {"group_norm_0_weight": [6], "group_norm_0_bias": [6]},
    )


def test_gpt2_blocks_with_symbolic_sizes():
    _symbolic_matches_plain(
        lambda x: GPT2Block(x.shape[2], x.shape[2] // 3),
        lambda x: GPT2Block(6, 2),
        _output(),
        {"input": [2, 5, 6]},
        {
            "gpt2_block_0_attn_c_attn_weight": [6, 18],
            "gpt2_block_0_attn_c_proj_bias": [6],
            "gpt2_block_0_mlp_c_fc_weight": [6, 24],
            "gpt2_block_0_mlp_c_proj_weight": [24, 6],
        },
    )


def test_gpt2_conv1d_with_a_symbolic_dimension():
    _symbolic_matches_plain(
        lambda x: Conv1D(x.shape[1] - 2),
        lambda x: Conv1D(4),
        _output(),
        {"input": [3, 6]},
        {"conv1_d_0_weight": [6, 4], "conv1_d_0_bias": [4]},
    )


def test_position_embedding_with_symbolic_sizes():
    backend = numpy64()
    model = Model()
    x = IOKey("input", type=Tensor[int])
    model |= PositionEmbedding(x.shape[1] * 2, x.shape[0] + 1)(
        input=x, output=IOKey("output")
    )
    pm = ml.compile(model, backend, shapes={"input": [2, 5]}, data_keys={"input"})
    assert pm.shapes["position_embedding_0_weight"] == [10, 3]
    weight = np.random.default_rng(3).standard_normal((10, 3))
    # Only the tokens' shape is read: evaluate takes no token values.
    out = pm.evaluate({"position_embedding_0_weight": backend.array(weight)}, {})
    np.testing.assert_array_equal(out["output"], weight[:5])


def test_gpt2_refuses_symbolic_sizes_by_name():
    x = IOKey("input")
    with pytest.raises(MithrilTypeError, match=r"gpt2: n_embd must be a plain int"):
        gpt2(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=x.shape[1])


def test_a_symbolic_constructor_argument_refuses_to_serialize():
    model = Model()
    x = IOKey("input")
    model |= LSTM(x.shape[2] // 2, num_steps=2)(input=x, output=IOKey("output"))
    with pytest.raises(
        TypeError,
        match=r"model\.lstm_0: cannot serialize LSTM: its argument "
        r"'hidden_size' is symbolic",
    ):
        model.to_dict()


# -- 11. duplicate removal sees equal constants; constants are never outputs --------


def test_adds_of_equal_constant_keys_become_one_call() -> None:
    from mithril_core.models import Add

    m = Model()
    m |= Add()(left=IOKey("x", shape=[3]), right=IOKey("c1"), output=IOKey("a"))
    m |= Add()(left="x", right=IOKey("c2"), output=IOKey("b"))
    m |= Add()(left="x", right=IOKey("c3"), output=IOKey("d"))
    backend = ml.NumpyBackend(dtype=ml.float64)
    ones = np.ones(3)
    pm = ml.compile(
        m,
        backend,
        constant_keys={"c1": ones, "c2": ones.copy(), "c3": np.full(3, 2.0)},
    )
    assert pm.code.split("def forward_backward")[0].count("add(") == 2
    assert pm.output_keys == ("a", "b", "d")
    x = np.array([1.0, -2.0, 0.5])
    out = pm.evaluate({}, {"x": x})
    np.testing.assert_array_equal(out["a"], x + 1)
    np.testing.assert_array_equal(out["b"], x + 1)
    np.testing.assert_array_equal(out["d"], x + 2)


def test_adds_of_equal_inline_constants_become_one_call() -> None:
    from mithril_core.models import Add

    m = Model()
    m |= Add()(left=IOKey("x", shape=[3]), right=2.0, output=IOKey("a"))
    m |= Add()(left="x", right=2.0, output=IOKey("b"))
    pm = ml.compile(m, ml.NumpyBackend())
    assert pm.code.split("def forward_backward")[0].count("add(") == 1


def test_exposed_constants_are_not_outputs() -> None:
    from mithril_core.models import Add

    m = Model()
    m |= Add()(
        left=IOKey("x", shape=[3]),
        right=IOKey("c", value=2.0, expose=True),
        output=IOKey("a"),
    )
    m |= Add()(left="x", right=IOKey("k", expose=True), output=IOKey("b"))
    pm = ml.compile(m, ml.NumpyBackend(), constant_keys={"k": np.ones(3)})
    assert pm.output_keys == ("a", "b")
    assert "c" not in pm.input_keys and "k" not in pm.input_keys


@pytest.mark.parametrize("option", ["constant_keys", "data_keys", "trainable_keys"])
def test_compile_refuses_values_for_computed_keys(option: str) -> None:
    from mithril_core.errors import InputKeyError
    from mithril_core.models import Add

    m = Model()
    m |= Relu()(input=IOKey("x", shape=[3]), output=IOKey("y"))
    m |= Add()(left="y", right=IOKey("z"), output=IOKey("s"))
    value = {"y": np.ones(3)} if option == "constant_keys" else {"y"}
    with pytest.raises(InputKeyError, match=rf"model\.y: given in {option}, but "):
        ml.compile(m, ml.NumpyBackend(), **{option: value})
