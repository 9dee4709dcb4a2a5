"""Planning the C for a flat graph: what runs, in which dtype, and where it lives.

- :class:`Analysis`: the checks (what C can run), a concrete NumPy dtype per tensor
  (float tensors the model's ``real`` or their cast's float dtype, int tensors int64 or
  their cast's int dtype, bool tensors one byte), the io slots of outputs, and the
  values that never exist in C (virtual: lists, split chunks, transposes folded into a
  matrix product). Op-specific facts come from each lowering record's ``options`` (see
  :mod:`mithril_c.lowerings._types`); this module names no operator.
- :class:`Workspace`: the memory plan. Regions are asked for while code is generated,
  each use is recorded against the step it happens at, and :meth:`Workspace.layout`
  places regions whose lifetimes do not overlap at the same offsets.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mithril_core.errors import CompileError, MissingLoweringError
from mithril_core.logical import types as ty
from mithril_core.physical.flat import FlatGraph, Node, Value
from mithril_core.primitives.lowering import Lowering, as_lowering

# Workspace regions start on 64-byte boundaries (vector loads).
ALIGN_BYTES = 64
_MAX_DIMS = 32
C_TYPES = {
    "float32": "float",
    "float64": "double",
    "int8": "int8_t",
    "int16": "int16_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "uint8": "uint8_t",
    "bool": "unsigned char",
}
C_SIZES = {C_TYPES[name]: np.dtype(name).itemsize for name in C_TYPES} | {"uint64_t": 8}
_KIND_DTYPE = {ty.TENSOR_INT: "int64", ty.TENSOR_BOOL: "bool"}
_DTYPE_KIND = {
    "f": ty.TENSOR_FLOAT,
    "i": ty.TENSOR_INT,
    "u": ty.TENSOR_INT,
    "b": ty.TENSOR_BOOL,
}
_LETTERS = {ty.TENSOR_FLOAT: "f", ty.TENSOR_INT: "iu", ty.TENSOR_BOOL: "b"}
# Virtual kinds (``options["virtual"]``): values no C code computes.
LIST = "list"  # a list of tensors: readers with ``reads_lists`` read the parts
CHUNKS = "chunks"  # chunks of the first input: readers with ``reads_chunk`` slice it
TRANSPOSED = "transposed"  # a transpose read as a gemm flag (``gemm_fold``)


@dataclass(frozen=True)
class Loc:
    """Where an array lives: ``("io", slot)``, ``("ws", element offset)`` or
    ``("og", slot)``. (While code is generated, a ``"ws"`` index is a region of the
    :class:`Workspace`; :func:`generate` resolves it to an offset.)"""

    kind: str
    index: int


@dataclass
class Plan:
    """What the runtime needs besides the library: slots, workspace, results."""

    source: str
    input_keys: tuple[str, ...]
    input_shapes: tuple[tuple[int, ...], ...]
    input_dtypes: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    output_dtypes: tuple[str, ...]
    constants: list[np.ndarray]
    workspace: int
    outputs: dict[str, tuple[Loc, tuple[int, ...], str] | np.ndarray]
    seeds: tuple[str, ...]
    seed_shapes: tuple[tuple[int, ...], ...]
    grads: dict[str, tuple[Loc, tuple[int, ...], str] | None]
    functions: tuple[str, ...]
    errors: tuple[str, ...] = ()
    # og[len(seeds) + i]: the arrays gradients are written into, returned as they are.
    result_shapes: tuple[tuple[int, ...], ...] = ()
    # The workspace carries state from one call to the next (see Emitter.state).
    stateful: bool = False


def shape_of(value: Value) -> tuple[int, ...]:
    shape = value.shape()
    assert shape is not None and None not in shape
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


def is_tensor(value: Value) -> bool:
    return bool(value.types) and value.types <= ty.TENSORS


def is_scalar(constant: Any) -> bool:
    if isinstance(constant, bool | int | float):
        return True
    return isinstance(constant, np.ndarray | np.generic) and np.ndim(constant) == 0


def is_tensor_value(value: Value) -> bool:
    """A tensor, or a constant array (not a number, list, string or None)."""
    if value.is_constant:
        return not is_scalar(value.constant) and not isinstance(
            value.constant, list | tuple | str | type(None)
        )
    return is_tensor(value)


def constant_dtype(constant: Any, real: str) -> str:
    kind = np.asarray(constant).dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iu":
        return "int64"
    return real


def records(lowerings: Mapping[str, Any]) -> dict[str, Lowering]:
    """The table as :class:`Lowering` records (entries injected as tuples too)."""
    return {op: as_lowering(entry, where=f"c: {op}") for op, entry in lowerings.items()}


def _option(lowerings: Mapping[str, Any], op: str, name: str) -> Any:
    entry = lowerings.get(op)
    if entry is None:
        return None
    return (as_lowering(entry).options or {}).get(name)


def unresolved(
    graph: FlatGraph, lowerings: Mapping[str, Any] | None = None
) -> list[str]:
    """Keys whose shape or tensor dtype kind is not known: the C code for ``graph``
    can only be generated once they are (at the first evaluate)."""
    if lowerings is None:
        from mithril_core.plugins import get_registry

        lowerings = get_registry().lowerings("c")
    missing: dict[str, None] = {}
    for key, value in graph.inputs.items():
        if value.types & ty.TENSORS and not _resolved(value):
            missing[key] = None
    for node in graph.nodes:
        if _option(lowerings, node.op, "virtual") in (LIST, CHUNKS):
            continue
        for value in (*node.inputs, node.output):
            if value.is_constant or not value.types & ty.TENSORS:
                continue
            # A node output's kind follows from its inputs' (see _output_dtype).
            if not _resolved(value, kind=False):
                missing[value.name] = None
    return list(missing)


def _resolved(value: Value, *, kind: bool = True) -> bool:
    if kind and (len(value.types & ty.TENSORS) != 1 or not value.types <= ty.TENSORS):
        return False
    shape = value.shape()
    return shape is not None and None not in shape


class Analysis:
    """Checks, concrete dtypes, io slots and virtual values of one graph."""

    def __init__(
        self, graph: FlatGraph, lowerings: Mapping[str, Any], real: str
    ) -> None:
        self.graph = graph
        self.lowerings = records(lowerings)
        self.real = real
        self.real_numpy = "float32" if real == "float" else "float64"
        self.itemsize = 4 if real == "float" else 8
        self.input_keys = tuple(graph.inputs)
        self.consumers: dict[int, list[Node]] = {}
        # Values of virtual nodes: id -> (node, kind).
        self.virtual: dict[int, tuple[Node, str]] = {}
        self.lists: set[int] = set()
        self.dtypes: dict[int, str] = {}
        for node in graph.nodes:
            for value in node.inputs:
                self.consumers.setdefault(id(value), []).append(node)
            if self.options(node).get("virtual") in (LIST, CHUNKS):
                self.lists.add(id(node.output))
        self._check_supported()
        # Outputs are written straight into fresh arrays the caller gets: io slots
        # after the inputs; constant tensors come after them.
        produced = {id(n.output) for n in graph.nodes}
        self.output_slots: dict[int, int] = {}
        for value in graph.outputs.values():
            if id(value) in produced and id(value) not in self.output_slots:
                slot = len(self.input_keys) + len(self.output_slots)
                self.output_slots[id(value)] = slot
        self._classify()

    def options(self, node: Node) -> Mapping[str, Any]:
        """The C facts of ``node``'s op (its lowering record's ``options``)."""
        return self.lowerings[node.op].options or {}

    # -- checks ------------------------------------------------------------------------
    def _check_supported(self) -> None:
        unknown = unresolved(self.graph, self.lowerings)
        if unknown:
            msg = (
                "Backend 'c' needs static shapes and dtypes; these keys are not "
                f"known: {', '.join(unknown)}. Give them with compile(shapes=...)."
            )
            raise CompileError(msg)
        bad: dict[str, list[str]] = {}
        outputs = {id(v) for v in self.graph.outputs.values()}
        for key, value in self.graph.inputs.items():
            if not is_tensor(value):
                bad.setdefault(
                    f"input {key!r} of type {ty.format_type(value.types)} "
                    "(only tensors)",
                    [],
                )
                continue
            kind = next(iter(value.types))
            self.dtypes[id(value)] = _KIND_DTYPE.get(kind, self.real_numpy)
        for node in self.graph.nodes:
            reason = self._unsupported(node, outputs)
            if reason:
                bad.setdefault(reason, []).append(node.path)
        if bad:
            lines = [
                f"  {reason}" + (f" at {', '.join(paths[:5])}" if paths else "")
                for reason, paths in bad.items()
            ]
            msg = (
                f"Backend 'c' has no lowering for {len(bad)} use(s):\n"
                + "\n".join(lines)
                + "\nUse another backend (e.g. ml.NumpyBackend()) for such models."
            )
            raise MissingLoweringError(msg)

    def _unsupported(self, node: Node, outputs: set[int]) -> str | None:
        entry = self.lowerings.get(node.op)
        if entry is None:
            return f"primitive {node.op!r}"
        virtual = self.options(node).get("virtual")
        users = self.consumers.get(id(node.output), [])
        if virtual == LIST:
            readers = all(self.options(u).get("reads_lists") for u in users)
            if id(node.output) in outputs or not readers:
                return f"primitive {node.op!r} (lists of tensors only feed concat)"
            if not all(is_tensor_value(v) for v in node.inputs):
                return f"primitive {node.op!r} of non-tensors"
            parts = [self.dtype(v) for v in node.inputs]
            self.dtypes[id(node.output)] = np.result_type(*parts).name
            return None
        if virtual == CHUNKS:
            if id(node.output) in outputs or not all(
                (self.options(u).get("reads_chunk") or (lambda _: False))(u)
                for u in users
            ):
                return (
                    f"primitive {node.op!r} (chunks are only read by integer indexing)"
                )
            self.dtypes[id(node.output)] = self.dtype(node.inputs[0])
            return None
        if not node.output.types <= ty.TENSORS:
            return (
                f"primitive {node.op!r} with a {ty.format_type(node.output.types)} "
                "output (only tensors)"
            )
        for value in node.inputs:
            if value.is_constant or id(value) in self.lists:
                continue
            if not value.types & ty.TENSORS:
                return f"primitive {node.op!r} with a non-constant scalar input"
            if len(self.shape(value)) > _MAX_DIMS:
                return f"primitive {node.op!r} on more than {_MAX_DIMS} dims"
        dtype, what = self._output_dtype(node)
        if dtype is None:
            return f"primitive {node.op!r} to {what}"
        self.dtypes[id(node.output)] = dtype
        if self.is_elementwise(node):
            return None
        # Other kernels compute in ``real``; some declare which other inputs they take.
        allowed = getattr(entry.forward, "dtypes", None)
        values = [(j, v) for j, v in enumerate(node.inputs) if is_tensor_value(v)]
        values.append((-1, node.output))
        for j, value in values:
            dtype = self.dtype(value)
            if dtype == self.real_numpy:
                continue
            if allowed == "any" or (isinstance(allowed, dict) and j in allowed):
                kinds = "any" if allowed == "any" else allowed[j]
                if kinds == "any" or np.dtype(dtype).kind in kinds:
                    continue
            what = "output" if j < 0 else f"input {j}"
            return f"primitive {node.op!r} with a {dtype} {what}"
        return None

    def _output_dtype(self, node: Node) -> tuple[str | None, Any]:
        """The output's dtype, or ``None`` and what the output would have been."""
        kinds = node.output.types & ty.TENSORS
        if not kinds:
            return None, node.output.types
        if len(kinds) > 1:
            # A type rule that stopped early: the kind of the first tensor input if
            # the output may have it (shape ops, ...), else float, int, bool.
            first = next(
                (
                    self.dtype(v)
                    for v in node.inputs
                    if is_tensor_value(v) or id(v) in self.lists
                ),
                None,
            )
            order = [ty.TENSOR_FLOAT, ty.TENSOR_INT, ty.TENSOR_BOOL]
            if first is not None:
                order.insert(0, _DTYPE_KIND[np.dtype(first).kind])
            kinds = frozenset({next(k for k in order if k in kinds)})
        kind = next(iter(kinds))
        letter = _LETTERS[kind]
        options = self.options(node)
        named = options.get("output_dtype")
        if named is not None:  # the op names its output dtype (a cast)
            named = named(node)
            if named not in C_TYPES or np.dtype(named).kind not in letter:
                return None, named  # float16, bfloat16: no C type here
            return named, None
        if kind == ty.TENSOR_INT and options.get("int_output"):
            return options["int_output"], None
        same = [
            self.dtype(v)
            for v in node.inputs
            if (is_tensor_value(v) or id(v) in self.lists)
            and np.dtype(self.dtype(v)).kind in letter
        ]
        if same:
            return np.result_type(*same).name, None
        default = {ty.TENSOR_FLOAT: self.real_numpy, ty.TENSOR_INT: "int64"}
        return default.get(kind, "bool"), None

    def _classify(self) -> None:
        outputs = {id(v) for v in self.graph.outputs.values()}
        for node in self.graph.nodes:
            users = self.consumers.get(id(node.output), [])
            options = self.options(node)
            virtual = options.get("virtual")
            if virtual in (LIST, CHUNKS):
                self.virtual[id(node.output)] = (node, virtual)
                continue
            fold = options.get("gemm_fold")
            if (
                fold is not None
                and id(node.output) not in outputs
                and users
                and all(self.options(u).get("reads_transposed") for u in users)
                and fold(node)
            ):
                self.virtual[id(node.output)] = (node, TRANSPOSED)

    # -- dtypes ------------------------------------------------------------------------
    def dtype(self, value: Value) -> str:
        """NumPy dtype name of a tensor value."""
        found = self.dtypes.get(id(value))
        if found is not None:
            return found
        if value.is_constant:
            found = constant_dtype(value.constant, self.real_numpy)
            self.dtypes[id(value)] = found
            return found
        msg = f"internal: value {value.name} has no dtype"
        raise CompileError(msg)

    def ctype(self, value: Value | str) -> str:
        """C element type of a tensor value (or of a dtype name); ``real`` for the
        model's float type."""
        dtype = value if isinstance(value, str) else self.dtype(value)
        return "real" if dtype == self.real_numpy else C_TYPES[dtype]

    def is_real(self, value: Value) -> bool:
        return is_tensor_value(value) and self.dtype(value) == self.real_numpy

    def is_elementwise(self, node: Node) -> bool:
        return isinstance(self.lowerings[node.op].forward, str)

    def shape(self, value: Value) -> tuple[int, ...]:
        """Static shape of a tensor value."""
        return shape_of(value)

    def numel(self, value: Value) -> int:
        return math.prod(shape_of(value))

    # -- virtual values ----------------------------------------------------------------
    def folded(self, value: Value) -> Node | None:
        """The node whose output ``value`` is, when no C computes it (a list, a
        split's chunks, a transpose folded into a gemm flag); else ``None``."""
        found = self.virtual.get(id(value))
        return None if found is None else found[0]

    def transposed(self, value: Value) -> Value | None:
        """The stored source (the first input) if ``value`` is a transpose folded into
        a gemm flag."""
        found = self.virtual.get(id(value))
        if found is not None and found[1] == TRANSPOSED:
            return found[0].inputs[0]
        return None

    def parts(self, value: Value) -> list[Value]:
        """The tensors of a list (a virtual node's inputs)."""
        found = self.virtual.get(id(value))
        if found is not None and found[1] == LIST:
            return list(found[0].inputs)
        msg = f"internal: {value.name} is not a list of tensors"
        raise CompileError(msg)


class Workspace:
    """The workspace plan: regions, their lifetimes and their offsets.

    A region is asked for with :meth:`new` and every read or write of it is recorded
    with :meth:`use` at the current step of the current timeline. Timeline 0 is
    ``mc_forward``; timeline 1 is ``mc_forward_train`` followed by ``mc_backward``.
    Two regions may share memory when their lifetimes (first to last use, per
    timeline) are disjoint in every timeline; :meth:`keep` makes a region live to the
    end (what the runtime reads after the call), :meth:`pin` live always (state
    carried between calls), :meth:`detach` takes it out of the workspace (the caller
    gives its memory: a gradient written straight into the array returned).
    """

    def __init__(self, itemsize: int) -> None:
        self.itemsize = itemsize
        self.blocks: list[int] = []  # size in ALIGN_BYTES blocks
        self.spans: list[dict[int, list[int]]] = []
        self.pinned: set[int] = set()
        self.detached: set[int] = set()
        self.timeline = 0
        self.step = 0

    def new(self, nbytes: int) -> int:
        self.blocks.append(-(-max(nbytes, 1) // ALIGN_BYTES))
        self.spans.append({})
        return len(self.blocks) - 1

    def tick(self) -> None:
        self.step += 1

    def use(self, region: int) -> None:
        span = self.spans[region].get(self.timeline)
        if span is None:
            self.spans[region][self.timeline] = [self.step, self.step]
        else:
            span[1] = max(span[1], self.step)

    def keep(self, region: int) -> None:
        for span in self.spans[region].values():
            span[1] = math.inf  # type: ignore[call-overload]

    def pin(self, region: int) -> None:
        self.pinned.add(region)

    def detach(self, region: int) -> None:
        self.detached.add(region)

    def layout(self) -> tuple[list[int], int]:
        """Element offsets of the regions and the workspace size in elements (a
        detached region has offset -1)."""
        n = len(self.blocks)
        if n == 0:
            return [], 0
        timelines = sorted({t for spans in self.spans for t in spans})
        first = np.full((len(timelines), n), np.inf)
        last = np.full((len(timelines), n), -np.inf)
        for r, spans in enumerate(self.spans):
            for t, (a, b) in spans.items():
                first[timelines.index(t), r] = a
                last[timelines.index(t), r] = b
        pinned = np.zeros(n, dtype=bool)
        pinned[list(self.pinned)] = True
        blocks = np.array(self.blocks)
        start = np.zeros(n, dtype=np.int64)
        placed = np.zeros(n, dtype=bool)
        blocks[list(self.detached)] = 0
        start[list(self.detached)] = -1
        # Largest first, then earliest: big activations pack, small ones fill gaps.
        order = sorted(
            (r for r in range(n) if r not in self.detached),
            key=lambda r: (-self.blocks[r], first[:, r].min()),
        )
        for r in order:
            clash = pinned | pinned[r]
            for t in range(len(timelines)):
                clash = clash | ((first[t] <= last[t, r]) & (first[t, r] <= last[t]))
            others = np.flatnonzero(clash & placed)
            offset = 0
            for o in others[np.argsort(start[others])]:
                if start[o] >= offset + blocks[r]:
                    break
                offset = max(offset, int(start[o] + blocks[o]))
            start[r] = offset
            placed[r] = True
        per_block = ALIGN_BYTES // self.itemsize
        total = max(int((start + blocks).max()), 0) * per_block
        return [int(s) * per_block if s >= 0 else -1 for s in start], total
