"""Generate one C source file for a flat graph: forward, forward for training, backward.

Storage: every tensor lives in one of ``io[]`` (inputs, outputs, then constant
tensors), ``ws`` (one workspace per compiled model, allocated once) or ``og[]``
(output gradients). Every tensor has one NumPy dtype: float tensors the model's
``real`` (or the dtype a ``cast`` names), int tensors int64 (or their cast's int dtype),
bool tensors one byte per element. Element-wise runs of one shape become one loop;
values used only inside such a loop stay in registers (the training forward also
stores what the backward reads). Reshapes alias their input; a transpose of the last
two axes read only by matrix products becomes a gemm flag. The backward mirrors the
Python codegen: only needed gradients (of ``real`` values), the first contribution
assigned and later ones added. Every generated function returns 0, or the 1-based
index of a runtime error (an index out of range) in :attr:`Plan.errors`.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mithril_core.errors import CompileError, MissingLoweringError
from mithril_core.logical import types as ty
from mithril_core.physical.flat import FlatGraph, Node, Value

# Workspace regions start on 64-byte boundaries (vector loads).
_ALIGN_BYTES = 64
_MAX_DIMS = 32
_ALIASING = frozenset({"reshape", "flatten", "squeeze", "unsqueeze"})
_LISTS = frozenset({"to_list", "to_tuple"})
# Lists of tensors never exist in C: concat reads the parts, indexing a split reads
# the chunk straight from the split input.
_VIRTUAL = _LISTS | {"split"}
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
_KIND_DTYPE = {ty.TENSOR_INT: "int64", ty.TENSOR_BOOL: "bool"}
_DTYPE_KIND = {
    "f": ty.TENSOR_FLOAT,
    "i": ty.TENSOR_INT,
    "u": ty.TENSOR_INT,
    "b": ty.TENSOR_BOOL,
}


@dataclass(frozen=True)
class Loc:
    """Where an array lives: ``("io", slot)``, ``("ws", element offset)`` or
    ``("og", slot)``."""

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
    # The workspace carries state from one call to the next (see Emitter.state).
    stateful: bool = False


@dataclass
class _Function:
    decls: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def shape_of(value: Value) -> tuple[int, ...]:
    shape = value.shape()
    assert shape is not None and None not in shape
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


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


# Splits a loop over the calling thread's team (mc_team in csrc/mithril_c.h).
PARALLEL_FOR = (
    "#pragma omp parallel for if (mc_t > 1) num_threads(mc_t) schedule(static)"
)
# Loops below this much work get no OpenMP code at all (mc_team would say 1 anyway):
# tiny models keep their per-call cost.
GRAIN = 2 * 32768


def _team(
    merged: list[tuple[int, list[int]]], writes: Sequence[int] | None, work: int
) -> int:
    """The work to give mc_team for a split outermost loop, 0 for none."""
    if writes is None or not merged or work < GRAIN or merged[0][0] < 2:
        return 0
    steps = merged[0][1]
    return work if all(steps[w] != 0 for w in writes) else 0


_IDENTIFIER_CHARS = frozenset(string.ascii_letters + string.digits + "_")
# Comment text: characters that cannot end a comment, continue a line, form a trigraph
# or escape anything. User names (keys, model paths) reach the C source only as
# comments built from these or as identifiers built from _IDENTIFIER_CHARS.
_COMMENT_CHARS = frozenset(string.ascii_letters + string.digits + "_.,:;=()[]<>#+- ")
_MAX_COMMENT = 120
_MAX_IDENTIFIER = 48


def comment_text(text: str) -> str:
    """``text`` made safe inside a C ``/* */`` comment: characters other than
    letters, digits and ``_.,:;=()[]<>#+-`` and space become ``_``, and long text is
    shortened. No ``*/``, newline, backslash, quote or ``??`` trigraph survives."""
    safe = "".join(c if c in _COMMENT_CHARS else "_" for c in text)
    if len(safe) > _MAX_COMMENT:
        safe = safe[: _MAX_COMMENT - 3] + "..."
    return safe


def c_string(text: str) -> str:
    """A C string literal holding ``text`` (UTF-8); every byte outside printable
    ASCII, and ``"``, ``\\`` and ``?``, is an octal escape."""
    pieces = []
    for byte in text.encode("utf-8", errors="surrogateescape"):
        char = chr(byte)
        if 32 <= byte < 127 and char not in '"\\?':
            pieces.append(char)
        else:
            pieces.append(f"\\{byte:03o}")
    return '"' + "".join(pieces) + '"'


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}


def _is_tensor(value: Value) -> bool:
    return bool(value.types) and value.types <= ty.TENSORS


def _scalar(constant: Any) -> bool:
    if isinstance(constant, bool | int | float):
        return True
    return isinstance(constant, np.ndarray | np.generic) and np.ndim(constant) == 0


def _constant_dtype(constant: Any, real: str) -> str:
    kind = np.asarray(constant).dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iu":
        return "int64"
    return real


def unresolved(graph: FlatGraph) -> list[str]:
    """Keys whose shape or tensor dtype kind is not known: the C code for ``graph``
    can only be generated once they are (at the first evaluate)."""
    missing: dict[str, None] = {}
    for key, value in graph.inputs.items():
        if value.types & ty.TENSORS and not _resolved(value):
            missing[key] = None
    for node in graph.nodes:
        if node.op in _VIRTUAL:
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


class Emitter:
    """Code generator state, and the API lowerings emit C through.

    Forward emitters use ``shape``, ``dtype``, ``ctype``, ``ptr``, ``out``, ``alias``,
    ``line``, ``lit``, ``longs``, ``temp``, ``state``, ``fill``,
    ``gather``/``scatter`` and ``check``; VJP emitters also ``gout``, ``target`` and
    ``grad_alias``.
    ``transposed(value)`` gives the stored source of a transpose that is folded into a
    matrix product.
    """

    def __init__(self, graph: FlatGraph, lowerings: dict[str, Any], real: str) -> None:
        self.graph = graph
        self.lowerings = lowerings
        self.real = real
        self.real_numpy = "float32" if real == "float" else "float64"
        self.itemsize = 4 if real == "float" else 8
        self.loc: dict[int, Loc] = {}
        self.cname: dict[int, str] = {}
        self.names_used: set[str] = set()
        self.statics: list[str] = []
        self._statics_by_text: dict[str, str] = {}
        self.workspace = 0
        self.temps: dict[tuple[int, str], int] = {}
        self.constants: list[np.ndarray] = []
        self.consumers: dict[int, list[Node]] = {}
        self.virtual: dict[int, Node] = {}
        self.fn = _Function()
        self.grad: dict[int, Loc] = {}
        self.requiring: set[int] = set()
        self.input_keys = tuple(graph.inputs)
        self.lists: set[int] = set()
        self.dtypes: dict[int, str] = {}
        self.errors: list[str] = []
        self.stateful = False
        self.threads = 1
        for node in graph.nodes:
            for value in node.inputs:
                self.consumers.setdefault(id(value), []).append(node)
            if node.op in _VIRTUAL:
                self.lists.add(id(node.output))
        self._check_supported()
        self._place_inputs()
        # Outputs are written straight into fresh arrays the caller gets: io slots
        # after the inputs; constant tensors come after them.
        produced = {id(n.output) for n in graph.nodes}
        self.output_slots: dict[int, int] = {}
        for value in graph.outputs.values():
            if id(value) in produced and id(value) not in self.output_slots:
                slot = len(self.input_keys) + len(self.output_slots)
                self.output_slots[id(value)] = slot
        self._classify()

    # -- checks, dtypes and layout -----------------------------------------------------
    def _check_supported(self) -> None:
        unknown = unresolved(self.graph)
        if unknown:
            msg = (
                "Backend 'c' needs static shapes and dtypes; these keys are not "
                f"known: {', '.join(unknown)}. Give them with compile(shapes=...)."
            )
            raise CompileError(msg)
        bad: dict[str, list[str]] = {}
        outputs = {id(v) for v in self.graph.outputs.values()}
        for key, value in self.graph.inputs.items():
            if not _is_tensor(value):
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
        if node.op in _LISTS:
            users = self.consumers.get(id(node.output), [])
            if id(node.output) in outputs or any(u.op != "concat" for u in users):
                return f"primitive {node.op!r} (lists of tensors only feed concat)"
            if not all(_is_tensor_value(v) for v in node.inputs):
                return f"primitive {node.op!r} of non-tensors"
            parts = [self.dtype(v) for v in node.inputs]
            self.dtypes[id(node.output)] = np.result_type(*parts).name
            return None
        if node.op == "split":
            users = self.consumers.get(id(node.output), [])
            if id(node.output) in outputs or not all(
                u.op == "indexer" and isinstance(u.inputs[1].constant, int)
                for u in users
            ):
                return "primitive 'split' (chunks are only read by integer indexing)"
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
        dtype = self._output_dtype(node)
        if dtype is None:
            what = node.inputs[1].constant if node.op == "cast" else node.output.types
            return f"primitive {node.op!r} to {what}"
        self.dtypes[id(node.output)] = dtype
        if self.is_elementwise(node):
            return None
        # Other kernels compute in ``real``; some declare which other inputs they take.
        allowed = getattr(entry[0], "dtypes", None)
        values = [(j, v) for j, v in enumerate(node.inputs) if _is_tensor_value(v)]
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

    def _output_dtype(self, node: Node) -> str | None:
        kinds = node.output.types & ty.TENSORS
        if not kinds:
            return None
        if len(kinds) > 1:
            # A type rule that stopped early: the kind of the first tensor input if
            # the output may have it (shape ops, ...), else float, int, bool.
            first = next(
                (
                    self.dtype(v)
                    for v in node.inputs
                    if _is_tensor_value(v) or id(v) in self.lists
                ),
                None,
            )
            order = [ty.TENSOR_FLOAT, ty.TENSOR_INT, ty.TENSOR_BOOL]
            if first is not None:
                order.insert(0, _DTYPE_KIND[np.dtype(first).kind])
            kinds = frozenset({next(k for k in order if k in kinds)})
        kind = next(iter(kinds))
        letter = {ty.TENSOR_FLOAT: "f", ty.TENSOR_INT: "iu", ty.TENSOR_BOOL: "b"}[kind]
        if node.op == "cast":
            constant = node.inputs[1].constant
            named = str(getattr(constant, "name", constant))
            if named not in C_TYPES or np.dtype(named).kind not in letter:
                return None  # float16, bfloat16: no C type here
            return named
        if node.op in ("arg_max", "arg_min", "sum") and kind == ty.TENSOR_INT:
            return "int64"
        same = [
            self.dtype(v)
            for v in node.inputs
            if (_is_tensor_value(v) or id(v) in self.lists)
            and np.dtype(self.dtype(v)).kind in letter
        ]
        if same:
            return np.result_type(*same).name
        return {ty.TENSOR_FLOAT: self.real_numpy, ty.TENSOR_INT: "int64"}.get(
            kind, "bool"
        )

    def _place_inputs(self) -> None:
        for slot, value in enumerate(self.graph.inputs.values()):
            self.loc[id(value)] = Loc("io", slot)

    def _classify(self) -> None:
        outputs = {id(v) for v in self.graph.outputs.values()}
        for node in self.graph.nodes:
            users = self.consumers.get(id(node.output), [])
            if node.op in _VIRTUAL:
                self.virtual[id(node.output)] = node
            elif (
                node.op == "transpose"
                and id(node.output) not in outputs
                and users
                and all(u.op == "matrix_multiply" for u in users)
                and _swaps_last_two(shape_of(node.inputs[0]), node.inputs[1].constant)
            ):
                self.virtual[id(node.output)] = node

    # -- dtypes ------------------------------------------------------------------------
    def dtype(self, value: Value) -> str:
        """NumPy dtype name of a tensor value."""
        found = self.dtypes.get(id(value))
        if found is not None:
            return found
        if value.is_constant:
            found = _constant_dtype(value.constant, self.real_numpy)
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
        return _is_tensor_value(value) and self.dtype(value) == self.real_numpy

    # -- names and storage -------------------------------------------------------------
    def _name(self, key: int, base: str) -> str:
        name = self.cname.get(key)
        if name is None:
            # Every name taken from a user string gets the prefix ``v_``: it cannot
            # be a C keyword, a macro (NAN, errno ...), a kernel (mc_*) or a local of
            # a lowering (t0, i0, o, row ...), and holds ASCII [A-Za-z0-9_] only.
            base = "".join(c if c in _IDENTIFIER_CHARS else "_" for c in base)
            base = f"v_{base[:_MAX_IDENTIFIER]}"
            name = base
            index = 1
            while name in self.names_used:
                name = f"{base}_{index}"
                index += 1
            self.names_used.add(name)
            self.cname[key] = name
        return name

    def _alloc(self, numel: int, itemsize: int | None = None) -> int:
        """Workspace offset (in ``real`` elements) of ``numel`` items of
        ``itemsize`` bytes (default: ``real``)."""
        offset = self.workspace
        nbytes = max(numel, 1) * (itemsize or self.itemsize)
        self.workspace += -(-nbytes // _ALIGN_BYTES) * (_ALIGN_BYTES // self.itemsize)
        return offset

    def _loc_expr(self, loc: Loc) -> str:
        if loc.kind == "ws":
            return f"ws + {loc.index}"
        return f"{loc.kind}[{loc.index}]"

    def shape(self, value: Value) -> tuple[int, ...]:
        """Static shape of a tensor value."""
        return shape_of(value)

    def numel(self, value: Value) -> int:
        return math.prod(shape_of(value))

    def ptr(self, value: Value) -> str:
        """C pointer to ``value``'s elements (a local of the current function)."""
        if value.is_constant:
            key = id(value)
            if key not in self.loc:
                dtype = self.dtype(value)
                array = np.ascontiguousarray(np.asarray(value.constant), dtype=dtype)
                slot = len(self.input_keys) + len(self.output_slots)
                self.loc[key] = Loc("io", slot + len(self.constants))
                self.constants.append(array)
        loc = self.loc.get(id(value))
        if loc is None:
            msg = f"internal: value {value.name} has no storage"
            raise CompileError(msg)
        name = self._name(id(value), value.name)
        ctype = self.ctype(value)
        if ctype == "real":
            self.fn.decls[name] = self._loc_expr(loc)
        else:
            self.fn.decls[name] = f"({ctype} *)({self._loc_expr(loc)})"
            self.fn.types[name] = ctype
        return name

    def out(self, node: Node) -> str:
        """Pointer to ``node``'s output, allocated in the workspace on first use."""
        value = node.output
        if id(value) not in self.loc:
            slot = self.output_slots.get(id(value))
            if slot is not None:
                self.loc[id(value)] = Loc("io", slot)
            else:
                size = np.dtype(self.dtype(value)).itemsize
                self.loc[id(value)] = Loc("ws", self._alloc(self.numel(value), size))
        return self.ptr(value)

    def alias(self, node: Node, value: Value) -> None:
        """``node``'s output shares ``value``'s storage (reshape-like ops)."""
        self.ptr(value)
        self.loc[id(node.output)] = self.loc[id(value)]

    def temp(self, node: Node, key: str, numel: int, ctype: str = "real") -> str:
        """Workspace scratch owned by ``node`` (the same region in every function)."""
        tkey = (id(node), key)
        if tkey not in self.temps:
            size = self.itemsize if ctype == "real" else _C_SIZES[ctype]
            self.temps[tkey] = self._alloc(numel, size)
        name = self._name(hash(tkey), f"{node.output.name}_{key}")
        if ctype == "real":
            self.fn.decls[name] = f"ws + {self.temps[tkey]}"
        else:
            self.fn.decls[name] = f"({ctype} *)(ws + {self.temps[tkey]})"
            self.fn.types[name] = ctype
        return name

    def state(self, node: Node, key: str, numel: int, ctype: str = "real") -> str:
        """Like :meth:`temp`, but the value persists from one call to the next (an
        RNG state; zero before the first call). The runtime then serialises calls:
        they share this one workspace."""
        self.stateful = True
        return self.temp(node, key, numel, ctype)

    def line(self, *lines: str) -> None:
        self.fn.lines.extend(lines)

    def check(self, call: str, message: str) -> None:
        """``call`` returns non-zero on a runtime error: the generated function then
        returns, and the caller raises ``message``."""
        if message not in self.errors:
            self.errors.append(message)
        self.line(f"if ({call}) return {self.errors.index(message) + 1};")

    def fill(self, pointer: str, numel: int, value: str, ctype: str = "real") -> None:
        """``pointer[0:numel] = value``."""
        if ctype == "real":
            self.line(f"mc_fill({pointer}, {numel}, {value});")
        else:
            self.line(f"for (long i = 0; i < {numel}; ++i) {pointer}[i] = {value};")

    def gather(
        self,
        value: Value,
        out: str,
        source: str,
        shape: Sequence[int],
        strides: Sequence[int],
        accumulate: bool = False,
    ) -> None:
        """Copy (or add) the strided view ``source`` (of ``value``'s dtype) into the
        contiguous ``out``."""
        self._strided("gather", value, out, source, shape, strides, accumulate)

    def scatter(
        self,
        value: Value,
        out: str,
        source: str,
        shape: Sequence[int],
        strides: Sequence[int],
        accumulate: bool = False,
    ) -> None:
        """Copy (or add) the contiguous ``source`` into the strided view ``out``."""
        self._strided("scatter", value, out, source, shape, strides, accumulate)

    def _strided(
        self,
        kind: str,
        value: Value,
        out: str,
        source: str,
        shape: Sequence[int],
        strides: Sequence[int],
        accumulate: bool,
    ) -> None:
        dims = f"{len(shape)}, {self.longs(shape)}, {self.longs(strides)}"
        if self.is_real(value):
            self.line(f"mc_{kind}({out}, {source}, {dims}, {int(accumulate)});")
            return
        assert not accumulate, "only real values are accumulated"
        size = np.dtype(self.dtype(value)).itemsize
        self.line(f"mc_{kind}_bytes({out}, {source}, {size}, {dims});")

    def lit(self, value: Any, ctype: str | None = None) -> str:
        """C literal of a Python scalar constant (of ``ctype`` when given)."""
        if isinstance(value, np.ndarray | np.generic):
            value = value.item()
        if isinstance(value, bool):
            return "1" if value else "0"
        if isinstance(value, int) and ctype not in ("real", "float", "double"):
            if not -(2**63) <= value < 2**64:
                msg = f"Backend 'c': the integer constant {value} does not fit 64 bits."
                raise CompileError(msg)
            return f"(({ctype or 'int64_t'}){int(value)})"
        value = float(value)
        cast = ctype if ctype in ("float", "double") else "real"
        if math.isnan(value):
            return f"(({cast})NAN)"
        if math.isinf(value):
            return f"(({cast})INFINITY)" if value > 0 else f"(({cast})-INFINITY)"
        return f"(({cast}){value!r})"

    def longs(self, values: Iterable[int]) -> str:
        """Name of a file-level ``static const long`` array holding ``values``."""
        items = [str(int(v)) for v in values] or ["0"]
        text = ", ".join(items)
        name = self._statics_by_text.get(text)
        if name is None:
            name = f"mc_dims_{len(self.statics)}"
            self._statics_by_text[text] = name
            self.statics.append(f"static const long {name}[] = {{{text}}};")
        return name

    def transposed(self, value: Value) -> Value | None:
        """The stored source if ``value`` is a transpose folded into a gemm flag."""
        node = self.virtual.get(id(value))
        if node is not None and node.op == "transpose":
            return node.inputs[0]
        return None

    def chunk(self, value: Value) -> tuple[Value, int, int] | None:
        """``(input, split_size, axis)`` if ``value`` is the output of a split."""
        node = self.virtual.get(id(value))
        if node is None or node.op != "split":
            return None
        source, size, axis = node.inputs
        return source, size.constant, axis.constant

    def parts(self, value: Value) -> list[Value]:
        """The tensors of a list built by to_list/to_tuple (or a constant list)."""
        node = self.virtual.get(id(value))
        if node is not None:
            return list(node.inputs)
        msg = f"internal: {value.name} is not a list of tensors"
        raise CompileError(msg)

    # -- gradients ---------------------------------------------------------------------
    def requires(self, value: Value) -> bool:
        """Whether ``value`` gets a gradient in the backward being generated."""
        return id(value) in self.requiring and not value.is_constant

    def gout(self, node: Node) -> str:
        """Pointer to the (complete) gradient of ``node``'s output."""
        return self._gptr(node.output)

    def _gptr(self, value: Value) -> str:
        loc = self.grad[id(value)]
        # Keyed by location too: a gradient moved out of a caller's buffer is renamed.
        name = self._name(hash(("g", id(value), loc)), f"g_{value.name}")
        self.fn.decls[name] = self._loc_expr(loc)
        return name

    def target(self, value: Value) -> tuple[str, bool]:
        """Gradient buffer of ``value`` to write into, and whether to add (a
        contribution is already there) rather than assign."""
        existing = self.grad.get(id(value))
        if existing is not None and existing.kind == "ws":
            return self._gptr(value), True
        self.grad[id(value)] = Loc("ws", self._alloc(self.numel(value)))
        pointer = self._gptr(value)
        if existing is not None:  # a caller's output gradient: never written to
            self.line(
                f"mc_copy({pointer}, {self._loc_expr(existing)}, "
                f"{self.numel(value)}, 0);"
            )
            return pointer, True
        return pointer, False

    def grad_alias(self, node: Node, value: Value) -> None:
        """The gradient of ``value`` is the output gradient, reshaped (shared, no
        copy, when it is the first contribution; ``target`` copies a shared caller
        buffer before anything is added to it)."""
        if id(value) not in self.grad:
            self.grad[id(value)] = self.grad[id(node.output)]
            return
        source = self.gout(node)
        pointer, accumulate = self.target(value)
        self.line(
            f"mc_copy({pointer}, {source}, {self.numel(value)}, {int(accumulate)});"
        )

    # -- element-wise ------------------------------------------------------------------
    def is_elementwise(self, node: Node) -> bool:
        return isinstance(self.lowerings[node.op][0], str)

    def _options(self, node: Node) -> dict[str, Any]:
        entry = self.lowerings[node.op]
        return entry[2] if len(entry) > 2 else {}

    def _template(self, node: Node) -> str:
        """The forward template for ``node``'s output kind."""
        kind = np.dtype(self.dtype(node.output)).kind
        key = {"b": "bool", "i": "int", "u": "int"}.get(kind, "float")
        return self._options(node).get(key, self.lowerings[node.op][0])

    def _operand_ctypes(self, node: Node) -> list[str | None]:
        """The C type each operand is converted to (``None``: read as stored)."""
        raw = set(self._options(node).get("raw", ()))
        out = self.dtype(node.output)
        if np.dtype(out).kind != "b":
            return [
                None if j in raw else self.ctype(out) for j in range(len(node.inputs))
            ]
        # Comparisons: NumPy's promotion of the operands (Python scalars are weak).
        tensors = [
            self.dtype(v)
            for j, v in enumerate(node.inputs)
            if j not in raw and _is_tensor_value(v)
        ]
        scalars = [
            v.constant
            for j, v in enumerate(node.inputs)
            if j not in raw and not _is_tensor_value(v)
        ]
        floats = [d for d in tensors if np.dtype(d).kind == "f"]
        if floats:
            common: str | None = np.result_type(*floats).name
        elif any(isinstance(s, float) for s in scalars):
            common = self.real_numpy
        elif any(np.dtype(d).kind in "iu" for d in tensors):
            common = np.result_type(
                *(d for d in tensors if np.dtype(d).kind in "iu")
            ).name
        else:
            common = None
        ctype = None if common is None else self.ctype(common)
        return [None if j in raw else ctype for j in range(len(node.inputs))]

    def _operand(
        self,
        value: Value,
        shape: tuple[int, ...],
        temps: dict[int, tuple[str, str]],
        accesses: list[tuple[str, tuple[int, ...]]],
        seen: dict[int, int],
        want: str | None = None,
    ) -> str:
        if id(value) in temps:
            text, ctype = temps[id(value)]
        elif value.is_constant and _scalar(value.constant):
            return self.lit(value.constant, want)
        elif value.is_constant and not _is_tensor_value(value):
            return ""  # a dtype name, an axis ...: not an operand of the C expression
        else:
            if id(value) not in seen:
                seen[id(value)] = len(accesses)
                strides = broadcast_strides(shape_of(value), shape)
                accesses.append((self.ptr(value), strides))
            text, ctype = f"\x00{seen[id(value)]}\x00", self.ctype(value)
        if want is None or want == ctype:
            return text
        return f"(({want}){text})"

    def _emit_loop(
        self,
        shape: tuple[int, ...],
        accesses: list[tuple[str, tuple[int, ...]]],
        body: list[str],
        writes: Sequence[int],
    ) -> None:
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
        work = math.prod(shape) * max(len(body), 1)
        self.line(*loop_nest(shape, strides, fill, writes=writes, work=work))

    def emit_group(self, nodes: list[Node], store: set[int]) -> None:
        """One loop computing a run of same-shape element-wise nodes."""
        shape = shape_of(nodes[0].output)
        temps: dict[int, tuple[str, str]] = {}
        accesses: list[tuple[str, tuple[int, ...]]] = []
        seen: dict[int, int] = {}
        body = []
        writes = []
        for k, node in enumerate(nodes):
            template = self._template(node)
            wants = self._operand_ctypes(node)
            args = [
                self._operand(v, shape, temps, accesses, seen, want)
                for v, want in zip(node.inputs, wants, strict=True)
            ]
            ctype = self.ctype(node.output)
            body.append(f"{ctype} t{k} = {template.format(*args)};")
            temps[id(node.output)] = (f"t{k}", ctype)
            if id(node.output) in store:
                writes.append((self.out(node), f"t{k}"))
        written = []
        for pointer, temp in writes:
            index = len(accesses)
            written.append(index)
            accesses.append((pointer, contiguous_strides(shape)))
            body.append(f"\x00{index}\x00 = {temp};")
        ops = ", ".join(n.op for n in nodes)
        self.line(f"/* {comment_text(ops)} */")
        self._emit_loop(shape, accesses, body, written)

    def emit_elementwise_vjp(self, node: Node, needs: tuple[bool, ...]) -> None:
        vjps = self.lowerings[node.op][1]
        shape = shape_of(node.output)
        targets = [
            (j, v)
            for j, v in enumerate(node.inputs)
            if needs[j] and vjps[j] is not None
        ]
        if not targets:
            return
        accesses: list[tuple[str, tuple[int, ...]]] = []
        seen: dict[int, int] = {}
        temps: dict[int, tuple[str, str]] = {}
        used = set().union(*(_fields(vjps[j] or "") for j, _ in targets))
        wants = self._operand_ctypes(node)
        args = [
            self._operand(v, shape, temps, accesses, seen, wants[j])
            if str(j) in used
            else ""
            for j, v in enumerate(node.inputs)
        ]
        named = {
            "g": self._operand_ptr(self.gout(node), shape, accesses),
            "y": "",
        }
        if "y" in used:
            named["y"] = self._operand(node.output, shape, temps, accesses, seen)
        body = []
        written = []
        mode: dict[int, str] = {}
        same = math.prod(shape)
        for j, value in targets:
            if (
                vjps[j] == "{g}"
                and id(value) not in self.grad
                and self.numel(value) == same
            ):
                # d(out)/d(input) is the identity: share the output gradient.
                self.grad[id(value)] = self.grad[id(node.output)]
                continue
            reduce = self.numel(value) != math.prod(shape)
            pointer, accumulate = self.target(value)
            if id(value) not in mode:
                if reduce and not accumulate:
                    self.line(f"mc_fill({pointer}, {self.numel(value)}, 0);")
                    mode[id(value)] = "+="
                else:
                    mode[id(value)] = "+=" if accumulate else "="
            index = len(accesses)
            written.append(index)
            accesses.append((pointer, broadcast_strides(shape_of(value), shape)))
            expr = vjps[j].format(*args, **named)
            body.append(f"\x00{index}\x00 {mode[id(value)]} {expr};")
            mode[id(value)] = "+="
        self.line(f"/* {comment_text(node.op)} vjp */")
        self._emit_loop(shape, accesses, body, written)

    def _operand_ptr(
        self,
        pointer: str,
        shape: tuple[int, ...],
        accesses: list[tuple[str, tuple[int, ...]]],
    ) -> str:
        accesses.append((pointer, contiguous_strides(shape)))
        return f"\x00{len(accesses) - 1}\x00"

    # -- whole functions ---------------------------------------------------------------
    def begin(self) -> None:
        self.fn = _Function()

    def end(self, signature: str) -> str:
        decls = [
            f"    {self.fn.types.get(name, 'real')} *{name} = {expr};"
            for name, expr in self.fn.decls.items()
        ]
        body = ["    " + line for line in self.fn.lines]
        unused = ["    (void)io; (void)ws;"]
        if "og" in signature:
            unused = ["    (void)io; (void)og; (void)ws;"]
        return "\n".join(
            [f"{signature} {{", *unused, *decls, *body, "    return 0;", "}"]
        )


_C_SIZES = {C_TYPES[name]: np.dtype(name).itemsize for name in C_TYPES} | {
    "uint64_t": 8
}


def _is_tensor_value(value: Value) -> bool:
    if value.is_constant:
        return not _scalar(value.constant) and not isinstance(
            value.constant, list | tuple | str | type(None)
        )
    return bool(value.types) and value.types <= ty.TENSORS


def _swaps_last_two(shape: tuple[int, ...], axes: Any) -> bool:
    rank = len(shape)
    if rank < 2:
        return False
    perm = tuple(range(rank))[::-1] if axes is None else tuple(a % rank for a in axes)
    return perm == (*range(rank - 2), rank - 1, rank - 2)


def generate(
    graph: FlatGraph,
    lowerings: dict[str, Any],
    *,
    real: str,
    grad_keys: tuple[str, ...],
    differentiable_outputs: tuple[str, ...],
    inference: bool,
    threads: int = 1,
) -> Plan:
    """C source and runtime plan for ``graph``; ``threads``: the most threads a call
    will use (kernels that give each thread its own scratch get that many copies)."""
    em = Emitter(graph, lowerings, real)
    em.threads = threads
    outputs = {id(v) for v in graph.outputs.values()}
    groups = _groups(em)

    active: list[Node] = []
    requires: set[int] = set()
    seeds = tuple(
        k
        for k in differentiable_outputs
        if _is_tensor_value(graph.outputs[k]) and em.is_real(graph.outputs[k])
    )
    if not inference:
        active, requires = _active(em, grad_keys, seeds)
    bwd_reads = _backward_reads(em, active, requires)

    functions = [_forward(em, groups, outputs, set(), "mc_forward")]
    names = ["mc_forward"]
    grads: dict[str, tuple[Loc, tuple[int, ...], str] | None] = {}
    if not inference:
        functions.append(_forward(em, groups, outputs, bwd_reads, "mc_forward_train"))
        functions.append(_backward(em, active, requires, seeds))
        names += ["mc_forward_train", "mc_backward"]
        for key in grad_keys:
            value = graph.inputs[key]
            loc = em.grad.get(id(value))
            grads[key] = None if loc is None else (loc, shape_of(value), em.real_numpy)
    results: dict[str, tuple[Loc, tuple[int, ...], str] | np.ndarray] = {}
    for key, value in graph.outputs.items():
        if value.is_constant:
            results[key] = np.asarray(
                value.constant, dtype=_constant_dtype(value.constant, em.real_numpy)
            )
        else:
            results[key] = (em.loc[id(value)], shape_of(value), em.dtype(value))
    slots = [
        *(f"io[{i}]: input {k}" for i, k in enumerate(em.input_keys)),
        *(
            f"io[{em.output_slots[id(v)]}]: output {k}"
            for k, v in graph.outputs.items()
            if id(v) in em.output_slots
        ),
        *(f"og[{i}]: gradient of output {k}" for i, k in enumerate(seeds)),
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
        workspace=em.workspace,
        outputs=results,
        seeds=seeds,
        seed_shapes=tuple(shape_of(graph.outputs[k]) for k in seeds),
        grads=grads,
        functions=tuple(names),
        errors=tuple(em.errors),
        stateful=em.stateful,
    )


def _groups(em: Emitter) -> dict[int, list[Node]]:
    """Runs of consecutive same-shape element-wise nodes, keyed by their first node."""
    groups: dict[int, list[Node]] = {}
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
            groups[id(node)] = current
        else:
            current = None
    return groups


def _forward(
    em: Emitter,
    groups: dict[int, list[Node]],
    outputs: set[int],
    bwd_reads: set[int],
    name: str,
) -> str:
    em.begin()
    grouped = {id(n) for group in groups.values() for n in group}
    for node in em.graph.nodes:
        group = groups.get(id(node))
        if group is not None:
            members = {id(n) for n in group}
            store = {
                id(n.output)
                for n in group
                if id(n.output) in outputs
                or id(n.output) in bwd_reads
                or any(id(u) not in members for u in em.consumers.get(id(n.output), []))
            }
            em.emit_group(group, store)
            continue
        if id(node) in grouped or id(node.output) in em.virtual:
            continue
        em.line(f"/* {comment_text(f'{node.path}: {node.op}')} */")
        em.lowerings[node.op][0](em, node)
    return em.end(f"MC_DISPATCH int {name}(real *const *io, real *ws)")


def _active(
    em: Emitter, grad_keys: tuple[str, ...], seeds: tuple[str, ...]
) -> tuple[list[Node], set[int]]:
    graph = em.graph
    requires = {id(graph.inputs[k]) for k in grad_keys}
    for node in graph.nodes:
        # Gradients flow through ``real`` values only: not into ints, bools or a
        # cast to another float dtype.
        flows = em.is_real(node.output) or node.op in _VIRTUAL
        if flows and any(id(v) in requires for v in node.inputs):
            requires.add(id(node.output))
    reaching = {id(graph.outputs[k]) for k in seeds}
    active = []
    for node in reversed(graph.nodes):
        if id(node.output) in reaching and id(node.output) in requires:
            active.append(node)
            reaching.update(id(v) for v in node.inputs if id(v) in requires)
    return active, requires


def _needs(node: Node, requires: set[int]) -> tuple[bool, ...]:
    return tuple(id(v) in requires and not v.is_constant for v in node.inputs)


def _backward_reads(em: Emitter, active: list[Node], requires: set[int]) -> set[int]:
    """Values an element-wise VJP reads (stored by the training forward)."""
    reads: set[int] = set()
    for node in active:
        if node.op in _VIRTUAL or not em.is_elementwise(node):
            continue
        vjps = em.lowerings[node.op][1]
        for j, needed in enumerate(_needs(node, requires)):
            if not needed or vjps[j] is None:
                continue
            fields = _fields(vjps[j])
            if "y" in fields:
                reads.add(id(node.output))
            reads.update(id(node.inputs[int(f)]) for f in fields if f.isdigit())
    return reads


def _backward(
    em: Emitter, active: list[Node], requires: set[int], seeds: tuple[str, ...]
) -> str:
    em.begin()
    em.requiring = requires
    graph = em.graph
    consumed = {id(v) for n in active for v in n.inputs}
    seeded = [id(graph.outputs[k]) for k in seeds]
    consumed.update(v for v in seeded if seeded.count(v) > 1)
    for slot, key in enumerate(seeds):
        value = graph.outputs[key]
        if id(value) not in requires:
            continue
        if id(value) not in em.grad and id(value) not in consumed:
            em.grad[id(value)] = Loc("og", slot)
            continue
        pointer, accumulate = em.target(value)
        em.line(
            f"mc_copy({pointer}, og[{slot}], {em.numel(value)}, {int(accumulate)});"
        )
    for node in active:
        if id(node.output) not in em.grad or node.op in _VIRTUAL:
            continue
        needs = _needs(node, requires)
        if not any(needs):
            continue
        em.line(f"/* {comment_text(f'{node.path}: {node.op}')} vjp */")
        if em.is_elementwise(node):
            em.emit_elementwise_vjp(node, needs)
        else:
            em.lowerings[node.op][1](em, node, needs)
    return em.end(
        "MC_DISPATCH int mc_backward(real *const *io, real *const *og, real *ws)"
    )
