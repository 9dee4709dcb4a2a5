"""Model definitions to and from plain, JSON-safe dicts.

A library model (any class other than plain ``Model``: primitives, ``Linear``,
``resnet18``'s blocks, user ``Operator`` subclasses) is stored as its importable class
and constructor arguments. A plain ``Model`` is stored as the sequence of its
``|=``/``+=`` additions, each child with the connections its terminals were bound to, so
replaying it rebuilds the same structure, names and shapes.
"""

from __future__ import annotations

import importlib
import json
from typing import Any

import numpy as np

from mithril_core.logical.connection import NOVALUE, Connection, IOKey
from mithril_core.logical.model import BaseModel, Model

FORMAT_VERSION = 1


def model_to_dict(model: BaseModel) -> dict[str, Any]:
    """Describe ``model`` as a JSON-safe dict (see module docstring)."""
    model._ensure_built()
    if type(model) is not Model:
        return {
            "class": f"{type(model).__module__}:{type(model).__qualname__}",
            "args": {
                k: _encode_value(v) for k, v in model.__dict__["_init_args"].items()
            },
        }
    refs: dict[int, Any] = {}
    for name, conn in model._conns.items():
        refs.setdefault(id(conn.find()), ["name", name])
    keys = {}
    for name, conn in model._conns.items():
        if isinstance(conn, IOKey):
            keys[name] = {
                "shape": _encode_value(conn.shape_template),
                "type": None,
                "expose": name in model._exposed,
            }
    steps = []
    fresh = 0
    for index, (child, targets, chain) in enumerate(model._log):
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
                "name": child._child_name,
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
        "exposed": [n for n in model._exposed if not n.startswith("__")],
        "children": steps,
        "version": FORMAT_VERSION,
    }


def model_from_dict(data: dict[str, Any]) -> BaseModel:
    """Rebuild a model described by :func:`model_to_dict`."""
    if data["class"] != "Model":
        module_name, _, qualname = data["class"].partition(":")
        cls: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        args = {k: _decode_value(v) for k, v in data["args"].items()}
        return cls(**args)
    model = Model(name=data["name"])
    keys = data.get("keys", {})
    exposed = set(data.get("exposed", ()))
    children: list[BaseModel] = []
    fresh: dict[int, Connection] = {}
    for step in data["children"]:
        child = model_from_dict(step["model"])
        if step["name"] is not None and child.name is None:
            child.name = step["name"]
        bindings: dict[str, Any] = {}
        for term, ref in step["bindings"].items():
            kind = ref[0]
            if kind == "name":
                name = ref[1]
                if name in keys and name not in model._conns:
                    meta = keys[name]
                    bindings[term] = IOKey(
                        name,
                        shape=_decode_value(meta["shape"]),
                        expose=True if name in exposed else None,
                    )
                elif name in exposed and name not in model._conns:
                    bindings[term] = IOKey(name)
                else:
                    bindings[term] = name
            elif kind == "child":
                bindings[term] = children[ref[1]].terminal(ref[2])
            elif kind == "const":
                bindings[term] = _decode_value(ref[1])
            else:
                conn = fresh.get(ref[1])
                if conn is None:
                    conn = fresh[ref[1]] = Connection(model=model)
                bindings[term] = conn
        model._add(child, bindings, chain=step["chain"])
        children.append(child)
    return model


def model_to_json(model: BaseModel, **kwargs: Any) -> str:
    return json.dumps(model_to_dict(model), **kwargs)


def model_from_json(text: str) -> BaseModel:
    return model_from_dict(json.loads(text))


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


def _decode_value(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode_value(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__model__" in value:
        return model_from_dict(value["__model__"])
    if "__ellipsis__" in value:
        return Ellipsis
    if "__slice__" in value:
        return slice(*(_decode_value(v) for v in value["__slice__"]))
    if "__variadic__" in value:
        return (value["__variadic__"], ...)
    if "__tuple__" in value:
        return tuple(_decode_value(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {_decode_value(k): _decode_value(v) for k, v in value["__dict__"]}
    if "__array__" in value:
        return np.array(value["__array__"], dtype=value["dtype"])
    if "__dtype__" in value:
        from mithril_core.dtypes import as_dtype

        return as_dtype(value["__dtype__"])
    msg = f"Unknown serialized value {value!r}."
    raise ValueError(msg)
