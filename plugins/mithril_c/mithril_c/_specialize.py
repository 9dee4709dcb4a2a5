"""Shapes and dtypes known only at evaluate: the flat graph specialised to the inputs.

A copy of the compiled flat graph (with the logical model its values belong to) gets
the inputs' shapes and dtype kinds, the core's shape and type rules are solved again
(exactly what ``compile(shapes=...)`` does) and what became constant is folded.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping
from typing import Any

from mithril_core.errors import ShapeError
from mithril_core.logical import shapes as sh
from mithril_core.logical import types as ty
from mithril_core.logical.connection import NOVALUE
from mithril_core.logical.model import solve
from mithril_core.physical import flat
from mithril_core.plugins import get_registry

_KINDS = {
    "f": ty.TENSOR_FLOAT,
    "i": ty.TENSOR_INT,
    "u": ty.TENSOR_INT,
    "b": ty.TENSOR_BOOL,
}


_ORDER = (ty.TENSOR_FLOAT, ty.TENSOR_INT, ty.TENSOR_BOOL)
_LETTERS = {ty.TENSOR_FLOAT: "f", ty.TENSOR_INT: "iu", ty.TENSOR_BOOL: "b"}


def assumed(
    graph: flat.FlatGraph,
) -> tuple[tuple[tuple[tuple[int, ...], str] | None, ...], dict[str, frozenset[str]]]:
    """The signature compiled before any data is seen (``None`` where an input's
    shape is not fully known) and, per input of several possible tensor kinds, the
    dtype kind letters it accepts. Such inputs are assumed float, else int."""
    sig: list[tuple[tuple[int, ...], str] | None] = []
    ambiguous: dict[str, frozenset[str]] = {}
    for key, value in graph.inputs.items():
        kinds = value.types & ty.TENSORS
        shape = value.shape()
        if len(kinds) > 1:
            ambiguous[key] = frozenset("".join(_LETTERS[k] for k in kinds))
        if shape is None or None in shape or not kinds:
            sig.append(None)
            continue
        kind = next(k for k in _ORDER if k in kinds)
        sig.append((tuple(shape), _LETTERS[kind][0]))  # type: ignore[arg-type]
    return tuple(sig), ambiguous


def signature(
    keys: tuple[str, ...], inputs: Mapping[str, Any]
) -> tuple[tuple[tuple[int, ...], str], ...]:
    """What the specialised code depends on: each input's shape and dtype kind."""
    result = []
    for key in keys:
        array = inputs[key]
        result.append((array.shape, array.dtype.kind))
    return tuple(result)


def specialize(
    graph: flat.FlatGraph,
    keys: tuple[str, ...],
    sig: tuple[tuple[tuple[int, ...], str], ...],
) -> flat.FlatGraph:
    """A copy of ``graph`` with the shapes and dtype kinds of ``sig`` (one per key)
    applied, solved and folded."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 200_000))
    try:
        graph = copy.deepcopy(graph)
    finally:
        sys.setrecursionlimit(limit)
    for key, (shape, kind) in zip(keys, sig, strict=True):
        conn = graph.inputs[key].conn.find()
        before = repr(conn.shape_node)
        try:
            conn.restrict_type(frozenset({_KINDS.get(kind, ty.TENSOR_FLOAT)}))
            sh.unify_with_dims(conn.shape_node, list(shape))
            solve()
        except sh.ShapeConflict as exc:
            sh.clear_queue()
            msg = (
                f"{key}: an array of shape {list(shape)} does not fit the model's "
                f"{before} ({exc})."
            )
            raise ShapeError(msg) from None
    _fold(graph)
    return graph


def _fold(graph: flat.FlatGraph) -> None:
    """Values the rules now know (``shape`` outputs ...) become constants; nodes whose
    inputs are all constant are evaluated with NumPy, as at compile."""
    for node in graph.nodes:
        for value in (*node.inputs, node.output):
            if value.is_constant:
                continue
            root = value.conn.find()
            if root.value is not NOVALUE:
                value.constant = root.value
    numpy = get_registry().lowerings("numpy")

    def evaluate(node: flat.Node, args: list[Any]) -> Any:
        entry = numpy[node.op]
        forward = entry[0] if isinstance(entry, tuple) else entry
        return forward(*args)

    inputs = dict(graph.inputs)
    flat.fold_constants(graph, evaluate)
    flat.prune(graph)
    graph.inputs = inputs  # the runtime binds every input the model was compiled with
