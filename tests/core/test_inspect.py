"""summary() tables, Graphviz DOT output and compile progress logging."""

import logging
import re

import mithril_core as ml
from mithril_core.models import IOKey, Linear, Model, Relu


def build():
    model = Model(name="custom_mlp")
    model += Linear(8)(input=IOKey("input", shape=[None, 4]))
    model += Relu()
    model += Linear(3)(output=IOKey("output"))
    return model


def parse_dot(text):
    """A minimal DOT reader: node ids and edges; checks braces balance."""
    assert text.startswith("digraph ") and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    nodes = set(re.findall(r"^\s*([\w\"]+) \[label=", text, flags=re.M))
    edges = re.findall(r"^\s*([\w\"]+) -> ([\w\"]+)", text, flags=re.M)
    return nodes, edges


def test_logical_summary_lists_children_shapes_and_params():
    text = build().summary()
    lines = text.splitlines()
    assert lines[0].split() == ["model", "type", "inputs", "outputs", "params", "flops"]
    row = next(line for line in lines if line.strip().startswith("linear_0 "))
    assert "weight: [8, 4]" in row and "bias: [8]" in row and row.split()[-2] == "40"
    top = next(line for line in lines if line.startswith("custom_mlp"))
    assert top.split()[-2] == f"{8 * 4 + 8 + 3 * 8 + 3}"


def test_physical_summary_lists_nodes():
    pm = ml.compile(
        build(), ml.NumpyBackend(), shapes={"input": [2, 4]}, data_keys={"input"}
    )
    text = pm.summary()
    assert "linear_0_matrix_multiply_0  matrix_multiply  [2, 4], [4, 8]" in text
    assert "trainable parameters: 67" in text


def readme_mlp(input_shape=None):
    """The README's ``custom_mlp``: 16 * 4 + 16 + 3 * 16 + 3 = 131 parameters."""
    model = Model(name="custom_mlp")
    model += Linear(16)(input=IOKey("input", shape=input_shape))
    model += Relu()
    model += Linear(3)(output=IOKey("output"))
    return model


def params_column(text):
    """``{row label: params cell}`` of a logical summary's top-level rows (the root,
    its children and the total), cut at the column boundaries of the rule line."""
    lines = text.splitlines()
    spans = [m.span() for m in re.finditer(r"-+", lines[1])]
    label, params = spans[0], spans[-2]
    cells = {}
    for line in lines[2:]:
        name = line[label[0] : label[1]]
        if line.startswith("-") or name.startswith("    "):
            continue
        cells[name.strip()] = line[params[0] : params[1]].strip()
    return cells


def test_summary_shows_unknown_parameter_counts_as_question_marks():
    # linear_0's weight is [16, ?] until the input's feature size is known: its
    # count, the model's and the total are unknown, not the 67 known elements.
    before = params_column(readme_mlp().summary())
    assert before == {
        "custom_mlp": "?",
        "linear_0": "?",
        "relu_0": "",
        "linear_1": f"{3 * 16 + 3}",
        "total": "?",
    }
    after = params_column(readme_mlp([8, 4]).summary())
    assert after == {
        "custom_mlp": "131",
        "linear_0": f"{16 * 4 + 16}",
        "relu_0": "",
        "linear_1": "51",
        "total": "131",
    }


def test_summary_is_returned_once_not_printed(capsys):
    model = readme_mlp([8, 4])
    text = model.summary()
    pm = ml.compile(model, ml.NumpyBackend(), data_keys={"input"})
    compiled = pm.summary()
    assert capsys.readouterr().out == ""
    # What a REPL or notebook shows for the returned value: the table itself, once.
    assert repr(text) == str(text) and text.count("custom_mlp") == 1
    assert repr(compiled) == str(compiled)
    assert compiled.count("trainable parameters: 131") == 1
    assert isinstance(text, str) and isinstance(compiled, str)
    print(text)
    assert capsys.readouterr().out == text + "\n"


def test_dot_of_model_tree_is_well_formed():
    nodes, edges = parse_dot(ml.to_dot(build()))
    assert len([n for n in nodes if n.startswith("n")]) == 7  # 7 primitives
    assert all(a in nodes and b in nodes for a, b in edges)
    assert ("n2", "n3") in edges  # linear_0's add feeds relu


def test_dot_of_flat_graph_is_well_formed():
    pm = ml.compile(build(), ml.NumpyBackend(), shapes={"input": [2, 4]})
    text = pm.to_dot()
    nodes, edges = parse_dot(text)
    assert {"in_0", "op_0"} <= nodes
    assert all(a in nodes and b in nodes for a, b in edges)
    assert 'label="input [2, 4]"' in text


def test_compile_logs_every_phase_with_its_time(caplog):
    with caplog.at_level(logging.INFO, logger="mithril_core.compile"):
        ml.compile(build(), ml.NumpyBackend(), shapes={"input": [2, 4]})
    records = [r for r in caplog.records if r.name == "mithril_core.compile"]
    assert {r.levelno for r in records} == {logging.INFO}
    messages = [r.getMessage() for r in records]
    assert messages[0] == "compiling custom_mlp for backend 'numpy'"
    phase = re.compile(r"compile (.+): \d+\.\d ms( \(\d+ nodes\))?")
    assert [phase.fullmatch(m).group(1) for m in messages[1:-1]] == [
        "solve",
        "flatten",
        "prune",
        "restore model",
        "lowering check",
        "constant fold",
        "codegen",
        "backend build",
    ]
    assert re.fullmatch(r"compiled custom_mlp: 7 nodes in \d+\.\d ms", messages[-1])
