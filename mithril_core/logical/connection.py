"""Connections: the nodes terminals are bound to, with shape, type and value metadata.

Binding two terminals to one connection merges their metadata; a union-find keeps merges
cheap. Connections also act like tensors in expressions (``a + b``, ``x.reshape(...)``,
``x.shape[1]``): each expression is a pending call of a primitive that a model pulls in
when the result is added to it.
"""

from __future__ import annotations

import dis
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mithril_core.errors import MithrilTypeError, ModelConnectionError, ShapeError
from mithril_core.logical import shapes as sh
from mithril_core.logical import types as ty

if TYPE_CHECKING:
    from mithril_core.logical.model import BaseModel


class _NoValue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NOVALUE"

    def __copy__(self) -> _NoValue:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> _NoValue:
        return self

    def __reduce__(self) -> str:
        return "NOVALUE"


NOVALUE: Any = _NoValue()
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_UNPACK = dis.opmap["UNPACK_SEQUENCE"]


def user_source_line() -> str:
    """``file:line`` of the first caller outside mithril_core (cheap frame walk)."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "<unknown>"
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


#: The primitive classes behind connection expressions (``a + b`` -> ``"Add"``,
#: ``a[i]`` -> ``"Indexer"``, a list of connections -> ``"ToList"`` ...), by name.
#: :mod:`mithril_core.primitives` fills it at import (``import mithril_core`` imports
#: it), so this layer never imports a primitive.
OPERATORS: dict[str, Callable[..., BaseModel]] = {}


def register_operators(classes: Mapping[str, Callable[..., BaseModel]]) -> None:
    """Register the primitive classes connection expressions build, by name."""
    OPERATORS.update(classes)


def operator(name: str) -> Callable[..., BaseModel]:
    """The registered primitive class for connection operator ``name``."""
    try:
        return OPERATORS[name]
    except KeyError:
        msg = (
            f"No primitive is registered for the connection operator {name!r}; "
            "import mithril_core.primitives (import mithril_core does) first."
        )
        raise ModelConnectionError(msg) from None


class Connection:
    """A value flowing between models: a tensor, scalar, tuple or list.

    Users get connections from ``model.<name>``, ``model.cin``/``cout`` and calls
    (``Sigmoid()(x)``); they support arithmetic, comparisons (``<``, ``>``, ``.eq``,
    ``.ne``), indexing, ``.shape``, ``.reshape``, ``.transpose``, ``.T`` and reductions.
    """

    __array_priority__ = 1000  # numpy scalars defer to our operators

    def __init__(
        self,
        *,
        shape: sh.ShapeNode | None = None,
        type: frozenset[str] = ty.ANY,  # noqa: A002 - mirrors IOKey(type=...)
        value: Any = NOVALUE,
        model: BaseModel | None = None,
    ) -> None:
        self.parent: Connection | None = None
        self.shape_node = shape if shape is not None else sh.ShapeNode.unknown()
        self.types = type
        self.value = value
        self.model = model
        self.producer: BaseModel | None = None
        self.names: list[tuple[BaseModel, str]] = []
        self.watchers: set[sh.Rule] | None = None
        self.sources: list[str] = []
        self.expose: bool | None = None
        self.differentiable: bool | None = None
        self.elements: list[Connection] | None = None

    # -- union-find --------------------------------------------------------------------
    def find(self) -> Connection:
        node = self
        while node.parent is not None:
            node = node.parent
        current = self
        while current.parent is not None and current.parent is not node:
            sh.record(current, "parent")
            current.parent, current = node, current.parent
        return node

    def watch(self, rule: sh.Rule) -> None:
        if self.watchers is None:
            sh.record(self, "watchers")
            self.watchers = set()
        if rule not in self.watchers:
            sh.record_added(self.watchers, rule)
            self.watchers.add(rule)
        self.shape_node.watch(rule)

    # -- metadata ----------------------------------------------------------------------
    def set_value(self, value: Any) -> None:
        root = self.find()
        if root.value is not NOVALUE:
            if not _values_equal(root.value, value):
                msg = f"value {root.value!r} conflicts with {value!r}"
                raise sh.ShapeConflict(msg)
            return
        vtype = ty.type_of_value(value)
        root.restrict_type(vtype)
        sh.record(root, "value")
        root.value = value
        if ty.SCALARS & vtype:
            sh.unify_with_dims(root.shape_node, [])
        elif hasattr(value, "shape") and hasattr(value, "dtype"):
            sh.unify_with_dims(root.shape_node, list(value.shape))
        sh.notify(root.watchers)

    def restrict_type(self, allowed: frozenset[str]) -> None:
        root = self.find()
        new = root.types & allowed
        if new == root.types:
            return
        if not new:
            msg = (
                f"type {ty.format_type(root.types)} "
                f"conflicts with {ty.format_type(allowed)}"
            )
            raise sh.ShapeConflict(msg)
        sh.record(root, "types")
        root.types = new
        if new <= ty.SCALARS:
            sh.unify_with_dims(root.shape_node, [])
        sh.notify(root.watchers)

    def display_name(self) -> str:
        """A readable path for messages: ``model_path.name``."""
        root = self.find()
        candidates = root.names or self.names
        if not candidates and root.producer is not None:
            return f"{root.producer.path()}.output"
        if not candidates:
            return "<unnamed connection>"
        model, name = min(candidates, key=lambda mn: mn[0].depth())
        path = model.path()
        return f"{path}.{name}" if path else name

    def shape_repr(self) -> str:
        root = self.find()
        if not root.types & ty.TENSORS and root.types <= ty.SCALARS | {ty.NONE}:
            return "scalar"
        return repr(root.shape_node)

    def __repr__(self) -> str:
        root = self.find()
        return (
            f"<Connection {self.display_name()} shape={root.shape_node!r} "
            f"type={ty.format_type(root.types)}>"
        )

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __bool__(self) -> bool:
        return True

    # -- tensor-like expressions -------------------------------------------------------
    def _call(self, prim_name: str, *args: Any, **kwargs: Any) -> Connection:
        return operator(prim_name)(**kwargs)(*args)

    def __add__(self, other: Any) -> Connection:
        return self._call("Add", self, other)

    def __radd__(self, other: Any) -> Connection:
        return self._call("Add", other, self)

    def __sub__(self, other: Any) -> Connection:
        return self._call("Subtract", self, other)

    def __rsub__(self, other: Any) -> Connection:
        return self._call("Subtract", other, self)

    def __mul__(self, other: Any) -> Connection:
        return self._call("Multiply", self, other)

    def __rmul__(self, other: Any) -> Connection:
        return self._call("Multiply", other, self)

    def __truediv__(self, other: Any) -> Connection:
        return self._call("Divide", self, other)

    def __rtruediv__(self, other: Any) -> Connection:
        return self._call("Divide", other, self)

    def __floordiv__(self, other: Any) -> Connection:
        return self._call("FloorDivide", self, other)

    def __rfloordiv__(self, other: Any) -> Connection:
        return self._call("FloorDivide", other, self)

    def __pow__(self, other: Any) -> Connection:
        return self._call("Power", self, other)

    def __rpow__(self, other: Any) -> Connection:
        return self._call("Power", other, self)

    def __matmul__(self, other: Any) -> Connection:
        return self._call("MatrixMultiply", self, other)

    def __rmatmul__(self, other: Any) -> Connection:
        return self._call("MatrixMultiply", other, self)

    def __neg__(self) -> Connection:
        return self._call("Negate", self)

    def __abs__(self) -> Connection:
        return self._call("Absolute", self)

    def __gt__(self, other: Any) -> Connection:
        return self._call("Greater", self, other)

    def __ge__(self, other: Any) -> Connection:
        return self._call("GreaterEqual", self, other)

    def __lt__(self, other: Any) -> Connection:
        return self._call("Less", self, other)

    def __le__(self, other: Any) -> Connection:
        return self._call("LessEqual", self, other)

    def __and__(self, other: Any) -> Connection:
        return self._call("LogicalAnd", self, other)

    def __or__(self, other: Any) -> Connection:
        return self._call("LogicalOr", self, other)

    def __xor__(self, other: Any) -> Connection:
        return self._call("LogicalXor", self, other)

    def __invert__(self) -> Connection:
        return self._call("LogicalNot", self)

    def eq(self, other: Any) -> Connection:
        """Element-wise ``==`` (``==`` itself compares connection identity)."""
        return self._call("Equal", self, other)

    def ne(self, other: Any) -> Connection:
        """Element-wise ``!=``."""
        return self._call("NotEqual", self, other)

    def __getitem__(self, index: Any) -> Connection:
        return self._call("Indexer", self, _index_arg(index))

    def __iter__(self) -> Any:
        # Unpacking (``B, C, H, W = x.shape``) fixes the length: read it from the
        # caller's UNPACK_SEQUENCE, or from the known value / rank.
        frame = sys._getframe(1)
        code = frame.f_code.co_code
        count: int | None = None
        if code[frame.f_lasti] == _UNPACK:
            count = code[frame.f_lasti + 1]
        root = self.find()
        if count is None and isinstance(root.value, tuple | list):
            count = len(root.value)
        if count is None and root.elements is not None:
            count = len(root.elements)
        if count is None:
            msg = (
                f"{self.display_name()}: "
                "cannot iterate a connection of unknown length; "
                "unpack it (a, b = x.shape) or index it (x.shape[0])."
            )
            raise TypeError(msg)
        producer = root.producer
        if producer is not None and type(producer).__name__ == "Shape":
            shape_input = producer.terminal("input").find()
            sh.unify_with_dims(shape_input.shape_node, [None] * count)
        return iter([self[i] for i in range(count)])

    @property
    def shape(self) -> Connection:
        """Connection to this tensor's shape (a tuple of ints); index or unpack it."""
        return self._call("Shape", self)

    @property
    def T(self) -> Connection:  # noqa: N802 - mirrors numpy
        return self._call("Transpose", self, axes=None)

    def reshape(self, *shape: Any) -> Connection:
        if len(shape) == 1 and isinstance(shape[0], tuple | list | Connection):
            shape = shape[0]  # type: ignore[assignment]
        return self._call("Reshape", self, _tuple_arg(shape))

    def transpose(self, *axes: Any) -> Connection:
        if len(axes) == 1 and isinstance(axes[0], tuple | list):
            axes = tuple(axes[0])
        return self._call("Transpose", self, axes=tuple(axes) if axes else None)

    def sum(self, axis: Any = None, keepdim: bool = False) -> Connection:
        return self._call("Sum", self, axis=axis, keepdim=keepdim)

    def mean(self, axis: Any = None, keepdim: bool = False) -> Connection:
        return self._call("Mean", self, axis=axis, keepdim=keepdim)

    def max(self, axis: Any = None, keepdim: bool = False) -> Connection:
        return self._call("Max", self, axis=axis, keepdim=keepdim)

    def min(self, axis: Any = None, keepdim: bool = False) -> Connection:
        return self._call("Min", self, axis=axis, keepdim=keepdim)

    def var(
        self, axis: Any = None, keepdim: bool = False, correction: int = 0
    ) -> Connection:
        return self._call(
            "Variance", self, axis=axis, keepdim=keepdim, correction=correction
        )

    def argmax(self, axis: Any = None, keepdim: bool = False) -> Connection:
        return self._call("ArgMax", self, axis=axis, keepdim=keepdim)

    def cast(self, dtype: Any) -> Connection:
        return self._call("Cast", self, dtype=dtype)

    def exp(self) -> Connection:
        return self._call("Exponential", self)

    def log(self) -> Connection:
        return self._call("Log", self)

    def sqrt(self) -> Connection:
        return self._call("Sqrt", self)


def _values_equal(a: Any, b: Any) -> bool:
    if hasattr(a, "shape") or hasattr(b, "shape"):
        import numpy as np

        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return bool(a == b) and type(a) is type(b) or a is b


def _contains_connection(value: Any) -> bool:
    if isinstance(value, Connection):
        return True
    if isinstance(value, tuple | list):
        return any(_contains_connection(v) for v in value)
    if isinstance(value, slice):
        return any(
            isinstance(v, Connection) for v in (value.start, value.stop, value.step)
        )
    return False


def _tuple_arg(values: Sequence[Any] | Connection) -> Any:
    if isinstance(values, Connection):
        return values
    return tuple(values)


def _index_arg(index: Any) -> Any:
    if isinstance(index, slice) and _contains_connection(index):
        msg = "Slices with symbolic bounds are not supported; use integers."
        raise TypeError(msg)
    return index


class IOKey(Connection):
    """A named (or anonymous) terminal with optional shape, type and value.

    ``IOKey("x", shape=[None, 4])`` given to a terminal names the connection ``x`` in
    the enclosing model and exposes it (outputs are exposed only through IOKeys or
    ``expose=True``). In a :class:`Primitive` declaration it is the terminal template.
    """

    def __init__(
        self,
        name: str | None = None,
        value: Any = NOVALUE,
        shape: Sequence[Any] | None = None,
        type: Any = None,  # noqa: A002 - public keyword, as in the SPEC
        expose: bool | None = None,
        differentiable: bool | None = None,
    ) -> None:
        self.key_name = name
        self.shape_template = list(shape) if shape is not None else None
        self.type_annotation = type
        types = ty.to_type_set(type)
        if shape:  # a shape with axes is a tensor's
            types = types & ty.TENSORS
        super().__init__(type=types)
        if shape is not None:
            self.shape_node = sh.template(shape, {})
        self.expose = expose
        self.differentiable = differentiable
        self.sources = [user_source_line()]
        if value is not NOVALUE:
            try:
                self.set_value(value)
            except sh.ShapeConflict as exc:
                msg = f"IOKey({name!r}): value {value!r} does not fit: {exc}"
                raise ShapeError(msg) from exc


_MERGED = (
    "types",
    "value",
    "producer",
    "expose",
    "differentiable",
    "elements",
    "watchers",
)


def merge(child: Connection, target: Connection, context: str) -> Connection:
    """Bind ``child`` to ``target``: one connection afterwards, metadata merged.

    :param context: how the child terminal is named in messages (``path.terminal``).
    """
    a, b = child.find(), target.find()
    if a is b:
        return b
    if a.producer is not None and b.producer is not None:
        msg = (
            f"{context}: output is connected to {target.display_name()}, "
            f"which is already the output of {b.producer.path() or b.producer.name}. "
            "A connection has one producer; give one of them another name."
        )
        raise ModelConnectionError(msg)
    for writer, holder in ((a, b), (b, a)):
        if writer.producer is not None and holder.value is not NOVALUE:
            # A value on an output would silently replace what the model computes.
            into = target.display_name() if b.names else "a constant"
            msg = (
                f"{context}: {writer.producer.path()} writes its output into "
                f"{into}, which holds the value {holder.value!r}. "
                "Values are given to inputs only: drop the value, or write the "
                "output to another name."
            )
            raise ModelConnectionError(msg)
    a_shape, b_shape = repr(a.shape_node), repr(b.shape_node)
    try:
        sh.unify(a.shape_node, b.shape_node)
    except sh.ShapeConflict as exc:
        sh.clear_queue()
        where = _sources(a, b)
        sides = "; ".join(
            _describe_side(root, shape, exc.dims, (a, b))
            for root, shape in ((a, a_shape), (b, b_shape))
        )
        msg = (
            f"{context}: shape {a_shape} conflicts with {b_shape} from "
            f"{target.display_name()} ({exc}) [{sides}]{where}"
        )
        raise ShapeError(msg) from None
    new_types = a.types & b.types
    if not new_types:
        where = _sources(a, b)
        msg = (
            f"{context}: type {ty.format_type(a.types)} conflicts with "
            f"{ty.format_type(b.types)} from {target.display_name()}{where}"
        )
        raise MithrilTypeError(msg)
    if a.value is not NOVALUE and b.value is not NOVALUE:
        if not _values_equal(a.value, b.value):
            msg = (
                f"{context}: value {a.value!r} conflicts with {b.value!r} from "
                f"{target.display_name()}"
            )
            raise ModelConnectionError(msg)
    for attr in _MERGED:
        sh.record(b, attr)
    sh.record(a, "parent")
    sh.record_length(b.names)
    sh.record_length(b.sources)
    a.parent = b
    changed = new_types != b.types or (b.value is NOVALUE and a.value is not NOVALUE)
    b.types = new_types
    if b.value is NOVALUE:
        b.value = a.value
    if b.producer is None:
        b.producer = a.producer
    b.names.extend(a.names)
    b.sources.extend(a.sources)
    if b.expose is None:
        b.expose = a.expose
    if b.differentiable is None:
        b.differentiable = a.differentiable
    if b.elements is None:
        b.elements = a.elements
    if a.watchers:
        b.watchers = (b.watchers or set()) | a.watchers
        sh.notify(a.watchers)
    if changed:
        sh.notify(b.watchers)
    if new_types <= ty.SCALARS:
        sh.unify_with_dims(b.shape_node, [])
    return b


def _user_names(root: Connection) -> list[tuple[int, str]]:
    """Depth and ``path.name`` of every name a model (not a primitive's terminal)
    gives ``root``, outermost first."""
    from mithril_core.logical.model import Primitive

    named = sorted(
        (m.depth(), f"{m.path()}.{n}")
        for m, n in root.names
        if not isinstance(m, Primitive)
    )
    return list(dict.fromkeys(named))


def _describe_side(
    root: Connection,
    shape: str,
    dims: tuple[sh.Dim, sh.Dim] | None,
    sides: tuple[Connection, Connection],
) -> str:
    """One side of a merge conflict: its names, shape and writer, and which other
    named connections share its conflicting dim (where that dim's size came from)."""
    names = [name for _, name in _user_names(root)]
    writer = f"{root.producer.path()}.output" if root.producer is not None else None
    text = f"{' = '.join(names) or writer or '<unnamed connection>'} {shape}"
    if names and writer is not None:
        text += f" (from {writer})"
    dim = _own_dim(root, dims)
    if dim is not None:
        shared = _sharing_dim(dim, root, sides)
        if shared:
            text += f": {dim!r} shared with " + ", ".join(shared)
    return text


def _own_dim(root: Connection, dims: tuple[sh.Dim, sh.Dim] | None) -> sh.Dim | None:
    if dims is None:
        return None
    pre, _, suf = root.shape_node.expanded()
    own = {id(d) for d in pre + suf}
    return next((d for d in dims if id(d.find()) in own), None)


def _sharing_dim(
    dim: sh.Dim, root: Connection, sides: tuple[Connection, Connection], limit: int = 3
) -> list[str]:
    """Named connections (the user's outermost first, then declared inputs before
    computed ones) whose shape holds ``dim``, found by walking the models that name
    either side."""
    from mithril_core.logical.model import Model

    target = dim.find()
    starts = [m.root_model() for side in sides for m, _ in side.find().names]
    starts += [m for side in sides for m, _ in side.find().names]
    seen_models: set[int] = set()
    seen_conns: set[int] = {id(s.find()) for s in sides}
    found: list[tuple[int, bool, str]] = []
    stack = list(starts)
    while stack:
        model = stack.pop()
        if id(model) in seen_models or not isinstance(model, Model):
            continue
        seen_models.add(id(model))
        stack.extend(model._children)
        for conn in model._conns.values():
            other = conn.find()
            if id(other) in seen_conns:
                continue
            seen_conns.add(id(other))
            pre, _, suf = other.shape_node.expanded()
            if not any(d is target for d in pre + suf):
                continue
            names = _user_names(other)
            if names:
                depth, name = names[0]
                text = f"{name} {other.shape_node!r}"
                found.append((depth, other.producer is not None, text))
    return [text for *_, text in sorted(found)[:limit]]


def _sources(a: Connection, b: Connection) -> str:
    lines = list(dict.fromkeys(a.sources + b.sources))
    if not lines:
        return ""
    return " (connected at " + "; ".join(lines[-4:]) + ")"
