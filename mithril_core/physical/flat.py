"""Flatten a logical model into a graph of primitive calls, then simplify it.

Passes, each ``FlatGraph -> FlatGraph`` in place: drop buffers, prune what no output
needs, de-duplicate identical calls, fold what depends only on constants.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mithril_core.logical import shapes as sh
from mithril_core.logical import types as ty
from mithril_core.logical.connection import NOVALUE, Connection
from mithril_core.logical.model import Model, Primitive
from mithril_core.logical.naming import assign_names as assign_names


@dataclass(eq=False)
class Value:
    """One flat-graph value: an input, a constant, or a node's output."""

    name: str
    conn: Connection
    constant: Any = NOVALUE

    @property
    def is_constant(self) -> bool:
        return self.constant is not NOVALUE

    @property
    def types(self) -> frozenset[str]:
        return self.conn.find().types

    def shape(self) -> list[int | None] | None:
        """Dim values of a tensor (``None`` for unknown dims); ``None`` otherwise."""
        root = self.conn.find()
        if not root.types <= ty.TENSORS:
            return None
        return root.shape_node.values()

    def __repr__(self) -> str:
        return f"Value({self.name})"


@dataclass(eq=False)
class Node:
    """One primitive call: ``output = op(*inputs)``."""

    primitive: Primitive
    path: str
    inputs: list[Value]
    output: Value

    @property
    def op(self) -> str:
        return self.primitive.op_name

    @property
    def input_names(self) -> tuple[str, ...]:
        """The primitive's input terminal names, in the order of ``inputs``."""
        return tuple(self.primitive.input_names())

    @property
    def differentiable(self) -> bool:
        """Whether gradients flow through this call (``stop_gradient`` ... do not)."""
        return self.primitive.differentiable

    def input(self, name: str) -> Value:
        """The value bound to input terminal ``name``."""
        return self.inputs[self.input_names.index(name)]


@dataclass
class FlatGraph:
    nodes: list[Node]
    inputs: dict[str, Value]
    outputs: dict[str, Value]
    values: dict[int, Value] = field(default_factory=dict)


def flatten(model: Model, names: dict[int, str]) -> FlatGraph:
    values: dict[int, Value] = {}

    def value_of(conn: Connection) -> Value:
        root = conn.find()
        existing = values.get(id(root))
        if existing is None:
            existing = Value(names.get(id(root)) or f"v{len(values)}", root)
            if root.value is not NOVALUE:
                existing.constant = root.value
            values[id(root)] = existing
        return existing

    nodes: list[Node] = []
    for primitive, path in model.primitives():
        operands = [value_of(primitive.terminal(n)) for n in primitive.input_names()]
        output = value_of(primitive.terminal("output"))
        nodes.append(Node(primitive, path, operands, output))
    inputs: dict[str, Value] = {}
    for value in values.values():
        root = value.conn
        if root.producer is None and not value.is_constant:
            inputs[value.name] = value
    return FlatGraph(nodes=nodes, inputs=inputs, outputs={}, values=values)


def topological_order(graph: FlatGraph) -> None:
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
    graph.nodes = order


def remove_buffers(graph: FlatGraph) -> None:
    """Drop identities (Buffer, Dropout in inference ...): consumers read the input."""
    alias: dict[int, Value] = {}

    def resolve(value: Value) -> Value:
        while id(value) in alias:
            value = alias[id(value)]
        return value

    kept = []
    for node in graph.nodes:
        node.inputs = [resolve(v) for v in node.inputs]
        constants = {
            name: v.constant
            for name, v in zip(node.primitive.input_names(), node.inputs, strict=True)
            if v.is_constant
        }
        forwarded = node.primitive.forwarded_input(constants)
        if forwarded is not None:
            alias[id(node.output)] = node.inputs[
                node.primitive.input_names().index(forwarded)
            ]
        else:
            kept.append(node)
    graph.nodes = kept
    graph.outputs = {k: resolve(v) for k, v in graph.outputs.items()}


def prune(graph: FlatGraph) -> None:
    needed = {id(v) for v in graph.outputs.values()}
    kept = []
    for node in reversed(graph.nodes):
        if id(node.output) in needed:
            kept.append(node)
            needed.update(id(v) for v in node.inputs)
    kept.reverse()
    graph.nodes = kept
    graph.inputs = {k: v for k, v in graph.inputs.items() if id(v) in needed}


def deduplicate(graph: FlatGraph) -> None:
    seen: dict[tuple[Any, ...], Value] = {}
    alias: dict[int, Value] = {}
    kept = []
    for node in graph.nodes:
        node.inputs = [alias.get(id(v), v) for v in node.inputs]
        key = (node.op, *(_identity(v) for v in node.inputs))
        if node.op not in _IMPURE and _hashable(key):
            previous = seen.get(key)
            if previous is not None:
                alias[id(node.output)] = previous
                continue
            seen[key] = node.output
        kept.append(node)
    graph.nodes = kept
    graph.outputs = {k: alias.get(id(v), v) for k, v in graph.outputs.items()}


_IMPURE = frozenset({"dropout"})


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


def fold_constants(
    graph: FlatGraph, evaluate: Callable[[Node, list[Any]], Any]
) -> None:
    """Replace nodes whose inputs are all constant by their (constant) output."""
    kept = []
    for node in graph.nodes:
        if node.output.is_constant:
            continue
        if all(v.is_constant for v in node.inputs) and node.op not in _IMPURE:
            node.output.constant = evaluate(node, [v.constant for v in node.inputs])
            continue
        kept.append(node)
    graph.nodes = kept


def cast_promoted_floats(graph: FlatGraph, dtype_name: str) -> None:
    """Cast float results computed from int/bool tensors to the backend's float dtype.

    Frameworks pick their own float type for ``int / int`` or ``mean(int)`` (NumPy
    float64, torch float32); the model promises the backend dtype.
    """
    from mithril_core.primitives import Cast

    nodes: list[Node] = []
    for node in graph.nodes:
        if node.output.types == {ty.TENSOR_FLOAT} and _promotes(node):
            # int tensor (*) float: NumPy would compute in float64; convert the ints
            # to the backend dtype first, as an explicit call in the code.
            node.inputs = [
                _cast_before(v, dtype_name, node, nodes)
                if v.types == {ty.TENSOR_INT}
                else v
                for v in node.inputs
            ]
        nodes.append(node)
        if node.output.types != {ty.TENSOR_FLOAT} or node.op == "cast":
            continue
        if any(ty.TENSOR_FLOAT in v.types for v in node.inputs):
            continue
        if not any(v.types & ty.TENSORS for v in node.inputs):
            continue
        final = node.output
        node.output = Value(f"{final.name}_uncast", final.conn)
        cast = Cast(dtype=dtype_name)
        dtype_terminal = cast.terminal("dtype").find()
        dtype = Value(f"{final.name}_dtype", dtype_terminal, dtype_name)
        nodes.append(Node(cast, f"{node.path}_cast", [node.output, dtype], final))
    graph.nodes = nodes


def _promotes(node: Node) -> bool:
    return any(
        getattr(rule, "__name__", "") == "promote_types"
        for rule in node.primitive.rules
    )


def _cast_before(value: Value, dtype_name: str, node: Node, nodes: list[Node]) -> Value:
    from mithril_core.primitives import Cast

    cast = Cast(dtype=dtype_name)
    output = cast.terminal("output").find()
    output.restrict_type(frozenset({ty.TENSOR_FLOAT}))
    sh.unify(output.shape_node, value.conn.find().shape_node)
    dtype = Value(f"{value.name}_dtype", cast.terminal("dtype").find(), dtype_name)
    result = Value(f"{value.name}_{dtype_name}", output)
    nodes.append(Node(cast, f"{node.path}_cast_{value.name}", [value, dtype], result))
    return result


def float_bound_inputs(graph: FlatGraph) -> dict[str, str]:
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
        if node.output.types == {ty.TENSOR_FLOAT} and _computes_float(node):
            for key in sorted(keys):
                found.setdefault(key, node.path)
        elif _ambiguous(node.output.types):
            reach[id(node.output)] = keys
    return found


def _computes_float(node: Node) -> bool:
    # Arithmetic that promotes to float, or an op whose result is float whatever its
    # input (exp, mean, squared_error): not a cast, nor an op that merely accepts
    # several kinds (an attention mask may be bool or float).
    names = {getattr(rule, "__name__", "") for rule in node.primitive.rules}
    return bool(names & {"promote_types", "kind_type_rule"})


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


def index_checks(graph: FlatGraph) -> list[IndexCheck]:
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
        names = node.primitive.input_names()
        source = node.inputs[names.index(index_name)]
        while id(source) in producer and producer[id(source)].op in _INDEX_PRESERVING:
            source = producer[id(source)].inputs[0]
        key = input_key.get(id(source))
        if key is None or not source.types <= ty.TENSORS:
            continue
        indexed = node.inputs[names.index(indexed_name)]
        axis = 0
        if "axis" in names:
            axis = node.inputs[names.index("axis")].constant
        bound = _dim_of(graph, indexed, axis, input_key)
        if bound is None:
            continue
        indexed_name = f"{of} {indexed.name}"
        checks.append(IndexCheck(key, what, node.path, bound, indexed_name, negative))
    return checks


def _dim_of(
    graph: FlatGraph, value: Value, axis: int, input_key: dict[int, str]
) -> int | tuple[str, int] | None:
    dims = value.conn.find().shape_node.dims()
    if dims is None or not isinstance(axis, int) or not -len(dims) <= axis < len(dims):
        return None
    axis %= len(dims)
    dim = dims[axis].find()
    if dim.value is not None:
        return dim.value
    if id(value) in input_key:
        return input_key[id(value)], axis
    for key, other in graph.inputs.items():
        other_dims = other.conn.find().shape_node.dims() or []
        for i, candidate in enumerate(other_dims):
            if candidate.find() is dim:
                return key, i
    return None


def shape_sources(graph: FlatGraph, value: Value) -> list[int | tuple[str, int] | None]:
    """Per dim of ``value`` (rank known): its size, or ``(input key, axis)`` of an
    input dim it equals, or ``None`` when evaluate cannot know it before running."""
    dims = value.conn.find().shape_node.dims() or []
    input_key = {id(v): k for k, v in graph.inputs.items()}
    return [_dim_of(graph, value, axis, input_key) for axis in range(len(dims))]
