"""Which calls a backward pass runs: computed once here for both code generators
(Python VJP code and C)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mithril_core.physical.ir import Graph, Node, Value


@dataclass(frozen=True)
class BackwardPlan:
    """``active``: the calls between the gradient inputs and the seeded outputs, in
    the order the backward pass runs them (reverse topological); ``requires``: ids of
    the values that carry a gradient (the gradient inputs and what they reach)."""

    active: tuple[Node, ...]
    requires: frozenset[int]

    def needs(self, node: Node) -> tuple[bool, ...]:
        """Per input of ``node``: whether its gradient is wanted."""
        return tuple(id(v) in self.requires and not v.is_constant for v in node.inputs)


def backward_plan(
    graph: Graph,
    grad_keys: tuple[str, ...],
    seeded: tuple[str, ...],
    carries: Callable[[Value], bool],
) -> BackwardPlan:
    """The backward pass from the outputs ``seeded`` to the inputs ``grad_keys``.

    :param carries: whether a value can carry a gradient (float tensors of the
        backend's dtype, say); gradients never flow through calls declared not
        differentiable, nor into values that cannot carry them.
    """
    requires = {id(graph.inputs[k]) for k in grad_keys}
    for node in graph.nodes:
        if (
            node.differentiable
            and carries(node.output)
            and any(id(v) in requires for v in node.inputs)
        ):
            requires.add(id(node.output))
    reaching = {id(graph.outputs[k]) for k in seeded}
    active: list[Node] = []
    for node in reversed(graph.nodes):
        if id(node.output) in reaching and id(node.output) in requires:
            active.append(node)
            reaching.update(id(v) for v in node.inputs if id(v) in requires)
    return BackwardPlan(tuple(active), frozenset(requires))
