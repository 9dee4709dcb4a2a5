"""The API lowerings emit C through: lines, pointers, workspace scratch, runtime
checks, literals and gradient buffers (see :class:`Emitter`)."""

from __future__ import annotations

import math
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mithril_c._plan import C_SIZES, Analysis, Loc, Workspace
from mithril_core.errors import CompileError
from mithril_core.physical.flat import FlatGraph, Node, Value

_IDENTIFIER_CHARS = frozenset(string.ascii_letters + string.digits + "_")
# Comment text: characters that cannot end a comment, continue a line, form a trigraph
# or escape anything. User names (keys, model paths) reach the C source only as
# comments built from these or as identifiers built from _IDENTIFIER_CHARS.
_COMMENT_CHARS = frozenset(string.ascii_letters + string.digits + "_.,:;=()[]<>#+- ")
_MAX_COMMENT = 120
_MAX_IDENTIFIER = 48
# Stands for a workspace region's offset in the text until the layout is known.
REGION = "\x01"


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


@dataclass
class _Function:
    decls: dict[str, str] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    # Workspace regions holding results computed earlier in this function, by what
    # they are (see Emitter.computed_temp).
    computed: dict[Any, int] = field(default_factory=dict)


class Emitter(Analysis):
    """Code generator state, and the API lowerings emit C through.

    Forward emitters use ``shape``, ``dtype``, ``ctype``, ``ptr``, ``out``, ``alias``,
    ``line``, ``lit``, ``longs``, ``temp``, ``state``, ``fill``,
    ``gather``/``scatter`` and ``check``; VJP emitters also ``gout``, ``target`` and
    ``grad_alias``. ``transposed(value)`` gives the stored source of a transpose that
    is folded into a matrix product, ``folded(value)`` the node of any value no C
    computes (a split's chunks, a list), ``parts(value)`` the tensors of a list.
    """

    def __init__(
        self, graph: FlatGraph, lowerings: Mapping[str, Any], real: str
    ) -> None:
        super().__init__(graph, lowerings, real)
        self.loc: dict[int, Loc] = {}
        self.cname: dict[int, str] = {}
        self.names_used: set[str] = set()
        self.statics: list[str] = []
        self._statics_by_text: dict[str, str] = {}
        self.memory = Workspace(self.itemsize)
        self.temps: dict[tuple[int, str], int] = {}
        self.constants: list[np.ndarray] = []
        self.fn = _Function()
        self.grad: dict[int, Loc] = {}
        self.requiring: frozenset[int] = frozenset()
        self.errors: list[str] = []
        self.stateful = False
        self.threads = 1
        # True while emitting the training forward (whose values gradients follow):
        # lowerings then prefer their most accurate form (no Winograd convolution).
        self.for_gradients = False
        for slot, value in enumerate(graph.inputs.values()):
            self.loc[id(value)] = Loc("io", slot)

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

    def _alloc(self, numel: int, itemsize: int | None = None) -> Loc:
        """A new workspace region of ``numel`` items of ``itemsize`` bytes (default:
        ``real``)."""
        return Loc("ws", self.memory.new(numel * (itemsize or self.itemsize)))

    def _loc_expr(self, loc: Loc) -> str:
        if loc.kind == "ws":
            self.memory.use(loc.index)
            return f"ws + {REGION}{loc.index}{REGION}"
        return f"{loc.kind}[{loc.index}]"

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
                self.loc[id(value)] = self._alloc(self.numel(value), size)
        return self.ptr(value)

    def alias(self, node: Node, value: Value) -> None:
        """``node``'s output shares ``value``'s storage (reshape-like ops)."""
        self.ptr(value)
        self.loc[id(node.output)] = self.loc[id(value)]

    def temp(self, node: Node, key: str, numel: int, ctype: str = "real") -> str:
        """Workspace scratch owned by ``node`` (the same region in every function,
        live from its first use to its last: a forward's scratch a VJP reads
        survives until then)."""
        tkey = (id(node), key)
        if tkey not in self.temps:
            size = self.itemsize if ctype == "real" else C_SIZES[ctype]
            self.temps[tkey] = self._alloc(numel, size).index
        name = self._name(hash(tkey), f"{node.output.name}_{key}")
        where = self._loc_expr(Loc("ws", self.temps[tkey]))
        if ctype == "real":
            self.fn.decls[name] = where
        else:
            self.fn.decls[name] = f"({ctype} *)({where})"
            self.fn.types[name] = ctype
        return name

    def computed_temp(
        self, node: Node, key: str, numel: int, what: Any
    ) -> tuple[str, bool]:
        """``node``'s ``real`` temp ``key`` to hold ``what`` (a hashable description:
        a statistic of a value over some axes), and whether it holds it already: it
        is then the region where this function computed ``what`` before (nothing to
        compute); else it is ``node``'s own, later lowerings of this function find
        ``what`` there, and the caller computes it. Reads are uses: the region lives
        as long as they need it."""
        tkey = (id(node), key)
        found = self.fn.computed.get(what)
        if found is not None and tkey not in self.temps:
            self.temps[tkey] = found
        name = self.temp(node, key, numel)
        if found is not None and self.temps[tkey] == found:
            return name, True
        self.fn.computed.setdefault(what, self.temps[tkey])
        return name, False

    def remember_output(self, node: Node, what: Any) -> None:
        """Later lowerings of this function may read ``what`` from ``node``'s output
        (when it is in the workspace), through :meth:`computed_temp`."""
        loc = self.loc.get(id(node.output))
        if loc is not None and loc.kind == "ws":
            self.fn.computed.setdefault(what, loc.index)

    def state(self, node: Node, key: str, numel: int, ctype: str = "real") -> str:
        """Like :meth:`temp`, but the value persists from one call to the next (an
        RNG state; zero before the first call). The runtime then serialises calls:
        they share this one workspace."""
        self.stateful = True
        name = self.temp(node, key, numel, ctype)
        self.memory.pin(self.temps[(id(node), key)])
        return name

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
        self.grad[id(value)] = self._alloc(self.numel(value))
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
