"""Hostile model documents: ``Model.from_dict`` / ``from_json`` never run code, never
spend memory on absurd sizes, and answer anything malformed with a
``ModelDocumentError`` that names the place in the document.

Names chosen by the document's author (``x */ evil /*``, quotes, line breaks) round-trip
and compile, and cannot break out of DOT strings or summary rows.
"""

import json
import re
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mithril_core as ml
from mithril_core.errors import ModelDocumentError
from mithril_core.models import (
    Absolute,
    Add,
    BaseModel,
    Divide,
    IOKey,
    Linear,
    Model,
    Multiply,
    Operator,
    Relu,
    Tanh,
)
from mithril_core.training import TrainModel

UNREGISTERED = "is not registered for model documents, so it is not built"


def linear_model() -> Model:
    model = Model(name="net")
    model += Linear(3)(input="input")
    model += Relu()(output=IOKey("output"))
    return model


# -- code execution --------------------------------------------------------------------


def _os_system(marker):
    return {"class": "os:system", "args": {"command": f"touch {marker}"}}


def _popen(marker):
    return {"class": "subprocess:Popen", "args": {"args": ["touch", marker]}}


def _in_plain_model(marker):
    data = linear_model().to_dict()
    data["children"][1]["model"] = _os_system(marker)
    return data


def _in_model_argument(marker):
    # MLP's activations are models given as constructor arguments.
    return {
        "class": "mithril_core.models.composites:MLP",
        "args": {"activations": [{"__model__": _popen(marker)}], "dimensions": [2]},
    }


def _in_train_model(marker):
    return {
        "class": "mithril_core.training.train_model:TrainModel",
        "args": {"model": {"__model__": _in_plain_model(marker)}},
    }


def _module_attribute_chain(marker):
    # The old lookup imported the module and followed attributes; plugins imports os.
    return {"class": "mithril_core.plugins:os.system", "args": {"command": marker}}


def _model_base_from_package(marker):
    # A document naming the abstract base by a package path, with a hostile child.
    data = _in_plain_model(marker)
    data["class"] = "mithril_core.models:Model"
    return data


CODE_EXECUTION = [
    ("os-system", _os_system, "document: class 'os:system'"),
    ("subprocess-popen", _popen, "document: class 'subprocess:Popen'"),
    ("nested-child", _in_plain_model, "children[1].model: class 'os:system'"),
    (
        "model-argument",
        _in_model_argument,
        "args.activations[0].__model__: class 'subprocess:Popen'",
    ),
    (
        "train-model-argument",
        _in_train_model,
        "args.model.__model__.children[1].model: class 'os:system'",
    ),
    (
        "attribute-chain",
        _module_attribute_chain,
        "document: class 'mithril_core.plugins:os.system'",
    ),
    (
        "package-model",
        _model_base_from_package,
        "document: class 'mithril_core.models:Model'",
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"),
    [case[1:] for case in CODE_EXECUTION],
    ids=[case[0] for case in CODE_EXECUTION],
)
def test_document_never_runs_code(build, expected, tmp_path, isolated, clean_exit):
    marker = tmp_path / "pwned"
    document = tmp_path / "model.json"
    document.write_text(json.dumps(build(str(marker))))
    outcome = isolated(
        f"""
        from mithril_core.errors import ModelDocumentError
        from mithril_core.models import Model

        try:
            Model.from_json({str(document)!r})
        except ModelDocumentError as exc:
            print("RAISED ModelDocumentError:", exc)
        print("OK")
        """
    )
    clean_exit(outcome)
    assert not marker.exists()
    assert f"RAISED ModelDocumentError: {expected}" in outcome.stdout
    assert UNREGISTERED in outcome.stdout
    assert outcome.stdout.rstrip().endswith("OK")


def test_builtins_are_not_classes_to_build():
    for name in ("builtins:eval", "builtins:exec", "builtins:__import__"):
        with pytest.raises(ModelDocumentError) as info:
            Model.from_dict({"class": name, "args": {"source": "1"}})
        assert str(info.value).startswith(f"document: class {name!r} {UNREGISTERED}")
        assert "classes=[" in str(info.value)


# -- user classes: refused unless passed in classes= -----------------------------------


class ScaledSoftsign(Operator):
    """output = scale * input / (1 + |input|)."""

    def __init__(self, scale: float = 1.0, name: str | None = None) -> None:
        super().__init__(name=name)
        self.scale = scale

    def create_model(self) -> Model:
        model = Model()
        model |= Absolute()(input=IOKey("input"), output="magnitude")
        model |= Add()(left="magnitude", right=1.0, output="denominator")
        model |= Divide()(left="input", right="denominator", output="ratio")
        model |= Multiply()(left="ratio", right=self.scale, output=IOKey("output"))
        return model


def softsign_network() -> Model:
    model = Model(name="net")
    model += Linear(4)(input="input")
    model += ScaledSoftsign(2.5, name="squash")(output=IOKey("output"))
    return model


def test_unregistered_operator_is_refused_with_how_to_allow_it():
    text = softsign_network().to_json()
    with pytest.raises(ModelDocumentError) as info:
        Model.from_json(text)
    name = f"{ScaledSoftsign.__module__}:ScaledSoftsign"
    assert str(info.value) == (
        f"children[1].model: class {name!r} is not registered for model documents, "
        "so it is not built. Documents may name the models and primitives of "
        "mithril_core and of installed plugins (their `mithril_operators` hook); pass "
        "your own classes explicitly: "
        "`Model.from_json(source, classes=[ScaledSoftsign])`."
    )


def test_operator_passed_in_classes_builds_and_evaluates():
    original = softsign_network()
    text = original.to_json()
    rebuilt = Model.from_json(text, classes=[ScaledSoftsign])
    assert rebuilt.to_json() == text
    assert isinstance(rebuilt._children[1], ScaledSoftsign)
    assert rebuilt._children[1].scale == 2.5

    backend = ml.NumpyBackend(dtype=ml.float64)
    pm = ml.compile(rebuilt, backend, shapes={"input": [5, 3]})
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((4, 3)), rng.standard_normal(4)
    x = rng.standard_normal((5, 3))
    out = pm.evaluate({"linear_0_weight": weight, "linear_0_bias": bias}, {"input": x})
    z = x @ weight.T + bias
    np.testing.assert_allclose(out["output"], 2.5 * z / (1 + np.abs(z)), rtol=1e-12)


# -- limits: refused before memory or time is spent ------------------------------------


def _timed_refusal(call, message):
    from mithril_core.plugins import get_registry

    assert get_registry().model_classes  # built once per process, before timing
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ModelDocumentError, match=message):
            call()
    finally:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 4 * 2**20
    return elapsed, peak


def test_billion_element_constant_is_refused_fast():
    row = [0.0] * 100_000
    payload = [row] * 10_000  # 10**9 elements, sharing one row: 0.8 MB here
    data = {
        "class": "mithril_core.primitives.elementwise:Add",
        "args": {"right": {"__array__": payload, "dtype": "float64"}},
    }
    _timed_refusal(
        lambda: Model.from_dict(data),
        r"^args\.right\.__array__\[\d+\]: the document holds more than "
        r"MAX_VALUES=1000000 values",
    )


def test_huge_dtype_string_is_refused_fast():
    huge = "f" * 10**8
    data = {"class": "mithril_core.primitives.elementwise:Cast", "args": {}}
    data["args"]["dtype"] = huge
    _timed_refusal(
        lambda: Model.from_dict(data),
        r"^args\.dtype: a string of 100000000 characters, more than "
        r"MAX_STRING_LENGTH=4096\.$",
    )
    text = '{"class": "mithril_core.primitives.elementwise:Cast", "args": {"dtype": "'
    text += huge + '"}}'
    _timed_refusal(
        lambda: Model.from_json(text),
        r"^document: 1000000\d\d characters, more than MAX_DOCUMENT_CHARS=16777216;",
    )


def test_many_values_in_json_text_are_refused_before_parsing():
    text = '{"class": "Model", "children": [' + "0," * 2_000_000 + "0]}"
    _timed_refusal(
        lambda: Model.from_json(text), r"^document: more than MAX_VALUES=1000000"
    )


def test_oversized_file_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "big.json"
    with path.open("wb") as handle:
        handle.truncate(2**40)  # a sparse 1 TiB file
    _timed_refusal(lambda: Model.from_json(path), "larger than MAX_DOCUMENT_CHARS")


def test_repeat_counts_are_bounded():
    cases = [
        ("mithril_core.primitives.shape:ToList", {"n": 10**6}, "args.n: 1000000"),
        (
            "mithril_core.models.recurrent:LSTM",
            {"hidden_size": 4, "num_steps": 10**9},
            "args.num_steps: 1000000000",
        ),
        (
            "mithril_core.models.composites:MLP",
            {"activations": [None] * 5000, "dimensions": [2] * 5000},
            "args.activations: 5000",
        ),
    ]
    for name, args, where in cases:
        data = {"class": name, "args": args}
        _timed_refusal(
            lambda data=data: Model.from_dict(data),
            "^" + re.escape(where) + r" exceeds MAX_REPEAT=1024",
        )


def test_model_count_is_bounded(monkeypatch):
    from mithril_core.logical import serialize

    # Counted: the plain model (1), Linear and its 3 primitives (4), Relu (1).
    monkeypatch.setattr(serialize, "MAX_MODELS", 6)
    model = Model()
    model += Linear(2)(input="input")
    model += Relu()
    model += Tanh()(output=IOKey("output"))
    with pytest.raises(ModelDocumentError) as info:
        Model.from_dict(model.to_dict())
    assert str(info.value).startswith(
        "children[2].model: the document builds more than MAX_MODELS=6 models"
    )


def test_models_inside_library_models_count():
    resnet = {"class": "mithril_core.models.resnet:ResNet", "args": {"depth": 50}}
    data = {
        "class": "mithril_core.models.composites:MLP",
        "args": {
            "activations": [{"__model__": resnet}] * 1000,
            "dimensions": [2] * 1000,
        },
    }
    start = time.perf_counter()
    with pytest.raises(ModelDocumentError) as info:
        Model.from_dict(data)
    assert time.perf_counter() - start < 30
    # resnet50 is 1,528 models: the seventh passes 10,000.
    assert str(info.value).startswith(
        "args.activations[6].__model__: the document builds more than "
        "MAX_MODELS=10000 models"
    )


def test_children_of_one_model_are_bounded(monkeypatch):
    from mithril_core.logical import serialize

    monkeypatch.setattr(serialize, "MAX_CHILDREN", 2)
    model = Model()
    model += Relu()(input="input")
    model += Relu()
    model += Tanh()(output=IOKey("output"))
    with pytest.raises(ModelDocumentError) as info:
        Model.from_dict(model.to_dict())
    assert str(info.value) == (
        "children: 3 children, more than MAX_CHILDREN=2; raise "
        "mithril_core.logical.serialize.MAX_CHILDREN if you trust this document."
    )


def test_sizes_are_bounded():
    data = Linear(3).to_dict()
    data["args"]["dimension"] = 2**40
    with pytest.raises(ModelDocumentError) as info:
        Model.from_dict(data)
    assert str(info.value) == (
        "args.dimension: integer 1099511627776 exceeds MAX_SIZE=2147483647 in "
        "magnitude; give a larger constant as an array constant."
    )
    data = linear_model().to_dict()
    data["keys"]["output"]["shape"] = [2**31, 3]
    with pytest.raises(ModelDocumentError, match=r"^keys\.output\.shape\[0\]: integer"):
        Model.from_dict(data)


def test_deep_nesting_is_refused():
    data: dict = {"class": "Model", "children": []}
    inner = data["children"]
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    with pytest.raises(
        ModelDocumentError, match=r"nested deeper than MAX_DEPTH=100\.$"
    ):
        Model.from_dict(data)
    # A cycle is infinitely deep.
    cyclic: dict = {"class": "Model", "children": []}
    cyclic["children"].append(cyclic)
    with pytest.raises(ModelDocumentError, match="nested deeper than MAX_DEPTH"):
        Model.from_dict(cyclic)


def test_deeply_nested_json_text_is_refused_without_crashing(isolated, clean_exit):
    outcome = isolated(
        """
        from mithril_core.errors import ModelDocumentError
        from mithril_core.models import Model

        for depth in (1_000, 100_000, 5_000_000):
            text = '{"class": "Model", "children": ' + "[" * depth + "]" * depth + "}"
            try:
                Model.from_json(text)
            except ModelDocumentError as exc:
                print("RAISED ModelDocumentError:", str(exc)[:60])
        print("OK")
        """
    )
    clean_exit(outcome)
    assert outcome.stdout.count("RAISED ModelDocumentError:") == 3
    assert outcome.stdout.rstrip().endswith("OK")


def test_nested_plain_models_within_the_depth_limit_still_load():
    model = Model(name="level_0")
    model += Relu()(input="input", output=IOKey("output"))
    for level in range(1, 20):
        outer = Model(name=f"level_{level}")
        outer += model(input="input", output=IOKey("output"))
        model = outer
    text = model.to_json()
    assert Model.from_json(text).to_json() == text


def test_regularization_pattern_from_a_document_is_not_run():
    from mithril_core.models import SquaredError
    from mithril_core.training import L1

    model = Model()
    model += Linear(2, name="a" * 60)(input="input", output=IOKey("output"))
    tm = TrainModel(model)
    tm.add_loss(SquaredError(), input="output", target="target")
    tm.add_regularization(L1(), coef=0.1, keys=r".*_weight")
    data = json.loads(tm.to_json())
    # The matched keys are stored, never the pattern, so a round trip runs no regex.
    call = data["args"]["calls"][1][1]["__dict__"]
    assert ["keys", ["a" * 60 + "_weight"]] in call
    assert Model.from_dict(data).to_dict() == data
    # (a|aa)*b backtracks ~1.6**60 times on that key: it must never be run.
    for pair in call:
        if pair[0] == "keys":
            pair[1] = "(a|aa)*b"
    start = time.perf_counter()
    with pytest.raises(ModelDocumentError) as info:
        Model.from_dict(data)
    assert time.perf_counter() - start < 1.0
    assert str(info.value) == (
        "args.calls[1].keys: a regular expression for keys is not run from a "
        "document; list the parameter keys instead."
    )


# -- malformed structure: each kind names its place ------------------------------------


def _valid():
    return linear_model().to_dict()


def _edit(path, value):
    def build():
        data = _valid()
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return data

    return build


_DELETE = object()
_LINEAR = "mithril_core.models.composites:Linear"

MALFORMED = [
    ("not-an-object", lambda: [1, 2], "document: expected a model object, got a list."),
    ("no-class", lambda: {"args": {}}, "document: missing field 'class'."),
    (
        "class-not-string",
        _edit(("class",), 7),
        "class: expected a string, got a number.",
    ),
    (
        "unknown-field",
        _edit(("extra",), 1),
        "document: unknown field 'extra'; the fields here are class, name, keys, "
        "exposed, children, version.",
    ),
    (
        "children-not-list",
        _edit(("children",), {"0": {}}),
        "children: expected a list, got an object.",
    ),
    ("children-missing", _edit(("children",), _DELETE), "document: missing field"),
    (
        "step-not-object",
        _edit(("children", 0), "linear"),
        "children[0]: expected an object, got a string.",
    ),
    (
        "step-without-model",
        _edit(("children", 0, "model"), _DELETE),
        "children[0]: missing field 'model'.",
    ),
    (
        "args-not-object",
        _edit(("children", 0, "model", "args"), [3]),
        "children[0].model.args: expected an object, got a list.",
    ),
    (
        "library-extra-field",
        _edit(("children", 0, "model", "code"), "print(1)"),
        "children[0].model: unknown field 'code'; the fields here are class, args.",
    ),
    (
        "unknown-binding-kind",
        _edit(("children", 0, "bindings", "input"), ["eval", "input"]),
        'children[0].bindings.input: a binding is ["name", key], '
        '["child", index, terminal], ["const", value] or ["new", id].',
    ),
    (
        "binding-wrong-arity",
        _edit(("children", 1, "bindings", "input"), ["child", 0]),
        "children[1].bindings.input: a binding is",
    ),
    (
        "binding-not-list",
        _edit(("children", 1, "bindings", "input"), {"child": 0}),
        "children[1].bindings.input: a binding is",
    ),
    (
        "child-index-out-of-range",
        _edit(("children", 1, "bindings", "input"), ["child", 5, "output"]),
        "children[1].bindings.input[1]: child index 5 is not one of the 1 children "
        "added before this one.",
    ),
    (
        "child-index-negative",
        _edit(("children", 1, "bindings", "input"), ["child", -1, "output"]),
        "children[1].bindings.input[1]: child index -1 is not one of the 1",
    ),
    (
        "child-index-bool",
        _edit(("children", 1, "bindings", "input"), ["child", True, "output"]),
        "children[1].bindings.input[1]: child index True is not one of the 1",
    ),
    (
        "child-terminal-unknown",
        _edit(("children", 1, "bindings", "input"), ["child", 0, "nope"]),
        "children[1].bindings.input[2]: net.linear_0: has no connection 'nope'",
    ),
    (
        "new-id-negative",
        _edit(("children", 1, "bindings", "input"), ["new", -3]),
        "children[1].bindings.input[1]: a new connection's id is an int >= 0.",
    ),
    (
        "unknown-terminal",
        _edit(("children", 1, "bindings", "weight"), ["name", "w"]),
        "children[1]: cannot add this child: ModelConnectionError:",
    ),
    (
        "bindings-not-object",
        _edit(("children", 1, "bindings"), []),
        "children[1].bindings: expected an object, got a list.",
    ),
    (
        "chain-not-bool",
        _edit(("children", 1, "chain"), "yes"),
        "children[1].chain: expected a boolean, got a string.",
    ),
    (
        "keys-not-object",
        _edit(("keys",), ["output"]),
        "keys: expected an object, got a list.",
    ),
    (
        "key-meta-not-object",
        _edit(("keys", "output"), 3),
        "keys.output: expected an object, got a number.",
    ),
    (
        "key-shape-not-list",
        _edit(("keys", "output", "shape"), "N"),
        "keys.output.shape: expected a list, got a string.",
    ),
    (
        "key-type-set",
        _edit(("keys", "output", "type"), "os.system"),
        "keys.output.type: types are not stored; expected null.",
    ),
    (
        "exposed-not-list",
        _edit(("exposed",), "output"),
        "exposed: expected a list, got a string.",
    ),
    (
        "exposed-entry-not-name",
        _edit(("exposed",), [None]),
        "exposed[0]: a name is a non-empty string, got null.",
    ),
    (
        "version-from-the-future",
        _edit(("version",), 99),
        "version: format version 99; this mithril_core reads version 1",
    ),
    (
        "name-not-string",
        _edit(("name",), ["net"]),
        "name: a name is a non-empty string, got a list.",
    ),
    (
        "unknown-encoded-value",
        lambda: {"class": _LINEAR, "args": {"dimension": {"__code__": "x"}}},
        "args.dimension: an object value must be one of the encoded forms",
    ),
    (
        "two-tags",
        lambda: {
            "class": _LINEAR,
            "args": {"dimension": {"__tuple__": [], "__ellipsis__": True}},
        },
        "args.dimension: an object value must be one of the encoded forms",
    ),
    (
        "bad-slice",
        lambda: {
            "class": "mithril_core.primitives.shape:Indexer",
            "args": {"index": {"__slice__": [0, "x", None]}},
        },
        "args.index.__slice__: a slice is [start, stop, step] of ints or nulls.",
    ),
    (
        "bad-dict-entry",
        lambda: {"class": _LINEAR, "args": {"dimension": {"__dict__": [[1, 2, 3]]}}},
        "args.dimension.__dict__[0]: a dict entry is a [key, value] pair.",
    ),
    (
        "unhashable-dict-key",
        lambda: {"class": _LINEAR, "args": {"dimension": {"__dict__": [[[1], 2]]}}},
        "args.dimension.__dict__[0]: the key is not hashable.",
    ),
    (
        "ellipsis-not-true",
        lambda: {"class": _LINEAR, "args": {"dimension": {"__ellipsis__": "x"}}},
        "args.dimension.__ellipsis__: expected true.",
    ),
    (
        "array-object-dtype",
        lambda: {
            "class": _LINEAR,
            "args": {"dimension": {"__array__": [1], "dtype": "O"}},
        },
        "args.dimension.dtype: array dtype 'O' is not one of bool, int8",
    ),
    (
        "array-void-dtype",
        lambda: {
            "class": _LINEAR,
            "args": {"dimension": {"__array__": [], "dtype": "V2000000000"}},
        },
        "args.dimension.dtype: array dtype 'V2000000000' is not one of",
    ),
    (
        "array-ragged",
        lambda: {
            "class": _LINEAR,
            "args": {"dimension": {"__array__": [[1], [2, 3]], "dtype": "int64"}},
        },
        "args.dimension.__array__: the nested lists are not rectangular [2, 1].",
    ),
    (
        "array-float-in-int",
        lambda: {
            "class": _LINEAR,
            "args": {"dimension": {"__array__": [1, 2.5], "dtype": "int32"}},
        },
        "args.dimension.__array__: element 2.5 does not fit dtype int32.",
    ),
    (
        "array-int-overflow",
        lambda: {
            "class": _LINEAR,
            "args": {"dimension": {"__array__": [300], "dtype": "uint8"}},
        },
        "args.dimension.__array__: element 300 does not fit dtype uint8.",
    ),
    (
        "array-float16-overflow",
        lambda: {
            "class": _LINEAR,
            "args": {"dimension": {"__array__": [1e6], "dtype": "float16"}},
        },
        "args.dimension.__array__: element 1000000.0 does not fit dtype float16.",
    ),
    (
        "array-string-element",
        lambda: {
            "class": _LINEAR,
            "args": {"dimension": {"__array__": ["1"], "dtype": "float64"}},
        },
        "args.dimension.__array__: element '1' does not fit dtype float64.",
    ),
    (
        "int-beyond-64-bits",
        _edit(("children", 0, "bindings", "input"), ["const", 2**70]),
        "children[0].bindings.input[1]: integer out of the 64-bit range.",
    ),
    (
        "python-object",
        lambda: {"class": _LINEAR, "args": {"dimension": {1, 2}}},
        "args.dimension: a set is not a JSON value",
    ),
    (
        "bytes",
        lambda: {"class": _LINEAR, "args": {"name": b"x"}},
        "args.name: a bytes is not a JSON value",
    ),
    (
        "non-string-key",
        lambda: {"class": _LINEAR, "args": {3: 4}},
        "args: object key 3 is not a string.",
    ),
    (
        "model-as-constant",
        _edit(
            ("children", 0, "bindings", "input"),
            ["const", {"__model__": {"class": _LINEAR, "args": {}}}],
        ),
        "children[0].bindings.input[1].__model__: a model is not allowed here.",
    ),
    (
        "varargs-not-fillable",
        lambda: {
            "class": "mithril_core.primitives.reduction:Sum",
            "args": {"extra": {"__dict__": [["output", 1]]}},
        },
        "args.extra: mithril_core.primitives.reduction:Sum has no argument 'extra'",
    ),
]


@pytest.mark.parametrize(
    ("build", "expected"),
    [case[1:] for case in MALFORMED],
    ids=[case[0] for case in MALFORMED],
)
def test_malformed_document_names_its_place(build, expected):
    with pytest.raises(ModelDocumentError) as info:
        Model.from_dict(build())
    assert str(info.value).startswith(expected)


def test_invalid_json_and_encoding(tmp_path):
    with pytest.raises(ModelDocumentError, match=r"^document: not valid JSON"):
        Model.from_json('{"class": "Model", ')
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"class": "Model", "name": "caf\xe9", "children": []}')
    with pytest.raises(ModelDocumentError, match="not UTF-8 text"):
        Model.from_json(path)


# -- names -----------------------------------------------------------------------------

HOSTILE_NAMES = [
    "x */ evil /*",
    'q"uote',
    "it's",
    "new\nline",
    "crlf\r\nline",
    "tab\there",
    "back\\slash\\",
    '"; import os; os.system("id"); "',
    "#include <stdio.h>",
    "1x",
    "} int main() {",
    "ünïcödé",
]


def hostile_model(names=HOSTILE_NAMES, top='top */ system("id"); /*') -> Model:
    # Layer i has 2 + i outputs, so every parameter has a shape of its own.
    model = Model(name=top)
    previous = "input"
    for index, name in enumerate(names):
        model |= Linear(2 + index, name=name)(input=previous, output=f"hidden_{index}")
        previous = f"hidden_{index}"
    model |= Tanh(name='"\n__import__("os").system("id")\n"')(
        input=previous, output=IOKey("output")
    )
    return model


def test_hostile_names_round_trip_and_compute_on_numpy():
    original = hostile_model()
    text = original.to_json()
    rebuilt = Model.from_json(text)
    assert rebuilt.to_json() == text
    assert [child._child_name for child in rebuilt._children][:-1] == HOSTILE_NAMES

    backend = ml.NumpyBackend(dtype=ml.float64)
    pm = ml.compile(rebuilt, backend, shapes={"input": [5, 3]}, data_keys={"input"})
    params = pm.randomize_params(seed=0)
    by_shape = {tuple(value.shape): value for value in params.values()}
    assert len(by_shape) == len(params) == 2 * len(HOSTILE_NAMES)
    x = np.random.default_rng(1).standard_normal((5, 3))
    out = pm.evaluate(params, {"input": x})
    h = x
    for index in range(len(HOSTILE_NAMES)):
        weight = by_shape[(2 + index, h.shape[1])]
        h = h @ weight.T + by_shape[(2 + index,)]
    np.testing.assert_allclose(out["output"], np.tanh(h), rtol=1e-12)


# Names aimed at generated C as well: trigraphs, a backslash that would continue a
# line comment, a comment end followed by a directive.
SOURCE_NAMES = [*HOSTILE_NAMES, "??/ trigraph", "line \\", "*/ #define X /*"]

EVERY_BACKEND = """
import numpy as np
import mithril_core as ml
from mithril_core.models import IOKey, Linear, Model, Tanh

names = NAMES
model = Model(name='top */ system("id"); /*')
previous = "input"
for index, name in enumerate(names):
    model |= Linear(2 + index, name=name)(input=previous, output=f"hidden_{index}")
    previous = f"hidden_{index}"
model |= Tanh(name='"\\n__import__("os").system("id")\\n"')(
    input=previous, output=IOKey("output")
)
model = Model.from_json(model.to_json())
backend = ml.backend(BACKEND, dtype=ml.float32)
pm = ml.compile(model, backend, shapes={"input": [5, 3]}, data_keys={"input"})
params = pm.randomize_params(seed=0)
by_shape = {}
for value in params.values():
    value = backend.to_numpy(value).astype(np.float64)
    by_shape[value.shape] = value
assert len(by_shape) == len(params) == 2 * len(names)
x = np.random.default_rng(1).standard_normal((5, 3))
out = pm.evaluate(params, {"input": backend.array(x.astype(np.float32))})
h = x
for index in range(len(names)):
    h = h @ by_shape[(2 + index, h.shape[1])].T + by_shape[(2 + index,)]
np.testing.assert_allclose(
    backend.to_numpy(out["output"]), np.tanh(h), rtol=1e-4, atol=1e-5
)
print("OK")
"""


def test_hostile_names_compute_on_every_backend(backend_name, isolated, clean_exit):
    # Generated source (C comments, Python identifiers) meets the names here; in a
    # subprocess, because an injection into C would run or crash at evaluate.
    source = EVERY_BACKEND.replace("NAMES", repr(SOURCE_NAMES))
    outcome = isolated(source.replace("BACKEND", repr(backend_name)))
    clean_exit(outcome)
    assert outcome.stdout.rstrip().endswith("OK")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a\x1b[31mred", "contains U+001B"),
        ("nul\x00byte", "contains U+0000"),
        ("bidi\u202eevil", "contains U+202E"),
        ("surrogate\ud800", "contains U+D800"),
        ("", "a name is a non-empty string, got a string."),
        ("n" * 257, "a name of 257 characters, more than MAX_NAME_LENGTH=256."),
    ],
    ids=["escape", "nul", "bidi", "surrogate", "empty", "long"],
)
def test_names_with_control_characters_are_refused(name, expected):
    data = _valid()
    data["children"][0]["name"] = name
    with pytest.raises(ModelDocumentError) as info:
        Model.from_dict(data)
    assert str(info.value).startswith("children[0].name: ")
    assert expected in str(info.value)


def _dot_tokens(dot):
    """Graphviz's lexer, reduced: quoted strings (in which ``\\"`` and ``\\\\`` are
    escape pairs) and every other non-blank run."""
    return re.findall(r'"(?:[^"\\]|\\.)*"|[^\s"]+', dot, flags=re.DOTALL)


def _dot_label_lines(quoted):
    """The lines a quoted DOT label shows (escString: ``\\n`` breaks a line, ``\\x``
    shows ``x``)."""
    lines, current, body, i = [], "", quoted[1:-1], 0
    while i < len(body):
        if body[i] == "\\":
            if body[i + 1] == "n":
                lines.append(current)
                current = ""
            else:
                current += body[i + 1]
            i += 2
        else:
            current += body[i]
            i += 1
    return [*lines, current]


def test_dot_strings_hold_hostile_names():
    benign = [f"layer{i}" for i in range(len(HOSTILE_NAMES))]
    hostile_dot = ml.to_dot(hostile_model())
    benign_dot = ml.to_dot(hostile_model(benign, top="top"))

    def skeleton(dot):
        return [t if not t.startswith('"') else "Q" for t in _dot_tokens(dot)]

    # Same statements, edges and attributes: no name ended its string early.
    assert skeleton(hostile_dot) == skeleton(benign_dot)
    shown = [_dot_label_lines(t) for t in _dot_tokens(hostile_dot) if t[0] == '"']
    for name in HOSTILE_NAMES:
        lines = name.replace("\r\n", "\n").split("\n")
        assert any(label[: len(lines)] == lines for label in shown), name


def test_summary_rows_cannot_be_forged_by_names():
    text = hostile_model().summary()
    body = text.splitlines()
    assert not any(line.startswith("__import__") for line in body)
    assert any('"\\n__import__("os").system("id")\\n"' in line for line in body)
    assert any("new\\nline" in line for line in body)
    assert any("crlf\\r\\nline" in line for line in body)


# -- plugins ---------------------------------------------------------------------------


def test_plugin_operator_is_registered_only_where_the_plugin_is_loaded():
    example_ops = pytest.importorskip("example_ops")
    from mithril_core.logical.serialize import model_from_dict
    from mithril_core.plugins import Registry, create_manager

    model = Model()
    model += Linear(2)(input="input")
    model += example_ops.Softsign(name="squash")(output=IOKey("output"))
    data = json.loads(model.to_json())
    with_plugin = Registry(create_manager())
    rebuilt = model_from_dict(data, registry=with_plugin)
    assert type(rebuilt._children[1]) is example_ops.Softsign
    core_only = Registry(create_manager(load_entry_points=False))
    with pytest.raises(ModelDocumentError) as info:
        model_from_dict(data, registry=core_only)
    assert str(info.value).startswith(
        "children[1].model: class 'example_ops.primitives:Softsign' is not registered"
    )


# -- properties ------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
# Field names and tags of the format, so random values reach the deeper checks.
FORMAT_WORDS = st.sampled_from(
    [
        "class",
        "args",
        "children",
        "model",
        "bindings",
        "chain",
        "name",
        "keys",
        "exposed",
        "version",
        "shape",
        "const",
        "child",
        "new",
        "Model",
        _LINEAR,
        "__array__",
        "__tuple__",
        "__model__",
        "__dict__",
        "dtype",
    ]
)
FORMAT_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | FORMAT_WORDS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(FORMAT_WORDS, children, max_size=4)
    ),
    max_leaves=25,
)


def _load_or_document_error(data):
    start = time.perf_counter()
    try:
        model = Model.from_dict(data)
    except ModelDocumentError:
        pass
    else:
        assert isinstance(model, BaseModel)
    assert time.perf_counter() - start < 5.0


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_random_json_raises_only_document_errors(data):
    _load_or_document_error(data)


@settings(max_examples=300, deadline=None)
@given(FORMAT_VALUES)
def test_random_format_shaped_json_raises_only_document_errors(data):
    _load_or_document_error(data)


def _places(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _places(item, (*path, index))


def _mutation_base():
    tm = TrainModel(linear_model())
    from mithril_core.models import SquaredError

    tm.add_loss(SquaredError(), input="output", target="target")
    return json.loads(json.dumps(tm.to_dict()))


MUTATION_BASE = _mutation_base()
MUTATION_PLACES = [p for p in _places(MUTATION_BASE) if p]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MUTATION_PLACES), JSON_VALUES | FORMAT_VALUES)
def test_mutated_documents_raise_only_document_errors(place, value):
    data = json.loads(json.dumps(MUTATION_BASE))
    target = data
    for key in place[:-1]:
        target = target[key]
    target[place[-1]] = value
    _load_or_document_error(data)
