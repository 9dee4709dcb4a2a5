"""Model definitions to and from plain, JSON-safe dicts.

A library model (any class other than plain ``Model``: primitives, ``Linear``,
``resnet18``'s blocks, user ``Operator`` subclasses) is stored as its class, named
``"module:Qualname"``, and its constructor arguments. A plain ``Model`` is stored as the
sequence of its ``|=``/``+=`` additions, each child with the connections its terminals
were bound to, so replaying it rebuilds the same structure, names and shapes.

Reading a document is safe on untrusted input:

- A class is looked up by its ``"module:Qualname"`` string among the registered ones
  (:attr:`mithril_core.plugins.Registry.model_classes`: the public models of
  mithril_core, every primitive a plugin returns from ``mithril_operators``) and the
  ``classes`` the caller passes; nothing is imported, and any other name raises
  :class:`~mithril_core.errors.ModelDocumentError`.
- Constructor arguments must be parameters of the class's ``__init__`` (never its
  ``*args``/``**kwargs``), and values only what :func:`model_to_dict` writes.
- The limits below bound what is read (checked before anything is built) and what is
  built (checked as it is); every error names the place in the document
  (``children[3].model.args.dtype``).
- Names (models, children, keys, terminals) are non-empty strings of at most
  :data:`MAX_NAME_LENGTH` characters, kept as given: quotes, backslashes, ``*/`` and
  line breaks are allowed (every place a name reaches generated code or DOT output
  escapes it), while other control characters, unpaired surrogates and Unicode
  bidirectional overrides are refused.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mithril_core.dtypes import ALL_DTYPES, as_dtype
from mithril_core.errors import (
    MSG_UNREGISTERED_CLASS,
    MithrilTypeError,
    ModelConnectionError,
    ModelDocumentError,
)
from mithril_core.logical.connection import NOVALUE, Connection, IOKey
from mithril_core.logical.model import BaseModel, Model, register_inspect

if TYPE_CHECKING:
    from mithril_core.plugins import Registry

FORMAT_VERSION = 1


def model_to_dict(model: BaseModel) -> dict[str, Any]:
    """Describe ``model`` as a JSON-safe dict (see module docstring)."""
    model.ensure_built()
    if type(model) is not Model:
        args = model.init_args
        for name, value in args.items():
            if isinstance(value, Connection):
                msg = (
                    f"{model.path()}: cannot serialize {type(model).__name__}: its "
                    f"argument {name!r} is symbolic ({value.display_name()}); build "
                    "the model with a plain value to save it."
                )
                raise TypeError(msg)
        return {
            "class": f"{type(model).__module__}:{type(model).__qualname__}",
            "args": {k: _encode_value(v) for k, v in args.items()},
        }
    refs: dict[int, Any] = {}
    for name, conn in model.connections().items():
        refs.setdefault(id(conn.find()), ["name", name])
    keys = {}
    for name, conn in model.connections().items():
        if isinstance(conn, IOKey):
            keys[name] = {
                "shape": _encode_value(conn.shape_template),
                "type": None,
                "expose": name in model.exposed(),
            }
    steps = []
    fresh = 0
    for index, (child, targets, chain) in enumerate(model.additions()):
        bindings = {}
        for term, target in targets.items():
            root = target.find()
            ref = refs.get(id(root))
            if ref is None and root.value is not NOVALUE and target.model is model:
                ref = ["const", _encode_value(root.value)]
            if ref is None:
                ref = ["new", fresh]
                fresh += 1
                refs[id(root)] = ref
            bindings[term] = ref
        steps.append(
            {
                "model": model_to_dict(child),
                "name": child.child_name,
                "bindings": bindings,
                "chain": chain,
            }
        )
        for term in child.terminal_names():
            refs.setdefault(id(child.terminal(term).find()), ["child", index, term])
    return {
        "class": "Model",
        "name": model.name,
        "keys": keys,
        "exposed": [n for n in model.exposed() if not n.startswith("__")],
        "children": steps,
        "version": FORMAT_VERSION,
    }


# -- Limits on documents read by model_from_dict / model_from_json. They are read at
# call time: assign the module attribute to change one for the whole process.

#: Longest JSON text :func:`model_from_json` parses, in characters (bytes for a file).
MAX_DOCUMENT_CHARS = 16 * 2**20
#: Most JSON values (objects, lists, strings, numbers ...) in one document; a constant
#: array of more elements is refused before an array is made.
MAX_VALUES = 1_000_000
#: Deepest nesting of JSON objects and lists.
MAX_DEPTH = 100
#: Longest string (and longest object key) anywhere in a document.
MAX_STRING_LENGTH = 4096
#: Longest model, child, key or terminal name.
MAX_NAME_LENGTH = 256
#: Most models one document builds, counting the models inside library models
#: (``resnet152`` is about 4,500): document loading time grows with it.
MAX_MODELS = 10_000
#: Most children of one plain ``Model``: adding a child re-checks the shapes of those
#: before it, so the time grows with the square of this (2,048 take about 4 s).
MAX_CHILDREN = 2048
#: Largest magnitude of an integer in a constructor argument or a key's shape; larger
#: integer constants go in array constants or bindings (int64).
MAX_SIZE = 2**31 - 1
#: Largest count that makes a constructor build that many parts (``ToList(n)``,
#: ``RNN``/``LSTM`` ``num_steps``, the layers of ``MLP``).
MAX_REPEAT = 1024

# Library constructor arguments whose value (an int, or a list's length) is how many
# models or terminals the constructor creates.
_REPEAT_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "mithril_core.primitives.shape:ToList": ("n",),
    "mithril_core.primitives.shape:ToTuple": ("n",),
    "mithril_core.models.recurrent:RNN": ("num_steps",),
    "mithril_core.models.recurrent:LSTM": ("num_steps",),
    "mithril_core.models.composites:MLP": ("activations", "dimensions"),
}
_TRAIN_MODEL = "mithril_core.training.train_model:TrainModel"
_ARRAY_DTYPES = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)
_TAGS = (
    "__model__",
    "__ellipsis__",
    "__slice__",
    "__variadic__",
    "__tuple__",
    "__dict__",
    "__array__",
    "__dtype__",
)
_BINDING_ARITY = {"name": 2, "child": 3, "const": 2, "new": 2}
# C0/C1 controls except tab, LF and CR; unpaired surrogates; bidirectional overrides
# and isolates (text that displays other than it reads, "trojan source").
_FORBIDDEN_IN_NAMES = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]"
)
_INT64 = (-(2**63), 2**63 - 1)

# A place in a document being scanned: (parent place, key or index), rendered only
# when an error is raised.
_Place = tuple["_Place", str | int] | None


def model_from_dict(
    data: Any,
    *,
    classes: Iterable[type[BaseModel]] = (),
    registry: Registry | None = None,
) -> BaseModel:
    """Rebuild a model described by :func:`model_to_dict` (see the module docstring
    for what a document may contain).

    :param data: the document, as ``json.loads`` returns it.
    :param classes: model classes besides the registered ones that the document may
        name (your ``Operator`` subclasses).
    :param registry: where registered classes come from (default: the process-wide
        registry of installed plugins).
    :raises ModelDocumentError: the document is malformed, over a limit, or names a
        class that is not allowed; the message says where.
    """
    allowed = _allowed_classes(classes, registry)
    _check_json_values(data)
    return _Reader(allowed).model(data, "")


def model_to_json(model: BaseModel, **kwargs: Any) -> str:
    return json.dumps(model_to_dict(model), **kwargs)


def model_from_json(
    source: str | os.PathLike[str],
    *,
    classes: Iterable[type[BaseModel]] = (),
    registry: Registry | None = None,
) -> BaseModel:
    """Rebuild a model from JSON text (a string starting with ``{``) or from the file
    at ``source``; see :func:`model_from_dict`."""
    if isinstance(source, str) and source.lstrip().startswith("{"):
        text, origin = source, "document"
    else:
        text, origin = _read_document(source), os.fspath(source)
    if len(text) > MAX_DOCUMENT_CHARS:
        msg = (
            f"{origin}: {len(text)} characters, more than MAX_DOCUMENT_CHARS="
            f"{MAX_DOCUMENT_CHARS}; raise mithril_core.logical.serialize."
            "MAX_DOCUMENT_CHARS if you trust this document."
        )
        raise ModelDocumentError(msg)
    # Every value after the first in a list or object follows a comma: too many
    # commas is too many values, refused before parsing spends memory on them.
    if text.count(",") >= MAX_VALUES:
        msg = (
            f"{origin}: more than MAX_VALUES={MAX_VALUES} JSON values; raise "
            "mithril_core.logical.serialize.MAX_VALUES if you trust this document."
        )
        raise ModelDocumentError(msg)
    try:
        data = json.loads(text)
    except RecursionError as exc:
        msg = f"{origin}: nested deeper than MAX_DEPTH={MAX_DEPTH}."
        raise ModelDocumentError(msg) from exc
    except ValueError as exc:
        msg = f"{origin}: not valid JSON: {exc}"
        raise ModelDocumentError(msg) from exc
    return model_from_dict(data, classes=classes, registry=registry)


def _read_document(path: str | os.PathLike[str]) -> str:
    with Path(path).open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        # A pipe or device reports no size: read one byte past the limit to tell.
        raw = b"" if size > MAX_DOCUMENT_CHARS else handle.read(MAX_DOCUMENT_CHARS + 1)
    if size > MAX_DOCUMENT_CHARS or len(raw) > MAX_DOCUMENT_CHARS:
        msg = (
            f"{os.fspath(path)}: larger than MAX_DOCUMENT_CHARS={MAX_DOCUMENT_CHARS} "
            "bytes; raise mithril_core.logical.serialize.MAX_DOCUMENT_CHARS if you "
            "trust this document."
        )
        raise ModelDocumentError(msg)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"{os.fspath(path)}: not UTF-8 text: {exc}"
        raise ModelDocumentError(msg) from exc


def _allowed_classes(
    classes: Iterable[type[BaseModel]] | type[BaseModel], registry: Registry | None
) -> dict[str, type]:
    from mithril_core.plugins import document_name, get_registry

    # One class on its own is accepted too.
    listed = [classes] if isinstance(classes, type) else classes
    allowed = dict((registry or get_registry()).model_classes)
    for cls in listed:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            msg = (
                f"classes=: {cls!r} is not a model class; pass subclasses of "
                "Model, Operator or Primitive."
            )
            raise MithrilTypeError(msg)
        allowed[document_name(cls)] = cls
    return allowed


def _check_json_values(data: Any) -> None:
    """Refuse anything but JSON values, and documents over the size limits, before
    reading any of it (iteratively: a deep document must not exhaust the stack).

    A container's length is charged to the budget when the container is found, before
    its items are looked at: a list of a billion elements is refused at once.
    """
    budget = MAX_VALUES - 1
    stack: list[tuple[Any, _Place, int]] = []
    _check_json_value(data, None, 0, stack, budget)
    budget -= len(data) if type(data) in (dict, list) else 0
    while stack:
        container, place, depth = stack.pop()
        items = container.items() if type(container) is dict else enumerate(container)
        for key, item in items:
            if type(key) is not str and type(container) is dict:
                msg = f"{_render(place)}: object key {key!r} is not a string."
                raise ModelDocumentError(msg)
            if type(key) is str and len(key) > MAX_STRING_LENGTH:
                msg = (
                    f"{_render(place)}: an object key of {len(key)} characters, "
                    f"more than MAX_STRING_LENGTH={MAX_STRING_LENGTH}."
                )
                raise ModelDocumentError(msg)
            kind = type(item)
            if kind is float or kind is bool or item is None:
                continue
            _check_json_value(item, (place, key), depth + 1, stack, budget)
            if kind is dict or kind is list:
                budget -= len(item)


def _check_json_value(
    value: Any,
    place: _Place,
    depth: int,
    stack: list[tuple[Any, _Place, int]],
    budget: int,
) -> None:
    kind = type(value)
    if kind is dict or kind is list:
        if depth >= MAX_DEPTH:
            msg = f"{_render(place)}: nested deeper than MAX_DEPTH={MAX_DEPTH}."
            raise ModelDocumentError(msg)
        if len(value) > budget:
            msg = (
                f"{_render(place)}: the document holds more than MAX_VALUES="
                f"{MAX_VALUES} values; raise mithril_core.logical.serialize."
                "MAX_VALUES if you trust it."
            )
            raise ModelDocumentError(msg)
        stack.append((value, place, depth))
    elif kind is str:
        if len(value) > MAX_STRING_LENGTH:
            msg = (
                f"{_render(place)}: a string of {len(value)} characters, more "
                f"than MAX_STRING_LENGTH={MAX_STRING_LENGTH}."
            )
            raise ModelDocumentError(msg)
    elif kind is int:
        # int64 or, for uint64 array constants, up to 2**64 - 1.
        if not _INT64[0] <= value < 2**64:
            msg = f"{_render(place)}: integer out of the 64-bit range."
            raise ModelDocumentError(msg)
    elif not (kind is float or kind is bool or value is None):
        msg = (
            f"{_render(place)}: a {kind.__name__} is not a JSON value "
            "(expected an object, list, string, number, boolean or null)."
        )
        raise ModelDocumentError(msg)


def _render(place: _Place) -> str:
    parts: list[str | int] = []
    while place is not None:
        place, key = place
        parts.append(key)
    path = ""
    for key in reversed(parts):
        path = _index(path, key) if isinstance(key, int) else _field(path, key)
    return path or "document"


def _field(path: str, key: str) -> str:
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    shown = key if len(key) <= 40 else key[:40] + "..."
    return f"{path}[{shown!r}]"


def _index(path: str, index: int) -> str:
    return f"{path}[{index}]"


def _fail(path: str, message: str) -> ModelDocumentError:
    return ModelDocumentError(f"{path or 'document'}: {message}")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _expect_object(value: Any, path: str, fields: tuple[str, ...]) -> dict[str, Any]:
    if type(value) is not dict:
        raise _fail(path, f"expected an object, got {_kind(value)}.")
    unknown = [key for key in value if key not in fields]
    if unknown:
        msg = f"unknown field {unknown[0]!r}; the fields here are {', '.join(fields)}."
        raise _fail(path, msg)
    return value


def _required(fields: dict[str, Any], key: str, path: str) -> Any:
    if key not in fields:
        raise _fail(path, f"missing field {key!r}.")
    return fields[key]


def _expect_list(value: Any, path: str) -> list[Any]:
    if type(value) is not list:
        raise _fail(path, f"expected a list, got {_kind(value)}.")
    return value


def _name(value: Any, path: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if type(value) is not str or not value:
        raise _fail(path, f"a name is a non-empty string, got {_kind(value)}.")
    if len(value) > MAX_NAME_LENGTH:
        msg = (
            f"a name of {len(value)} characters, more than MAX_NAME_LENGTH="
            f"{MAX_NAME_LENGTH}."
        )
        raise _fail(path, msg)
    bad = _FORBIDDEN_IN_NAMES.search(value)
    if bad is not None:
        msg = (
            f"name {value[:40]!r} contains U+{ord(bad.group()):04X}; names may not "
            "hold control characters (other than tab and line breaks), unpaired "
            "surrogates or bidirectional overrides."
        )
        raise _fail(path, msg)
    return value


def _init_parameters(cls: type[object], path: str) -> dict[str, inspect.Parameter]:
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"cannot read the signature of {cls.__name__}.") from exc
    parameters = list(signature.parameters.values())[1:]  # without self
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name: p for p in parameters if p.kind in keyword}


class _Reader:
    """Builds the models of one document, counting them against MAX_MODELS."""

    def __init__(self, classes: Mapping[str, type]) -> None:
        self.classes = classes
        self.models = 0

    def count_models(self, path: str, count: int = 1) -> None:
        self.models += count
        if self.models > MAX_MODELS:
            msg = (
                f"the document builds more than MAX_MODELS={MAX_MODELS} models; "
                "raise mithril_core.logical.serialize.MAX_MODELS if you trust it."
            )
            raise _fail(path, msg)

    def model(self, data: Any, path: str) -> BaseModel:
        if type(data) is not dict:
            raise _fail(path, f"expected a model object, got {_kind(data)}.")
        class_name = _required(data, "class", path)
        if type(class_name) is not str:
            raise _fail(
                _field(path, "class"), f"expected a string, got {_kind(class_name)}."
            )
        if class_name == "Model":
            return self.plain_model(data, path)
        cls = self.classes.get(class_name)
        if cls is None:
            short = class_name.rpartition(":")[2].rpartition(".")[2] or "MyModel"
            msg = MSG_UNREGISTERED_CLASS.format(
                path=path or "document", name=class_name, short=short
            )
            raise ModelDocumentError(msg)
        _expect_object(data, path, ("class", "args"))
        args_path = _field(path, "args")
        args = _required(data, "args", path)
        if type(args) is not dict:
            raise _fail(args_path, f"expected an object, got {_kind(args)}.")
        kwargs = self.arguments(cls, class_name, args, args_path)
        self.count_models(path)
        try:
            model = cls(**kwargs)
        except Exception as exc:
            msg = f"{class_name} refused the arguments: {type(exc).__name__}: {exc}"
            raise _fail(path, msg) from exc
        if not isinstance(model, BaseModel):
            raise _fail(path, f"{class_name} did not build a model.")
        self.count_models(path, _tree_size(model) - 1)
        return model

    def arguments(
        self, cls: type, class_name: str, args: dict[str, Any], path: str
    ) -> dict[str, Any]:
        parameters = _init_parameters(cls, path)
        for key in args:
            if key not in parameters:
                msg = (
                    f"{class_name} has no argument {key[:40]!r}; its arguments are "
                    f"{', '.join(parameters) or 'none'}."
                )
                raise _fail(_field(path, key), msg)
        missing = [
            name
            for name, parameter in parameters.items()
            if parameter.default is inspect.Parameter.empty and name not in args
        ]
        if missing:
            raise _fail(path, f"{class_name} needs the argument {missing[0]!r}.")
        repeats = _REPEAT_ARGUMENTS.get(class_name, ())
        kwargs: dict[str, Any] = {}
        for key, value in args.items():
            where = _field(path, key)
            if key in repeats:
                count = len(value) if type(value) is list else value
                if type(count) is int and count > MAX_REPEAT:
                    msg = (
                        f"{count} exceeds MAX_REPEAT={MAX_REPEAT} (it is how many "
                        "parts the constructor builds)."
                    )
                    raise _fail(where, msg)
            if key == "name":
                kwargs[key] = _name(value, where, optional=True)
            elif key == "dtype" and type(value) is str:
                kwargs[key] = self.dtype(value, where).name
            else:
                kwargs[key] = self.value(value, where, sizes=True, models=True)
        if class_name == _TRAIN_MODEL:
            _refuse_key_patterns(kwargs.get("calls"), _field(path, "calls"))
        return kwargs

    def value(self, value: Any, path: str, *, sizes: bool, models: bool) -> Any:
        kind = type(value)
        if kind is int:
            if sizes and abs(value) > MAX_SIZE:
                msg = (
                    f"integer {value} exceeds MAX_SIZE={MAX_SIZE} in magnitude; give "
                    "a larger constant as an array constant."
                )
                raise _fail(path, msg)
            if not _INT64[0] <= value <= _INT64[1]:
                raise _fail(path, f"integer {value} is out of the int64 range.")
            return value
        if kind is list:
            return [
                self.value(item, _index(path, i), sizes=sizes, models=models)
                for i, item in enumerate(value)
            ]
        if kind is dict:
            return self.tagged(value, path, sizes=sizes, models=models)
        return value  # str, float, bool or None (checked by _check_json_values)

    def tagged(
        self, value: dict[str, Any], path: str, *, sizes: bool, models: bool
    ) -> Any:
        tags = [tag for tag in _TAGS if tag in value]
        fields = (*tags, "dtype") if tags == ["__array__"] else tuple(tags)
        if len(tags) != 1 or set(value) != set(fields):
            msg = (
                f"an object value must be one of the encoded forms "
                f"{', '.join(_TAGS)} (with 'dtype' for '__array__'); got the fields "
                f"{', '.join(repr(k[:40]) for k in value) or 'none'}."
            )
            raise _fail(path, msg)
        tag = tags[0]
        item = value[tag]
        where = _field(path, tag)
        if tag == "__model__":
            if not models:
                raise _fail(where, "a model is not allowed here.")
            return self.model(item, where)
        if tag == "__ellipsis__":
            if item is not True:
                raise _fail(where, "expected true.")
            return Ellipsis
        if tag == "__slice__":
            bounds = _expect_list(item, where)
            if len(bounds) != 3 or any(
                b is not None and type(b) is not int for b in bounds
            ):
                raise _fail(where, "a slice is [start, stop, step] of ints or nulls.")
            return slice(
                *(self.value(b, where, sizes=sizes, models=False) for b in bounds)
            )
        if tag == "__variadic__":
            return (_name(item, where), ...)
        if tag == "__tuple__":
            items = _expect_list(item, where)
            return tuple(
                self.value(v, _index(where, i), sizes=sizes, models=models)
                for i, v in enumerate(items)
            )
        if tag == "__dict__":
            result: dict[Any, Any] = {}
            for i, pair in enumerate(_expect_list(item, where)):
                at = _index(where, i)
                if type(pair) is not list or len(pair) != 2:
                    raise _fail(at, "a dict entry is a [key, value] pair.")
                key = self.value(pair[0], _index(at, 0), sizes=False, models=False)
                try:
                    hash(key)
                except TypeError as exc:
                    raise _fail(at, "the key is not hashable.") from exc
                result[key] = self.value(
                    pair[1], _index(at, 1), sizes=sizes, models=models
                )
            return result
        if tag == "__array__":
            return _array(item, value["dtype"], path)
        # __dtype__
        if type(item) is not str:
            raise _fail(where, f"expected a dtype name, got {_kind(item)}.")
        return self.dtype(item, where)

    def dtype(self, name: str, path: str) -> Any:
        if name not in ALL_DTYPES:
            msg = (
                f"unknown dtype {name[:40]!r}; expected one of {', '.join(ALL_DTYPES)}."
            )
            raise _fail(path, msg)
        return as_dtype(name)

    def plain_model(self, data: dict[str, Any], path: str) -> Model:
        fields = ("class", "name", "keys", "exposed", "children", "version")
        _expect_object(data, path, fields)
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION or type(version) is not int:
            msg = (
                f"format version {version!r}; this mithril_core reads version "
                f"{FORMAT_VERSION} (a newer one may have written it)."
            )
            raise _fail(_field(path, "version"), msg)
        name = _name(data.get("name"), _field(path, "name"), optional=True)
        shapes = self.key_shapes(data.get("keys", {}), _field(path, "keys"))
        exposed_path = _field(path, "exposed")
        exposed = {
            _name(n, _index(exposed_path, i))
            for i, n in enumerate(_expect_list(data.get("exposed", []), exposed_path))
        }
        children_path = _field(path, "children")
        steps = _expect_list(_required(data, "children", path), children_path)
        if len(steps) > MAX_CHILDREN:
            msg = (
                f"{len(steps)} children, more than MAX_CHILDREN={MAX_CHILDREN}; "
                "raise mithril_core.logical.serialize.MAX_CHILDREN if you trust "
                "this document."
            )
            raise _fail(children_path, msg)
        self.count_models(path)
        model = Model(name=name)
        children: list[BaseModel] = []
        fresh: dict[int, Connection] = {}
        for index, step_data in enumerate(steps):
            where = _index(children_path, index)
            step = _expect_object(
                step_data, where, ("model", "name", "bindings", "chain")
            )
            child = self.model(_required(step, "model", where), _field(where, "model"))
            child_name = _name(step.get("name"), _field(where, "name"), optional=True)
            if child_name is not None and child.name is None:
                child.name = child_name
            chain = step.get("chain", False)
            if type(chain) is not bool:
                raise _fail(
                    _field(where, "chain"), f"expected a boolean, got {_kind(chain)}."
                )
            bindings_path = _field(where, "bindings")
            bindings_data = _required(step, "bindings", where)
            if type(bindings_data) is not dict:
                raise _fail(
                    bindings_path, f"expected an object, got {_kind(bindings_data)}."
                )
            bindings: dict[str, Any] = {}
            for term, ref in bindings_data.items():
                at = _field(bindings_path, term)
                _name(term, at)
                bindings[term] = self.binding(
                    model, ref, at, shapes, exposed, children, fresh
                )
            try:
                model.replay_addition(child, bindings, chain=chain)
            except Exception as exc:
                msg = f"cannot add this child: {type(exc).__name__}: {exc}"
                raise _fail(where, msg) from exc
            children.append(child)
        return model

    def key_shapes(self, keys: Any, path: str) -> dict[str, Any]:
        if type(keys) is not dict:
            raise _fail(path, f"expected an object, got {_kind(keys)}.")
        shapes: dict[str, Any] = {}
        for key, meta_data in keys.items():
            where = _field(path, key)
            _name(key, where)
            meta = _expect_object(meta_data, where, ("shape", "type", "expose"))
            if meta.get("type") is not None:
                raise _fail(
                    _field(where, "type"), "types are not stored; expected null."
                )
            if type(meta.get("expose", False)) is not bool:
                raise _fail(_field(where, "expose"), "expected a boolean.")
            shape = meta.get("shape")
            if shape is not None:
                shape_path = _field(where, "shape")
                _expect_list(shape, shape_path)
                shape = self.value(shape, shape_path, sizes=True, models=False)
            shapes[key] = shape
        return shapes

    def binding(
        self,
        model: Model,
        ref: Any,
        path: str,
        shapes: dict[str, Any],
        exposed: set[str],
        children: list[BaseModel],
        fresh: dict[int, Connection],
    ) -> Any:
        kind = ref[0] if type(ref) is list and ref else None
        arity = _BINDING_ARITY.get(kind) if type(kind) is str else None
        if arity is None or len(ref) != arity:
            msg = (
                'a binding is ["name", key], ["child", index, terminal], '
                '["const", value] or ["new", id].'
            )
            raise _fail(path, msg)
        if kind == "name":
            name = _name(ref[1], _index(path, 1))
            if name in model.connections():
                return name
            try:
                if name in shapes:
                    return IOKey(
                        name,
                        shape=shapes[name],
                        expose=True if name in exposed else None,
                    )
                if name in exposed:
                    return IOKey(name)
            except Exception as exc:
                msg = f"key {name[:40]!r}: {type(exc).__name__}: {exc}"
                raise _fail(path, msg) from exc
            return name
        if kind == "child":
            index, term = ref[1], ref[2]
            if type(index) is not int or not 0 <= index < len(children):
                msg = (
                    f"child index {index!r} is not one of the {len(children)} "
                    "children added before this one."
                )
                raise _fail(_index(path, 1), msg)
            _name(term, _index(path, 2))
            try:
                return children[index].terminal(term)
            except ModelConnectionError as exc:
                raise _fail(_index(path, 2), str(exc)) from exc
        if kind == "const":
            return self.value(ref[1], _index(path, 1), sizes=False, models=False)
        number = ref[1]
        if type(number) is not int or number < 0:
            raise _fail(_index(path, 1), "a new connection's id is an int >= 0.")
        conn = fresh.get(number)
        if conn is None:
            conn = fresh[number] = Connection(model=model)
        return conn


def _tree_size(model: BaseModel) -> int:
    size, stack = 0, [model]
    while stack:
        node = stack.pop()
        size += 1
        stack.extend(getattr(node, "_children", ()))
    return size


def _refuse_key_patterns(calls: Any, path: str) -> None:
    # TrainModel.add_regularization matches a ``keys`` string as a regular expression:
    # one from a document could backtrack for hours. to_dict records matched keys.
    for index, call in enumerate(calls if type(calls) is list else ()):
        if type(call) is list and len(call) == 2 and type(call[1]) is dict:
            if type(call[1].get("keys")) is str:
                msg = (
                    "a regular expression for keys is not run from a document; "
                    "list the parameter keys instead."
                )
                raise _fail(_field(_index(path, index), "keys"), msg)


def _array(payload: Any, dtype: Any, path: str) -> np.ndarray:
    where = _field(path, "dtype")
    if type(dtype) is not str or dtype not in _ARRAY_DTYPES:
        shown = dtype[:40] if type(dtype) is str else dtype
        msg = f"array dtype {shown!r} is not one of {', '.join(_ARRAY_DTYPES)}."
        raise _fail(where, msg)
    np_dtype = np.dtype(dtype)
    shape: list[int] = []
    probe = payload
    while type(probe) is list:
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    fits = _element_check(np_dtype)
    where = _field(path, "__array__")
    stack: list[tuple[Any, int]] = [(payload, 0)]
    while stack:
        node, depth = stack.pop()
        if depth < len(shape):
            if type(node) is not list or len(node) != shape[depth]:
                raise _fail(where, f"the nested lists are not rectangular {shape}.")
            stack.extend((item, depth + 1) for item in node)
        elif not fits(node):
            shown = repr(node)[:40]
            raise _fail(where, f"element {shown} does not fit dtype {dtype}.")
    return np.array(payload, dtype=np_dtype)


def _element_check(dtype: np.dtype) -> Any:
    if dtype.kind == "b":
        return lambda v: type(v) is bool
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        low, high = int(info.min), int(info.max)
        return lambda v: type(v) is int and low <= v <= high
    largest = float(np.finfo(dtype).max)
    return lambda v: (
        (type(v) is float or type(v) is int)
        and (not math.isfinite(v) or abs(v) <= largest)
    )


def _encode_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {"__model__": model_to_dict(value)}
    if isinstance(value, Connection):
        msg = (
            "Cannot serialize a model whose constructor received "
            "a symbolic connection; "
            "give it a plain value."
        )
        raise TypeError(msg)
    if value is Ellipsis:
        return {"__ellipsis__": True}
    if isinstance(value, slice):
        return {
            "__slice__": [
                _encode_value(v) for v in (value.start, value.stop, value.step)
            ]
        }
    if isinstance(value, tuple):
        if len(value) == 2 and value[1] is Ellipsis and isinstance(value[0], str):
            return {"__variadic__": value[0]}
        return {"__tuple__": [_encode_value(v) for v in value]}
    if isinstance(value, list):
        return [_encode_value(v) for v in value]
    if isinstance(value, dict):
        return {
            "__dict__": [[_encode_value(k), _encode_value(v)] for k, v in value.items()]
        }
    if isinstance(value, np.ndarray):
        return {"__array__": value.tolist(), "dtype": value.dtype.name}
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "kind") and hasattr(value, "name"):  # Dtype
        return {"__dtype__": value.name}
    if hasattr(value, "find") and hasattr(value, "value"):  # a shape Dim
        return value.find().value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    msg = f"Cannot serialize constructor argument {value!r} ({type(value).__name__})."
    raise TypeError(msg)


def copy_model(model: BaseModel) -> BaseModel:
    """A fresh copy of ``model``, rebuilt from its document with every class the
    model uses allowed (it is the caller's own object, not an untrusted file); no
    deep copy, so no recursion limit is met however deep the model is."""
    classes: dict[int, type[BaseModel]] = {}
    stack: list[BaseModel] = [model]
    while stack:
        current = stack.pop()
        classes[id(type(current))] = type(current)
        stack.extend(current.children)
    return model_from_dict(model_to_dict(model), classes=classes.values())


register_inspect(
    {
        "copy_model": copy_model,
        "model_to_dict": model_to_dict,
        "model_from_dict": model_from_dict,
        "model_to_json": model_to_json,
        "model_from_json": model_from_json,
    }
)
