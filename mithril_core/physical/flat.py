"""Flatten a logical model into the frozen IR (:mod:`mithril_core.physical.ir`), and
the passes that simplify it.

:func:`flatten` is the one function that reads logical objects: it copies into the IR
every fact the passes and code generators need. Each pass is ``Graph -> Graph``:
order, drop buffers, prune what no output needs, de-duplicate identical calls, fold
what depends only on constants, cast promoted floats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cache
from types import MappingProxyType
from typing import Any

import numpy as np

from mithril_core.logical import types as ty
from mithril_core.logical.connection import Connection
from mithril_core.logical.model import Model, Primitive
from mithril_core.logical.naming import assign_names as assign_names
from mithril_core.physical.ir import (
    COMPUTES_FLOAT,
    IMPURE,
    PROMOTES,
    Graph,
    Node,
    Value,
    element_count,
    substitute,
)
from mithril_core.primitives.lowering import as_lowering

FlatGraph = Graph  # the name plugins know the graph by

__all__ = ["FlatGraph", "Graph", "Node", "Value", "flatten"]


@dataclass
class Flattened:
    """What :func:`flatten` returns: the IR, and (for compile only, while the model
    is being specialised) each value's logical connection, to read back types the
    solver settles after the IR is built."""

    graph: Graph
    by_connection: dict[int, Value]  # id(root connection) -> value
    connection_of: dict[int, Connection]  # id(value) -> root connection
    reader: _Reader

    def value(self, conn: Connection) -> Value:
        return self.by_connection[id(conn.find())]

    def refresh(self, graph: Graph) -> Graph:
        """``graph`` with every value's types read again from its connection (after
        compile restricted some types to float and solved again; that settles types,
        never dims)."""
        new: dict[int, Value] = {}

        def current(value: Value) -> Value:
            known = new.get(id(value))
            if known is not None:
                return known
            conn = self.connection_of.get(id(value))
            if conn is None or value.is_constant:
                return value
            types = conn.find().types
            if types != value.types:
                known = replace(value, types=types)
                new[id(value)] = known
                return known
            return value

        nodes = []
        for node in graph.nodes:
            inputs = tuple(current(v) for v in node.inputs)
            output = current(node.output)
            if output is not node.output or any(
                a is not b for a, b in zip(inputs, node.inputs, strict=True)
            ):
                node = replace(node, inputs=inputs, output=output)
            nodes.append(node)
        return Graph(
            nodes=nodes,
            inputs={k: current(v) for k, v in graph.inputs.items()},
            outputs={k: current(v) for k, v in graph.outputs.items()},
        )


class _Reader:
    """Reads a connection's facts into IR form; equal unknown dims share a symbol."""

    def __init__(self) -> None:
        self.symbols: dict[int, str] = {}

    def dims(self, root: Connection) -> tuple[int | str, ...] | None:
        if not root.types <= ty.TENSORS:
            return None
        dims = root.shape_node.dims()
        if dims is None:
            return None
        result: list[int | str] = []
        for dim in dims:
            dim = dim.find()
            if dim.value is not None:
                result.append(dim.value)
                continue
            symbol = self.symbols.get(id(dim))
            if symbol is None:
                symbol = self.symbols[id(dim)] = f"d{len(self.symbols)}"
            result.append(symbol)
        return tuple(result)

    def value(self, root: Connection, name: str) -> Value:
        return Value(
            name=name,
            types=root.types,
            dims=self.dims(root),
            constant=root.value,
            differentiable=root.differentiable,
        )


def flatten(model: Model, names: dict[int, str]) -> Flattened:
    """The IR of ``model``'s primitive calls (in the order they were added), every
    value named by ``names`` (``id`` of a root connection -> key) or ``v<n>``."""
    reader = _Reader()
    by_connection: dict[int, Value] = {}
    connection_of: dict[int, Connection] = {}

    def value_of(conn: Connection) -> Value:
        root = conn.find()
        existing = by_connection.get(id(root))
        if existing is None:
            name = names.get(id(root)) or f"v{len(by_connection)}"
            existing = reader.value(root, name)
            by_connection[id(root)] = existing
            connection_of[id(existing)] = root
        return existing

    nodes: list[Node] = []
    for primitive, path in model.primitives():
        input_names = tuple(primitive.input_names())
        operands = tuple(value_of(primitive.terminal(n)) for n in input_names)
        output = value_of(primitive.terminal("output"))
        nodes.append(_node(primitive, path, input_names, operands, output))
    inputs = {
        value.name: value
        for root_id, value in by_connection.items()
        if connection_of[id(value)].producer is None and not value.is_constant
    }
    graph = Graph(nodes=nodes, inputs=inputs, outputs={})
    return Flattened(graph, by_connection, connection_of, reader)


def _node(
    primitive: Primitive,
    path: str,
    input_names: tuple[str, ...],
    operands: tuple[Value, ...],
    output: Value,
) -> Node:
    constants = {
        n: v.constant
        for n, v in zip(input_names, operands, strict=True)
        if v.is_constant
    }
    if output.is_constant:
        flops: int | None = 0  # compile folds it
    else:
        shapes = {
            n: v.static_shape() for n, v in zip(input_names, operands, strict=True)
        }
        flops = primitive.flops(shapes, output.static_shape())
    return Node(
        op=primitive.op_name,
        path=path,
        input_names=input_names,
        inputs=operands,
        output=output,
        attributes=MappingProxyType(
            {k: v for k, v in primitive.init_args.items() if k != "name"}
        ),
        differentiable=primitive.differentiable,
        facts=_facts(type(primitive)),
        flops=flops,
        forwards=primitive.forwarded_input(constants),
    )


_FACTS: dict[type, frozenset[str]] = {}


def _facts(cls: type[Primitive]) -> frozenset[str]:
    """What a primitive class's declaration says about its calls (read once per
    class)."""
    known = _FACTS.get(cls)
    if known is not None:
        return known
    rule_names = {getattr(rule, "__name__", "") for rule in cls.rules}
    facts: set[str] = set()
    if "promote_types" in rule_names:
        facts.add(PROMOTES)
    if rule_names & {"promote_types", "kind_type_rule"}:
        facts.add(COMPUTES_FLOAT)
    if not cls.deterministic:
        facts.add(IMPURE)
    known = _FACTS[cls] = frozenset(facts)
    return known


def topological_order(graph: Graph) -> Graph:
    producer = {id(n.output): n for n in graph.nodes}
    order: list[Node] = []
    state: dict[int, int] = {}
    for start in graph.nodes:
        if id(start) in state:
            continue
        stack: list[tuple[Node, int]] = [(start, 0)]
        while stack:
            node, i = stack.pop()
            if i == 0:
                if state.get(id(node)) == 2:
                    continue
                state[id(node)] = 1
            deps = [producer[id(v)] for v in node.inputs if id(v) in producer]
            if i < len(deps):
                stack.append((node, i + 1))
                dep = deps[i]
                if state.get(id(dep)) == 1:
                    msg = (
                        f"Cycle in the model graph through {dep.path} and {node.path}."
                    )
                    raise ValueError(msg)
                if state.get(id(dep)) != 2:
                    stack.append((dep, 0))
                continue
            state[id(node)] = 2
            order.append(node)
    return graph.evolve(nodes=order)


def remove_buffers(graph: Graph) -> Graph:
    """Drop identities (Buffer, Dropout in inference ...): consumers read the input."""
    alias: dict[int, Value] = {}
    kept: list[Node] = []
    for node in graph.nodes:
        if any(id(v) in alias for v in node.inputs):
            node = replace(node, inputs=tuple(alias.get(id(v), v) for v in node.inputs))
        if node.forwards is not None:
            alias[id(node.output)] = node.input(node.forwards)
        else:
            kept.append(node)
    return substitute(graph, alias, kept)


def prune(graph: Graph, *, keep_inputs: bool = False) -> Graph:
    """Drop calls no output needs (and, unless ``keep_inputs``, unused inputs)."""
    needed = {id(v) for v in graph.outputs.values()}
    kept = []
    for node in reversed(graph.nodes):
        if id(node.output) in needed:
            kept.append(node)
            needed.update(id(v) for v in node.inputs)
    kept.reverse()
    if keep_inputs:
        return graph.evolve(nodes=kept)
    inputs = {k: v for k, v in graph.inputs.items() if id(v) in needed}
    return graph.evolve(nodes=kept, inputs=inputs)


def deduplicate(graph: Graph) -> Graph:
    seen: dict[tuple[Any, ...], Value] = {}
    alias: dict[int, Value] = {}
    kept = []
    for node in graph.nodes:
        if any(id(v) in alias for v in node.inputs):
            node = replace(node, inputs=tuple(alias.get(id(v), v) for v in node.inputs))
        key = (node.op, *(_identity(v) for v in node.inputs))
        if IMPURE not in node.facts and _hashable(key):
            previous = seen.get(key)
            if previous is not None:
                alias[id(node.output)] = previous
                continue
            seen[key] = node.output
        kept.append(node)
    return substitute(graph, alias, kept)


def _identity(value: Value) -> Any:
    if value.is_constant:
        constant = value.constant
        if isinstance(constant, np.ndarray):
            # Equal arrays are one constant (``constant_keys`` with equal values).
            digest = hashlib.blake2b(np.ascontiguousarray(constant).tobytes()).digest()
            return ("array", constant.dtype.str, constant.shape, digest)
        if hasattr(constant, "shape"):
            return ("array", id(constant))
        return ("const", type(constant).__name__, constant)
    return id(value)


def _hashable(key: tuple[Any, ...]) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


def fold_constants(graph: Graph, evaluate: Callable[[Node, list[Any]], Any]) -> Graph:
    """Replace calls whose inputs are all constant by their (constant) output."""
    folded: dict[int, Value] = {}
    kept = []
    for node in graph.nodes:
        if any(id(v) in folded for v in node.inputs):
            node = replace(
                node, inputs=tuple(folded.get(id(v), v) for v in node.inputs)
            )
        if node.output.is_constant:
            continue
        if all(v.is_constant for v in node.inputs) and IMPURE not in node.facts:
            result = evaluate(node, [v.constant for v in node.inputs])
            folded[id(node.output)] = node.output.with_constant(result)
            continue
        kept.append(node)
    return substitute(graph, folded, kept)


@cache
def _cast_terminals() -> tuple[tuple[str, ...], frozenset[str], int]:
    from mithril_core.primitives import Cast

    cast = Cast(dtype="float32")
    dtype_types = cast.terminal("dtype").find().types
    return tuple(cast.input_names()), dtype_types, cast.flops_per_element


def _cast_node(
    source: Value, dtype_name: str, path: str, output: Value, name: str
) -> Node:
    input_names, dtype_types, per_element = _cast_terminals()
    dtype = Value(f"{name}_dtype", dtype_types, constant=dtype_name)
    count = element_count(output)
    return Node(
        op="cast",
        path=path,
        input_names=input_names,
        inputs=(source, dtype),
        output=output,
        attributes=MappingProxyType({"dtype": dtype_name}),
        flops=None if count is None else per_element * count,
    )


def cast_promoted_floats(graph: Graph, dtype_name: str) -> Graph:
    """Cast float results computed from int/bool tensors to the backend's float dtype.

    Frameworks pick their own float type for ``int / int`` or ``mean(int)`` (NumPy
    float64, torch float32); the model promises the backend dtype.
    """
    nodes: list[Node] = []
    for node in graph.nodes:
        if node.output.types == {ty.TENSOR_FLOAT} and PROMOTES in node.facts:
            # int tensor (*) float: NumPy would compute in float64; convert the ints
            # to the backend dtype first, as an explicit call in the code.
            inputs = tuple(
                _cast_before(v, dtype_name, node, nodes)
                if v.types == {ty.TENSOR_INT}
                else v
                for v in node.inputs
            )
            node = replace(node, inputs=inputs)
        nodes.append(node)
        if node.output.types != {ty.TENSOR_FLOAT} or node.op == "cast":
            continue
        if any(ty.TENSOR_FLOAT in v.types for v in node.inputs):
            continue
        if not any(v.types & ty.TENSORS for v in node.inputs):
            continue
        final = node.output
        uncast = Value(f"{final.name}_uncast", final.types, final.dims)
        nodes[-1] = replace(node, output=uncast)
        nodes.append(
            _cast_node(uncast, dtype_name, f"{node.path}_cast", final, final.name)
        )
    return graph.evolve(nodes=nodes)


def _cast_before(value: Value, dtype_name: str, node: Node, nodes: list[Node]) -> Value:
    result = Value(
        f"{value.name}_{dtype_name}", frozenset({ty.TENSOR_FLOAT}), value.dims
    )
    path = f"{node.path}_cast_{value.name}"
    nodes.append(_cast_node(value, dtype_name, path, result, value.name))
    return result


def float_bound_inputs(graph: Graph) -> dict[str, str]:
    """Tensor inputs whose type still admits float and int (or bool) but whose values
    reach a call that computes a float result from them (``x * w`` with a float
    ``w``, ``x * 2.5``, ``x / 2``, ``exp(x)``, ``mean(x)``): they are float inputs.
    Returns key -> path of the first such call. Reaching goes through calls whose
    result still admits int (``x + 1``, ``reshape(x)``)."""
    reach: dict[int, set[str]] = {
        id(v): {k} for k, v in graph.inputs.items() if _ambiguous(v.types)
    }
    found: dict[str, str] = {}
    for node in graph.nodes:
        keys = set().union(*(reach.get(id(v), set()) for v in node.inputs))
        if not keys:
            continue
        # Arithmetic that promotes to float, or an op whose result is float whatever
        # its input (exp, mean, squared_error): not a cast, nor an op that merely
        # accepts several kinds (an attention mask may be bool or float).
        if node.output.types == {ty.TENSOR_FLOAT} and COMPUTES_FLOAT in node.facts:
            for key in sorted(keys):
                found.setdefault(key, node.path)
        elif _ambiguous(node.output.types):
            reach[id(node.output)] = keys
    return found


def _ambiguous(types: frozenset[str]) -> bool:
    return (
        types <= ty.TENSORS
        and ty.TENSOR_FLOAT in types
        and bool(types & {ty.TENSOR_INT, ty.TENSOR_BOOL})
    )


@dataclass(frozen=True)
class IndexCheck:
    """Int indices that a graph input gives to a call, checked at evaluate before the
    backend runs: every value must be in ``[0, bound)`` (``[-bound, bound)`` where
    negative indices count from the end, as for ``indexer``)."""

    key: str  # the graph input holding the indices
    what: str  # what they are, e.g. "embedding ids"
    path: str  # the call that indexes with them
    # How many things are indexed: a known int, or (input key, axis) of its shape.
    bound: int | tuple[str, int]
    indexed: str  # what is indexed, e.g. "rows of weight"
    negative: bool = False  # whether -bound <= index < 0 counts from the end


# op -> (indices input, indexed input, what the indices are, what they index, whether
# negative indices count from the end). The indexed axis is the ``axis`` attribute
# for cross_entropy, else 0 (``indexer`` with one int tensor as the index).
_INDEXING = {
    "embedding": ("input", "weight", "embedding ids", "rows of", False),
    "cross_entropy": ("target", "input", "cross_entropy targets", "classes of", False),
    "indexer": ("index", "input", "indexer indices", "entries on axis 0 of", True),
}
# Calls whose output holds only values of their first input: indices passed through
# them are the input's indices.
_INDEX_PRESERVING = frozenset(
    {"reshape", "flatten", "transpose", "indexer", "stop_gradient", "split"}
)


def index_checks(graph: Graph) -> list[IndexCheck]:
    """The graph inputs that reach an index position (embedding ids, class targets)
    directly or through index-preserving calls, with the count they index. Indices
    computed inside the graph are checked by the backend's kernel, where it can."""
    producer = {id(node.output): node for node in graph.nodes}
    input_key = {id(value): key for key, value in graph.inputs.items()}
    checks: list[IndexCheck] = []
    for node in graph.nodes:
        spec = _INDEXING.get(node.op)
        if spec is None:
            continue
        index_name, indexed_name, what, of, negative = spec
        source = node.input(index_name)
        while id(source) in producer and producer[id(source)].op in _INDEX_PRESERVING:
            source = producer[id(source)].inputs[0]
        key = input_key.get(id(source))
        if key is None or not source.types <= ty.TENSORS:
            continue
        indexed = node.input(indexed_name)
        axis = 0
        if "axis" in node.input_names:
            axis = node.input("axis").constant
        bound = _dim_of(graph, indexed, axis, input_key)
        if bound is None:
            continue
        indexed_name = f"{of} {indexed.name}"
        checks.append(IndexCheck(key, what, node.path, bound, indexed_name, negative))
    return checks


def _dim_of(
    graph: Graph, value: Value, axis: int, input_key: dict[int, str]
) -> int | tuple[str, int] | None:
    dims = value.dims
    if dims is None or not isinstance(axis, int) or not -len(dims) <= axis < len(dims):
        return None
    axis %= len(dims)
    dim = dims[axis]
    if isinstance(dim, int):
        return dim
    if id(value) in input_key:
        return input_key[id(value)], axis
    for key, other in graph.inputs.items():
        for i, candidate in enumerate(other.dims or ()):
            if candidate == dim:
                return key, i
    return None


def shape_sources(graph: Graph, value: Value) -> list[int | tuple[str, int] | None]:
    """Per dim of ``value`` (rank known): its size, or ``(input key, axis)`` of an
    input dim it equals, or ``None`` when evaluate cannot know it before running."""
    input_key = {id(v): k for k, v in graph.inputs.items()}
    return [
        _dim_of(graph, value, axis, input_key) for axis in range(len(value.dims or ()))
    ]


def check_lowerings(
    graph: Graph, lowerings: Mapping[str, Any], what: str, hint: str
) -> None:
    """Raise one ``MissingLoweringError`` listing every op of ``graph`` that
    ``lowerings`` lacks, with the model paths that use it: "<what> for N
    primitive(s): ..." and then ``hint``."""
    from mithril_core.errors import MissingLoweringError

    missing: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op not in lowerings:
            missing.setdefault(node.op, []).append(node.path)
    if not missing:
        return
    lines = [
        f"  {op!r} used at {', '.join(paths[:5])}" + (" ..." if len(paths) > 5 else "")
        for op, paths in sorted(missing.items())
    ]
    msg = f"{what} for {len(missing)} primitive(s):\n" + "\n".join(lines) + "\n" + hint
    raise MissingLoweringError(msg)


def forward_of(lowering: Any) -> Callable[..., Any]:
    """The forward function of a lowering in any form the hook accepts."""
    forward: Callable[..., Any] = as_lowering(lowering).forward
    return forward


_KINDS = {"f": ty.TENSOR_FLOAT, "i": ty.TENSOR_INT, "u": ty.TENSOR_INT}
_KINDS["b"] = ty.TENSOR_BOOL


def specialize(
    graph: Graph,
    keys: tuple[str, ...],
    signature: tuple[tuple[tuple[int, ...], str], ...],
) -> Graph:
    """``graph`` with each input of ``keys`` given the (shape, dtype kind letter) of
    ``signature``: the primitives' shape and type rules are solved again on a model
    rebuilt from the IR (each call from its op and attributes), what became constant
    (``shape`` outputs ...) is folded with NumPy, and every input is kept.

    Backends whose code needs concrete shapes (C) call this at evaluate when they
    meet an input signature compile could not know."""
    from mithril_core.errors import CompileError, ShapeError
    from mithril_core.logical import shapes as sh
    from mithril_core.logical.connection import NOVALUE
    from mithril_core.logical.model import solve
    from mithril_core.plugins import get_registry

    registry = get_registry()
    operators = registry.operators
    model = Model()
    for node in graph.nodes:
        cls = operators.get(node.op)
        if cls is None:
            msg = f"{node.path}: no operator declares {node.op!r}; cannot specialise."
            raise CompileError(msg)
        primitive = cls(**node.attributes)
        bindings: dict[str, Any] = {"output": node.output.name}
        for name, value in zip(node.input_names, node.inputs, strict=True):
            if primitive.terminal(name).find().value is not NOVALUE:
                continue  # a constructor constant
            bindings[name] = value.constant if value.is_constant else value.name
        model |= primitive(**bindings)
    conns = model.connections()
    # What compile knew beyond the primitives' rules (shapes given to compile,
    # parameter types): every value keeps its known types and dim sizes.
    for value in {id(v): v for n in graph.nodes for v in n.inputs}.values():
        conn = None if value.is_constant else conns.get(value.name)
        if conn is None:
            continue
        conn = conn.find()
        conn.restrict_type(conn.types & value.types or conn.types)
        known = value.shape()
        if known is not None:
            sh.unify_with_dims(conn.shape_node, known)
    solve()
    # Inputs no call reads (an output that is an input) take the data's facts as is.
    given: dict[str, Value] = {}
    for key, (shape, kind) in zip(keys, signature, strict=True):
        conn = conns.get(key)
        if conn is None:
            value = graph.inputs[key]
            kinds = value.types & frozenset({_KINDS.get(kind, ty.TENSOR_FLOAT)})
            given[key] = replace(value, types=kinds or value.types, dims=tuple(shape))
            continue
        conn = conn.find()
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
    reader = _Reader()
    new: dict[int, Value] = {}

    def current(value: Value) -> Value:
        known = new.get(id(value))
        if known is None:
            conn = None if value.is_constant else conns.get(value.name)
            if conn is not None:
                known = reader.value(conn.find(), value.name)
            else:
                known = given.get(value.name, value)
            new[id(value)] = known
        return known

    nodes = [
        replace(
            node,
            inputs=tuple(current(v) for v in node.inputs),
            output=current(node.output),
        )
        for node in graph.nodes
    ]
    specialised = Graph(
        nodes=nodes,
        inputs={k: current(v) for k, v in graph.inputs.items()},
        outputs={k: current(v) for k, v in graph.outputs.items()},
    )
    numpy = registry.lowerings("numpy")
    specialised = fold_constants(
        specialised, lambda node, args: forward_of(numpy[node.op])(*args)
    )
    return prune(specialised, keep_inputs=True)
