"""The physical IR: a frozen graph of primitive calls, what compile's passes and the
code generators read.

It holds no logical objects: every fact a pass or a generator needs (types, dims,
constants, the call's attributes, whether it promotes ints to floats) is copied in
by :func:`mithril_core.physical.flat.flatten`, the one function that reads a logical
model. Values and nodes are immutable; a pass returns a new :class:`Graph`, sharing
what it did not change. Identity matters: a value is the same value wherever it is
read (passes key their maps by ``id``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from mithril_core.logical.connection import NOVALUE

#: A tensor dim: its size, or a symbol shared by every dim known to be equal.
Dim = int | str


@dataclass(frozen=True, eq=False)
class Value:
    """One value of the graph: an input, a constant, or a node's output."""

    name: str
    types: frozenset[str]
    # Tensors of known rank: one entry per dim; ``None`` otherwise.
    dims: tuple[Dim, ...] | None = None
    constant: Any = NOVALUE
    # ``False`` where the model declared the value not differentiable.
    differentiable: bool | None = None

    @property
    def is_constant(self) -> bool:
        return self.constant is not NOVALUE

    def shape(self) -> list[int | None] | None:
        """Dim sizes of a tensor (``None`` for unknown dims); ``None`` otherwise."""
        if self.dims is None:
            return None
        return [d if isinstance(d, int) else None for d in self.dims]

    def static_shape(self) -> tuple[int, ...] | None:
        """A tensor's or constant array's dims, ``()`` for a number, ``None`` when
        unknown (or neither)."""
        if self.is_constant:
            if hasattr(self.constant, "shape"):
                return tuple(int(d) for d in self.constant.shape)
            return () if isinstance(self.constant, int | float) else None
        if self.dims is None:
            return None
        if not all(isinstance(d, int) for d in self.dims):
            return None
        return self.dims  # type: ignore[return-value]

    def with_constant(self, constant: Any) -> Value:
        return replace(self, constant=constant)

    def __repr__(self) -> str:
        return f"Value({self.name})"


#: Facts a node can carry (set by flatten from the primitive's declaration).
PROMOTES = "promotes"  # int (*) float computes in float: ints are cast first
COMPUTES_FLOAT = "computes_float"  # a float result from any input kind
IMPURE = "impure"  # never de-duplicated nor folded (random draws)


@dataclass(frozen=True, eq=False)
class Node:
    """One primitive call: ``output = op(**dict(zip(input_names, inputs)))``."""

    op: str
    path: str
    input_names: tuple[str, ...]
    inputs: tuple[Value, ...]
    output: Value
    # Constructor arguments of the primitive (what rebuilds it: ``Cast(dtype=...)``).
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    differentiable: bool = True
    facts: frozenset[str] = frozenset()
    # Estimated forward floating-point operations (``None``: unknown).
    flops: int | None = None
    # The input the output equals (``Buffer``, ``Dropout`` in inference): compile
    # removes the call.
    forwards: str | None = None

    def input(self, name: str) -> Value:
        """The value bound to input terminal ``name``."""
        try:
            return self.inputs[self.input_names.index(name)]
        except ValueError:
            msg = f"{self.path}: {self.op!r} has no input {name!r}; it has "
            msg += f"{list(self.input_names)}."
            raise KeyError(msg) from None

    def named_inputs(self) -> dict[str, Value]:
        return dict(zip(self.input_names, self.inputs, strict=True))

    def __repr__(self) -> str:
        return f"Node({self.path}: {self.op})"


@dataclass(frozen=True, eq=False)
class Graph:
    """Nodes in a topological order, the inputs given at evaluate (by key) and the
    outputs returned (by key)."""

    nodes: Sequence[Node]  # stored as a tuple
    inputs: Mapping[str, Value]
    outputs: Mapping[str, Value]

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "inputs", MappingProxyType(dict(self.inputs)))
        object.__setattr__(self, "outputs", MappingProxyType(dict(self.outputs)))

    def evolve(
        self,
        nodes: Iterable[Node] | None = None,
        inputs: Mapping[str, Value] | None = None,
        outputs: Mapping[str, Value] | None = None,
    ) -> Graph:
        """A new graph with the parts given replaced."""
        return Graph(
            nodes=self.nodes if nodes is None else tuple(nodes),
            inputs=self.inputs if inputs is None else inputs,
            outputs=self.outputs if outputs is None else outputs,
        )


def substitute(graph: Graph, new: Mapping[int, Value], nodes: Iterable[Node]) -> Graph:
    """``graph`` with ``nodes``, where every read of a value whose ``id`` is in
    ``new`` reads ``new[id]`` instead (inputs of nodes, and outputs)."""
    if not new:
        return graph.evolve(nodes=nodes)
    kept: list[Node] = []
    for node in nodes:
        if any(id(v) in new for v in node.inputs):
            node = replace(node, inputs=tuple(new.get(id(v), v) for v in node.inputs))
        kept.append(node)
    outputs = {k: new.get(id(v), v) for k, v in graph.outputs.items()}
    return graph.evolve(nodes=kept, outputs=outputs)


def element_count(value: Value) -> int | None:
    shape = value.static_shape()
    return None if shape is None else math.prod(shape)
