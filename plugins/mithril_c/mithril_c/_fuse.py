"""Loops: nests over strided arrays (split over OpenMP teams when worth it), and the
fusion of element-wise runs of one shape into one loop, forward and VJP.

Element-wise lowerings are C expression templates (see
:mod:`mithril_c.lowerings._types`); values used only inside a fused loop stay in
registers (``t0``, ``t1`` ...).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mithril_c._emit import comment_text
from mithril_c._plan import is_scalar, is_tensor_value, shape_of
from mithril_core.physical.flat import FlatGraph, Node, Value
from mithril_core.physical.ir import IMPURE

if TYPE_CHECKING:
    from mithril_c._emit import Emitter

Accesses = list[tuple[str, tuple[int, ...]]]

# Splits a loop over the calling thread's team (mc_team in csrc/mithril_c.h).
PARALLEL_FOR = (
    "#pragma omp parallel for if (mc_t > 1) num_threads(mc_t) schedule(static)"
)
# Loops below this much work get no OpenMP code at all (mc_team would say 1 anyway):
# tiny models keep their per-call cost.
GRAIN = 2 * 32768


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides = []
    step = 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return tuple(reversed(strides))


def broadcast_strides(shape: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    """Strides reading an array of ``shape`` broadcast to ``target`` (0: repeated)."""
    lead = len(target) - len(shape)
    own = contiguous_strides(shape)
    return tuple(
        0 if d < lead or shape[d - lead] != size or size == 1 else own[d - lead]
        for d, size in enumerate(target)
    )


def loop_nest(
    shape: Sequence[int],
    strides: Sequence[Sequence[int]],
    body: Callable[[list[str]], list[str]],
    var: str = "i",
    *,
    writes: Sequence[int] | None = None,
    work: int | None = None,
) -> list[str]:
    """Nested loops over ``shape``; ``body`` gets one index expression per stride set.
    Size-1 dims are dropped and dims every access walks contiguously are merged, so a
    same-shape element-wise loop is one flat loop.

    ``writes`` (positions of the stride sets the body writes) allows splitting the
    outermost loop over an OpenMP team, when ``work`` (element operations, default the
    element count) is worth it and no write target repeats along that loop (a
    broadcast gradient summed over it stays serial)."""
    if math.prod(shape) == 0:
        return []
    merged: list[tuple[int, list[int]]] = []
    for d, size in enumerate(shape):
        if size == 1:
            continue
        steps = [s[d] for s in strides]
        if merged:
            outer, outer_steps = merged[-1]
            if all(o == s * size for o, s in zip(outer_steps, steps, strict=True)):
                merged[-1] = (outer * size, steps)
                continue
        merged.append((size, steps))
    names = [f"{var}{k}" for k in range(len(merged))]
    index = []
    for a in range(len(strides)):
        terms = []
        for name, (_, steps) in zip(names, merged, strict=True):
            step = steps[a]
            if step == 1:
                terms.append(name)
            elif step:
                terms.append(f"{name} * {step}")
        index.append(" + ".join(terms) if terms else "0")
    lines: list[str] = []
    indent = ""
    team = _team(merged, writes, math.prod(shape) if work is None else work)
    if team:
        lines += ["{", f"    int mc_t = mc_team({team});", PARALLEL_FOR]
    for name, (size, _) in zip(names, merged, strict=True):
        lines.append(f"{indent}for (long {name} = 0; {name} < {size}; ++{name}) {{")
        indent += "    "
    if not merged:
        lines.append("{")
        indent = "    "
    lines += [indent + line for line in body(index)]
    for depth in range(max(len(merged), 1) - 1, -1, -1):
        lines.append("    " * depth + "}")
    if team:
        lines.append("}")
    return lines


def sums_inner(shape: Sequence[int], out_strides: Sequence[int]) -> bool:
    """Whether :func:`reduction_nest` suits a sum into an array with ``out_strides``
    over ``shape``: the innermost non-trivial axis is summed over (a batch norm's
    [N, C, H, W] -> [C]); when it is kept, the plain nest vectorises along it."""
    axes = [d for d, size in enumerate(shape) if size > 1]
    return bool(axes) and out_strides[axes[-1]] == 0


def reduction_nest(
    shape: Sequence[int],
    accesses: Accesses,
    term: str,
    out: str,
    out_strides: Sequence[int],
    mode: str,
) -> list[str]:
    """``out[o] (mode) sum of term`` over the axes where ``out_strides`` is 0.

    Kept axes are the outer loops (the outermost split over the team: each output is
    one thread's), the summed ones inner, added up in a double that ``omp simd``
    may vectorise (a serial ``out[o] +=`` chain runs one add per add latency).
    ``term`` reads ``accesses`` through NUL-delimited placeholders (as
    :class:`_Loop`); ``mode`` is ``=`` or ``+=``."""
    if math.prod(shape) == 0:
        return []
    kept = [d for d, size in enumerate(shape) if size > 1 and out_strides[d]]
    summed = [d for d, size in enumerate(shape) if size > 1 and not out_strides[d]]

    def index(strides: Sequence[int]) -> str:
        terms = [
            f"i{d}" if strides[d] == 1 else f"i{d} * {strides[d]}"
            for d in range(len(shape))
            if shape[d] > 1 and strides[d]
        ]
        return " + ".join(terms) or "0"

    pieces = term.split("\x00")
    for k in range(1, len(pieces), 2):
        pointer, strides = accesses[int(pieces[k])]
        pieces[k] = f"{pointer}[{index(strides)}]"
    lines: list[str] = []
    work = math.prod(shape)
    team = kept and work >= GRAIN and shape[kept[0]] > 1
    if team:
        lines += ["{", f"    int mc_t = mc_team({work});", PARALLEL_FOR]
    indent = ""
    for d in kept:
        lines.append(f"{indent}for (long i{d} = 0; i{d} < {shape[d]}; ++i{d}) {{")
        indent += "    "
    lines.append(f"{indent}double s = 0;")
    opened = indent
    for n, d in enumerate(summed):
        if n == len(summed) - 1:
            lines.append(f"{indent}#pragma omp simd reduction(+:s)")
        lines.append(f"{indent}for (long i{d} = 0; i{d} < {shape[d]}; ++i{d}) {{")
        indent += "    "
    lines.append(f"{indent}s += {''.join(pieces)};")
    for _ in summed:
        indent = indent[:-4]
        lines.append(f"{indent}}}")
    lines.append(f"{opened}{out}[{index(out_strides)}] {mode} (real)s;")
    for _ in kept:
        indent = indent[:-4]
        lines.append(f"{indent}}}")
    if team:
        lines.append("}")
    return lines


_MAX_ALIAS_CHECKS = 8


def strides_of(merged: list[tuple[int, list[int]]]) -> list[int]:
    """One entry per array the loop reads or writes."""
    return merged[0][1]


def _team(
    merged: list[tuple[int, list[int]]], writes: Sequence[int] | None, work: int
) -> int:
    """The work to give mc_team for a split outermost loop, 0 for none."""
    if writes is None or not merged or work < GRAIN or merged[0][0] < 2:
        return 0
    # OpenMP moves the loop into an outlined function that sees its arrays as
    # unrelated pointers: GCC vectorises it only behind runtime overlap checks, one
    # per (write, other array) pair, and gives up past a handful. A loop with more
    # stays serial in its own function, where the arrays are known offsets of one
    # workspace (a fused 20-op chain's training forward, 9 writes: 3 ms serial,
    # 30 ms split).
    if len(writes) * (len(strides_of(merged)) - 1) > _MAX_ALIAS_CHECKS:
        return 0
    steps = merged[0][1]
    return work if all(steps[w] != 0 for w in writes) else 0


def fields(template: str) -> set[str]:
    """The ``{...}`` fields of a template."""
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


# Computations on inputs alone with at most this many elements are scheduled first.
SMALL = 4096


def _numel(value: Value) -> int:
    """Elements of ``value`` (-1 when its shape is not known: never small)."""
    if not is_tensor_value(value):
        return 1
    shape = value.shape()
    if shape is None or None in shape:
        return -1
    return math.prod(int(d) for d in shape)  # type: ignore[misc, arg-type]


def hoist_small(graph: FlatGraph) -> FlatGraph:
    """``graph`` with the small computations on inputs alone (at most :data:`SMALL`
    elements each, and a sixteenth of the largest value: a batch norm's
    ``sqrt(running_var + eps)`` in inference) moved to the front, so that they no
    longer split the run of element-wise nodes over the activations into separate
    passes over memory. Their inputs live through the call anyway; random draws
    keep their place."""
    largest = max((_numel(n.output) for n in graph.nodes), default=0)
    limit = min(SMALL, largest // 16)
    ready = {id(v) for v in graph.inputs.values()}
    front: list[Node] = []
    rest: list[Node] = []
    for node in graph.nodes:
        if (
            IMPURE not in node.facts
            and 0 <= _numel(node.output) <= limit
            and all(v.is_constant or id(v) in ready for v in node.inputs)
        ):
            front.append(node)
            ready.add(id(node.output))
        else:
            rest.append(node)
    return graph.evolve(nodes=[*front, *rest])


def groups(em: Emitter) -> dict[int, list[Node]]:
    """Runs of consecutive same-shape element-wise nodes, keyed by their first node."""
    found: dict[int, list[Node]] = {}
    current: list[Node] | None = None
    for node in em.graph.nodes:
        if id(node.output) in em.virtual:
            continue
        if em.is_elementwise(node):
            shape = shape_of(node.output)
            if current is not None and shape_of(current[0].output) == shape:
                current.append(node)
                continue
            current = [node]
            found[id(node)] = current
        else:
            current = None
    return found


def _template(em: Emitter, node: Node) -> str:
    """The forward template for ``node``'s output kind."""
    kind = np.dtype(em.dtype(node.output)).kind
    key = {"b": "bool", "i": "int", "u": "int"}.get(kind, "float")
    template: str = em.options(node).get(key, em.lowerings[node.op].forward)
    return template


def _operand_ctypes(em: Emitter, node: Node) -> list[str | None]:
    """The C type each operand is converted to (``None``: read as stored)."""
    raw = set(em.options(node).get("raw", ()))
    out = em.dtype(node.output)
    if np.dtype(out).kind != "b":
        return [None if j in raw else em.ctype(out) for j in range(len(node.inputs))]
    # Comparisons: NumPy's promotion of the operands (Python scalars are weak).
    tensors = [
        em.dtype(v)
        for j, v in enumerate(node.inputs)
        if j not in raw and is_tensor_value(v)
    ]
    scalars = [
        v.constant
        for j, v in enumerate(node.inputs)
        if j not in raw and not is_tensor_value(v)
    ]
    floats = [d for d in tensors if np.dtype(d).kind == "f"]
    if floats:
        common: str | None = np.result_type(*floats).name
    elif any(isinstance(s, float) for s in scalars):
        common = em.real_numpy
    elif any(np.dtype(d).kind in "iu" for d in tensors):
        common = np.result_type(*(d for d in tensors if np.dtype(d).kind in "iu")).name
    else:
        common = None
    ctype = None if common is None else em.ctype(common)
    return [None if j in raw else ctype for j in range(len(node.inputs))]


class _Loop:
    """The operands of one fused loop: array accesses and register temporaries."""

    def __init__(self, em: Emitter, shape: tuple[int, ...]) -> None:
        self.em = em
        self.shape = shape
        self.temps: dict[int, tuple[str, str]] = {}
        self.accesses: Accesses = []
        self.seen: dict[int, int] = {}

    def operand(self, value: Value, want: str | None = None) -> str:
        em = self.em
        if id(value) in self.temps:
            text, ctype = self.temps[id(value)]
        elif value.is_constant and is_scalar(value.constant):
            return em.lit(value.constant, want)
        elif value.is_constant and not is_tensor_value(value):
            return ""  # a dtype name, an axis ...: not an operand of the C expression
        else:
            if id(value) not in self.seen:
                self.seen[id(value)] = len(self.accesses)
                strides = broadcast_strides(shape_of(value), self.shape)
                self.accesses.append((em.ptr(value), strides))
            text, ctype = f"\x00{self.seen[id(value)]}\x00", em.ctype(value)
        if want is None or want == ctype:
            return text
        return f"(({want}){text})"

    def access(self, pointer: str, strides: tuple[int, ...]) -> int:
        self.accesses.append((pointer, strides))
        return len(self.accesses) - 1

    def emit(self, body: list[str], writes: Sequence[int]) -> None:
        accesses = self.accesses

        def fill(index: list[str]) -> list[str]:
            result = []
            for text in body:
                pieces = text.split("\x00")
                for k in range(1, len(pieces), 2):
                    pointer = accesses[int(pieces[k])][0]
                    pieces[k] = f"{pointer}[{index[int(pieces[k])]}]"
                result.append("".join(pieces))
            return result

        strides = [s for _, s in accesses]
        work = math.prod(self.shape) * max(len(body), 1)
        self.em.line(*loop_nest(self.shape, strides, fill, writes=writes, work=work))


def emit_group(em: Emitter, nodes: list[Node], store: set[int]) -> None:
    """One loop computing a run of same-shape element-wise nodes; ``store``: ids of
    the outputs written to memory (the others stay in registers)."""
    loop = _Loop(em, shape_of(nodes[0].output))
    body = []
    writes = []
    for k, node in enumerate(nodes):
        template = _template(em, node)
        wants = _operand_ctypes(em, node)
        args = [
            loop.operand(v, want) for v, want in zip(node.inputs, wants, strict=True)
        ]
        ctype = em.ctype(node.output)
        body.append(f"{ctype} t{k} = {template.format(*args)};")
        loop.temps[id(node.output)] = (f"t{k}", ctype)
        if id(node.output) in store:
            writes.append((em.out(node), f"t{k}"))
    written = []
    for pointer, temp in writes:
        index = loop.access(pointer, contiguous_strides(loop.shape))
        written.append(index)
        body.append(f"\x00{index}\x00 = {temp};")
    ops = ", ".join(n.op for n in nodes)
    em.line(f"/* {comment_text(ops)} */")
    loop.emit(body, written)


def backward_reads(em: Emitter, node: Node, needs: tuple[bool, ...]) -> set[int]:
    """Ids of the values the VJP template of element-wise ``node`` reads."""
    vjps = em.lowerings[node.op].vjp
    reads: set[int] = set()
    for j, needed in enumerate(needs):
        if not needed or vjps[j] is None:
            continue
        found = fields(vjps[j])
        if "y" in found:
            reads.add(id(node.output))
        reads.update(id(node.inputs[int(f)]) for f in found if f.isdigit())
    return reads


def emit_elementwise_vjp(em: Emitter, node: Node, needs: tuple[bool, ...]) -> None:
    """One loop writing (or adding) the gradients of the needed inputs."""
    vjps: Any = em.lowerings[node.op].vjp
    shape = shape_of(node.output)
    targets = [
        (j, v) for j, v in enumerate(node.inputs) if needs[j] and vjps[j] is not None
    ]
    if not targets:
        return
    loop = _Loop(em, shape)
    used = set().union(*(fields(vjps[j] or "") for j, _ in targets))
    wants = _operand_ctypes(em, node)
    args = [
        loop.operand(v, wants[j]) if str(j) in used else ""
        for j, v in enumerate(node.inputs)
    ]
    named = {
        "g": f"\x00{loop.access(em.gout(node), contiguous_strides(shape))}\x00",
        "y": "",
    }
    if "y" in used:
        named["y"] = loop.operand(node.output)
    body = []
    written = []
    sums: list[tuple[str, str, tuple[int, ...], str]] = []
    mode: dict[int, str] = {}
    same = math.prod(shape)
    for j, value in targets:
        if vjps[j] == "{g}" and id(value) not in em.grad and em.numel(value) == same:
            # d(out)/d(input) is the identity: share the output gradient.
            em.grad[id(value)] = em.grad[id(node.output)]
            continue
        reduce = em.numel(value) != same
        pointer, accumulate = em.target(value)
        strides = broadcast_strides(shape_of(value), shape)
        expr = vjps[j].format(*args, **named)
        if id(value) not in mode:
            mode[id(value)] = "+=" if accumulate else "="
        if reduce and sums_inner(shape, strides):
            # A broadcast input's gradient sums over the axes it was repeated along.
            sums.append((expr, pointer, strides, mode[id(value)]))
            mode[id(value)] = "+="
            continue
        if reduce and mode[id(value)] == "=":
            em.line(f"mc_fill({pointer}, {em.numel(value)}, 0);")
            mode[id(value)] = "+="
        index = loop.access(pointer, strides)
        written.append(index)
        body.append(f"\x00{index}\x00 {mode[id(value)]} {expr};")
        mode[id(value)] = "+="
    em.line(f"/* {comment_text(node.op)} vjp */")
    if body:
        loop.emit(body, written)
    for expr, pointer, strides, how in sums:
        em.line(*reduction_nest(shape, loop.accesses, expr, pointer, strides, how))
