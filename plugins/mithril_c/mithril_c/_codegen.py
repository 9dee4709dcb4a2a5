"""Generate one C source file for a flat graph: forward, forward for training, backward.

Storage: every tensor lives in one of ``io[]`` (inputs, outputs, then constant
tensors), ``ws`` (one workspace per compiled model and call in flight) or ``og[]``
(output gradients). Dtypes, checks and the workspace plan are :mod:`mithril_c._plan`'s;
the API lowerings write C through is :mod:`mithril_c._emit`'s; fused element-wise loops
are :mod:`mithril_c._fuse`'s. Workspace regions are shared by values whose lifetimes do
not overlap (a value's region is free after its last reader; the training forward
keeps what the backward reads). Reshapes alias their input; a transpose of the last
two axes read only by matrix products becomes a gemm flag. The backward runs the calls
of :func:`mithril_core.physical.gradients.backward_plan`: only needed gradients (of
``real`` values), the first contribution assigned and later ones added. Every
generated function returns 0, or the 1-based index of a runtime error (an index out of
range) in :attr:`Plan.errors`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from mithril_c._emit import REGION, Emitter, c_string, comment_text
from mithril_c._fuse import (
    backward_reads,
    broadcast_strides,
    contiguous_strides,
    emit_elementwise_vjp,
    emit_group,
    groups,
    hoist_small,
    loop_nest,
)
from mithril_c._plan import (
    C_TYPES,
    Loc,
    Plan,
    constant_dtype,
    is_tensor_value,
    shape_of,
    unresolved,
)
from mithril_core.physical.flat import FlatGraph, Node
from mithril_core.physical.gradients import BackwardPlan, backward_plan

__all__ = [
    "C_TYPES",
    "Emitter",
    "Loc",
    "Plan",
    "broadcast_strides",
    "c_string",
    "comment_text",
    "contiguous_strides",
    "generate",
    "loop_nest",
    "shape_of",
    "unresolved",
]

Result = tuple[Loc, tuple[int, ...], str]


def generate(
    graph: FlatGraph,
    lowerings: Mapping[str, Any],
    *,
    real: str,
    grad_keys: tuple[str, ...],
    differentiable_outputs: tuple[str, ...],
    inference: bool,
    threads: int = 1,
) -> Plan:
    """C source and runtime plan for ``graph``; ``threads``: the most threads a call
    will use (kernels that give each thread its own scratch get that many copies)."""
    graph = hoist_small(graph)
    em = Emitter(graph, lowerings, real)
    em.threads = threads
    outputs = {id(v) for v in graph.outputs.values()}
    runs = groups(em)
    seeds = tuple(
        k
        for k in differentiable_outputs
        if is_tensor_value(graph.outputs[k]) and em.is_real(graph.outputs[k])
    )
    functions = [_forward(em, runs, outputs, set(), "mc_forward")]
    names = ["mc_forward"]
    grads: dict[str, Result | None] = {}
    if not inference:
        # Gradients flow through ``real`` values only (not into ints, bools or a cast
        # to another float dtype), and through the lists no C computes.
        plan = backward_plan(
            graph, grad_keys, seeds, lambda v: id(v) in em.lists or em.is_real(v)
        )
        reads = _backward_reads(em, plan)
        em.memory.timeline = 1
        em.for_gradients = True
        functions.append(_forward(em, runs, outputs, reads, "mc_forward_train"))
        functions.append(_backward(em, plan, seeds))
        names += ["mc_forward_train", "mc_backward"]
        for key in grad_keys:
            value = graph.inputs[key]
            loc = em.grad.get(id(value))
            grads[key] = None if loc is None else (loc, shape_of(value), em.real_numpy)
    # Gradients of the keys are written straight into the arrays the caller gets:
    # their regions leave the workspace for pointers og[len(seeds):].
    returned: dict[int, int] = {}
    result_shapes: list[tuple[int, ...]] = []
    for key, grad in grads.items():
        if grad is None or grad[0].kind != "ws":
            continue
        region = grad[0].index
        if region not in returned:
            returned[region] = len(seeds) + len(result_shapes)
            result_shapes.append(grad[1])
            em.memory.detach(region)
        grads[key] = (Loc("og", returned[region]), *grad[1:])
    results: dict[str, Result | np.ndarray] = {}
    for key, value in graph.outputs.items():
        if value.is_constant:
            results[key] = np.asarray(
                value.constant, dtype=constant_dtype(value.constant, em.real_numpy)
            )
        else:
            results[key] = (em.loc[id(value)], shape_of(value), em.dtype(value))
    # What the runtime reads after a call lives to the end; then place the regions.
    for where in results.values():
        if isinstance(where, tuple) and where[0].kind == "ws":
            em.memory.keep(where[0].index)
    offsets, workspace = em.memory.layout()

    def place(where: Any) -> Any:
        if isinstance(where, tuple) and where[0].kind == "ws":
            return (Loc("ws", offsets[where[0].index]), *where[1:])
        return where

    slots = [
        *(f"io[{i}]: input {k}" for i, k in enumerate(em.input_keys)),
        *(
            f"io[{em.output_slots[id(v)]}]: output {k}"
            for k, v in graph.outputs.items()
            if id(v) in em.output_slots
        ),
        *(f"og[{i}]: gradient of output {k}" for i, k in enumerate(seeds)),
        *(
            f"og[{where[0].index}]: gradient of {k} (returned)"
            for k, where in grads.items()
            if where is not None and where[0].index >= len(seeds)
        ),
    ]
    header = [
        "/* Generated by mithril_c: one compiled model, element type "
        f"{em.real_numpy}. */",
        "/* io[]: inputs, outputs"
        + (f", then {len(em.constants)} constant(s)" if em.constants else "")
        + "; ws: workspace; og[]: output gradients. */",
        *(f"/* {comment_text(text)} */" for text in slots),
        '#include "mithril_c.h"',
        "",
        *em.statics,
    ]
    source = "\n".join(header) + "\n\n" + "\n\n".join(functions) + "\n"

    def pointer(match: re.Match[str]) -> str:
        region = int(match.group(1))
        if region in returned:
            return f"og[{returned[region]}]"
        return f"ws + {offsets[region]}"

    source = re.sub(f"ws \\+ {REGION}(\\d+){REGION}", pointer, source)
    produced = [
        v
        for v in {id(v): v for v in graph.outputs.values()}.values()
        if id(v) in em.output_slots
    ]
    return Plan(
        source=source,
        input_keys=em.input_keys,
        input_shapes=tuple(shape_of(v) for v in graph.inputs.values()),
        input_dtypes=tuple(em.dtype(v) for v in graph.inputs.values()),
        output_shapes=tuple(shape_of(v) for v in produced),
        output_dtypes=tuple(em.dtype(v) for v in produced),
        constants=em.constants,
        workspace=workspace,
        outputs={k: place(v) for k, v in results.items()},
        seeds=seeds,
        seed_shapes=tuple(shape_of(graph.outputs[k]) for k in seeds),
        grads={k: place(v) for k, v in grads.items()},
        result_shapes=tuple(result_shapes),
        functions=tuple(names),
        errors=tuple(em.errors),
        stateful=em.stateful,
    )


def _forward(
    em: Emitter,
    runs: dict[int, list[Node]],
    outputs: set[int],
    bwd_reads: set[int],
    name: str,
) -> str:
    em.begin()
    grouped = {id(n) for group in runs.values() for n in group}
    for node in em.graph.nodes:
        group = runs.get(id(node))
        if group is not None:
            em.memory.tick()
            members = {id(n) for n in group}
            store = {
                id(n.output)
                for n in group
                if id(n.output) in outputs
                or id(n.output) in bwd_reads
                or any(id(u) not in members for u in em.consumers.get(id(n.output), []))
            }
            emit_group(em, group, store)
            continue
        if id(node) in grouped or id(node.output) in em.virtual:
            continue
        em.memory.tick()
        em.line(f"/* {comment_text(f'{node.path}: {node.op}')} */")
        em.lowerings[node.op].forward(em, node)
    return em.end(f"MC_DISPATCH int {name}(real *const *io, real *ws)")


def _backward_reads(em: Emitter, plan: BackwardPlan) -> set[int]:
    """Values an element-wise VJP reads (stored by the training forward)."""
    reads: set[int] = set()
    for node in plan.active:
        if id(node.output) in em.virtual or not em.is_elementwise(node):
            continue
        reads |= backward_reads(em, node, plan.needs(node))
    return reads


def _backward(em: Emitter, plan: BackwardPlan, seeds: tuple[str, ...]) -> str:
    em.begin()
    em.requiring = plan.requires
    graph = em.graph
    consumed = {id(v) for n in plan.active for v in n.inputs}
    seeded = [id(graph.outputs[k]) for k in seeds]
    consumed.update(v for v in seeded if seeded.count(v) > 1)
    for slot, key in enumerate(seeds):
        value = graph.outputs[key]
        if id(value) not in plan.requires:
            continue
        if id(value) not in em.grad and id(value) not in consumed:
            em.grad[id(value)] = Loc("og", slot)
            continue
        em.memory.tick()
        pointer, accumulate = em.target(value)
        em.line(
            f"mc_copy({pointer}, og[{slot}], {em.numel(value)}, {int(accumulate)});"
        )
    for node in plan.active:
        if id(node.output) not in em.grad or id(node.output) in em.lists:
            continue
        needs = plan.needs(node)
        if not any(needs):
            continue
        em.memory.tick()
        em.line(f"/* {comment_text(f'{node.path}: {node.op}')} vjp */")
        if em.is_elementwise(node):
            emit_elementwise_vjp(em, node, needs)
        else:
            em.lowerings[node.op].vjp(em, node, needs)
    return em.end(
        "MC_DISPATCH int mc_backward(real *const *io, real *const *og, real *ws)"
    )
