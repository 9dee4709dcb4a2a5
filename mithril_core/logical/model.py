"""Logical models: primitives, composite models, operators and how they are
connected."""

from __future__ import annotations

import functools
import inspect
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Self

import numpy as np

from mithril_core.errors import MithrilError, ModelConnectionError, ShapeError
from mithril_core.logical import shapes as sh
from mithril_core.logical import types as ty
from mithril_core.logical.connection import (
    NOVALUE,
    Connection,
    IOKey,
    merge,
    operator,
    user_source_line,
)

RuleFn = Callable[[sh.Rule], bool]

#: Functions of the inspect layer (serialize, summary, dot) behind the thin methods
#: ``to_dict``, ``from_dict``, ``to_json``, ``summary``, ``flop_counts``, ``to_dot`` ...
#: of models and compiled models, by name. Those modules register them at import
#: (``import mithril_core`` imports them), so logical/ and physical/ never import them.
INSPECT: dict[str, Callable[..., Any]] = {}


def register_inspect(functions: Mapping[str, Callable[..., Any]]) -> None:
    """Register inspect-layer functions the model methods call, by name."""
    INSPECT.update(functions)


def inspect_function(name: str) -> Callable[..., Any]:
    """The registered inspect-layer function ``name``."""
    try:
        return INSPECT[name]
    except KeyError:
        msg = (
            f"{name} is not registered: import mithril_core (it imports the inspect "
            "modules mithril_core.logical.serialize, summary and dot) first."
        )
        raise MithrilError(msg) from None


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


class BaseModel:
    """Common part of primitives and composite models."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self: BaseModel, *args: Any, **kw: Any) -> None:
            # The outermost constructor records its arguments (for to_dict).
            if "_init_args" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                arguments = dict(bound.arguments)
                arguments.pop(next(iter(signature.parameters)))
                self.__dict__["_init_args"] = arguments
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def __init__(self, name: str | None = None) -> None:
        self.name = name
        self._parent: Model | None = None
        self._child_name: str | None = None
        self._pending: dict[str, Any] | None = None
        self._implicit: dict[str, Connection] = {}

    # -- tree --------------------------------------------------------------------------
    def path(self) -> str:
        parts: list[str] = []
        node: BaseModel | None = self
        while node is not None:
            if node._parent is None:
                parts.append(node.name or snake_case(type(node).__name__))
            else:
                parts.append(node._child_name or "?")
            node = node._parent
        return ".".join(reversed(parts))

    def depth(self) -> int:
        depth, node = 0, self._parent
        while node is not None:
            depth, node = depth + 1, node._parent
        return depth

    def root_model(self) -> BaseModel:
        node: BaseModel = self
        while node._parent is not None:
            node = node._parent
        return node

    def _ensure_built(self) -> None:
        """Operators build their inner model lazily; others are always built."""

    def ensure_built(self) -> None:
        """Build an operator's inner model now (it is built lazily, when called, added
        or compiled); nothing for other models."""
        self._ensure_built()

    # -- public read-only view (what summary, dot, serialize and compile read) ---------
    @property
    def parent_model(self) -> Model | None:
        """The model this one is a child of (``None`` at the top)."""
        return self._parent

    @property
    def child_name(self) -> str | None:
        """This model's name in its parent (``linear_0``); ``None`` at the top."""
        return self._child_name

    @property
    def init_args(self) -> Mapping[str, Any]:
        """Read-only parameter name -> argument of the outermost constructor call
        (what ``to_dict`` saves for a model class other than ``Model``)."""
        return MappingProxyType(self.__dict__["_init_args"])

    @property
    def children(self) -> list[BaseModel]:
        """Direct children in the order they were added (none for a primitive)."""
        return []

    def connections(self) -> Mapping[str, Connection]:
        """Read-only name -> connection: a primitive's terminals, or every named
        connection of a composite (its exposed keys, inputs and internal names)."""
        raise NotImplementedError

    def walk(self) -> Iterator[BaseModel]:
        """This model and every model below it, depth first, parents before
        children, children in the order they were added."""
        stack: list[BaseModel] = [self]
        while stack:
            current = stack.pop()
            yield current
            stack.extend(reversed(current.children))

    # -- terminals (overridden) --------------------------------------------------------
    def terminal(self, name: str) -> Connection:
        raise NotImplementedError

    def terminal_names(self) -> list[str]:
        raise NotImplementedError

    def input_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def cin(self) -> Connection:
        """Canonical input connection (used by ``+=``)."""
        raise NotImplementedError

    @property
    def cout(self) -> Connection:
        """Canonical output connection (used by ``+=``)."""
        raise NotImplementedError

    def cin_name(self) -> str | None:
        return None

    def _name_canonical(self, key: str) -> bool:
        """Name an unnamed canonical input/output ``key`` (``input``/``output``) so
        that it can be bound; ``False`` if there is none."""
        return False

    # -- calling -----------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Connection:
        """Bind terminals (positionally in input order, or by name) and return the
        output.

        The model is added to a parent by ``parent |= model(...)``, ``parent += ...``,
        or when a connection that depends on its output is added (functional style).
        """
        self._ensure_built()
        if self._parent is not None:
            msg = f"{self.path()} is already part of a model; create a new instance."
            raise ModelConnectionError(msg)
        bindings: dict[str, Any] = {}
        if args:
            names = self.input_names()
            if len(args) > len(names):
                msg = (
                    f"{self.path()}: {len(args)} positional connections given, but its "
                    f"inputs are {names}."
                )
                raise ModelConnectionError(msg)
            bindings.update(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key in bindings:
                msg = f"{self.path()}: terminal {key!r} given twice."
                raise ModelConnectionError(msg)
            bindings[key] = value
        for key in bindings:
            if key not in self.terminal_names() and not self._name_canonical(key):
                msg = (
                    f"{self.path()}: has no terminal {key!r}; its terminals are "
                    f"{self.terminal_names()}."
                )
                raise ModelConnectionError(msg)
        self._pending = bindings
        self._pending_source = user_source_line()
        return self.cout

    def connect(self, *args: Any, **kwargs: Any) -> Connection:
        """Same as calling the model."""
        return self(*args, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """This model's definition as a JSON-safe dict (``Model.from_dict`` rebuilds
        it)."""
        result: dict[str, Any] = inspect_function("model_to_dict")(self)
        return result

    @staticmethod
    def from_dict(data: dict[str, Any], *, classes: Iterable[type] = ()) -> BaseModel:
        """Rebuild a model from :meth:`to_dict`'s output.

        Safe on untrusted documents: only registered library and plugin classes and
        the ``classes`` given are built (nothing is imported), and malformed or
        oversized documents raise :class:`~mithril_core.errors.ModelDocumentError`.

        :param classes: your own model classes the document may name, e.g.
            ``classes=[ChannelShuffle]``.
        """
        model: BaseModel = inspect_function("model_from_dict")(data, classes=classes)
        return model

    def to_json(self, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> str:
        """:meth:`to_dict` as JSON text (``kwargs`` go to ``json.dumps``), also written
        to ``path`` when given."""
        text: str = inspect_function("model_to_json")(self, **kwargs)
        if path is not None:
            Path(path).write_text(text)
        return text

    @staticmethod
    def from_json(
        source: str | os.PathLike[str], *, classes: Iterable[type] = ()
    ) -> BaseModel:
        """Rebuild a model from :meth:`to_json`'s text (a string starting with ``{``)
        or from a file holding it; see :meth:`from_dict` for ``classes`` and the
        checks."""
        model: BaseModel = inspect_function("model_from_json")(source, classes=classes)
        return model

    def summary(self) -> str:
        """A table of this model's tree: per model its type, input and output shapes
        (symbolic where unknown), parameters and estimated FLOPs (``?`` where a shape
        is not known yet). Returned, not printed: a REPL shows it as the table;
        ``print(model.summary())`` in a script."""
        text: str = inspect_function("logical_summary")(self)
        return text

    def flop_counts(self) -> dict[str, int | None]:
        """Estimated FLOPs of one forward call of this model and of every model below
        it, by :meth:`path`; ``None`` where a needed shape is unknown. A composite's
        count is the sum of its children's (see :meth:`Primitive.flops`)."""
        counts: dict[str, int | None] = inspect_function("logical_flops")(self)
        return counts


class Primitive(BaseModel):
    """A model with no children: one operation with a lowering on every backend.

    Subclasses set ``op_name`` and call ``super().__init__(name=..., **terminals)`` with
    an :class:`IOKey` template (or a constant, or a connection) per terminal; ``output``
    is the output, the others are inputs in the order given. ``rules`` holds shape/type
    rule functions for relations a template cannot express.
    """

    op_name: ClassVar[str] = ""
    rules: ClassVar[tuple[RuleFn, ...]] = ()
    output_name: ClassVar[str] = "output"
    # False for ops whose gradient is zero everywhere it exists (floor division,
    # stop_gradient): no gradient flows back through them.
    differentiable: ClassVar[bool] = True
    #: False for ops whose result is a random draw (dropout): compile never folds
    #: them nor merges two equal calls into one.
    deterministic: ClassVar[bool] = True
    #: Operations per output element for the default :meth:`flops` rule; ``0`` for
    #: ops that only move data (their cost is then 0 even with unknown shapes).
    flops_per_element: ClassVar[int] = 1

    def __init__(self, name: str | None = None, **terminals: Any) -> None:
        super().__init__(name=name)
        if "output" not in terminals:
            msg = f"{type(self).__name__}: a primitive declares an 'output' terminal."
            raise MithrilError(msg)
        symbols: dict[str, sh.Item] = {}
        self._terminals: dict[str, Connection] = {}
        self._inputs: list[str] = [t for t in terminals if t != "output"]
        self.attributes: dict[str, Any] = {}
        for tname, spec in terminals.items():
            conn = Connection(model=self)
            conn.names.append((self, tname))
            self._terminals[tname] = conn
            if isinstance(spec, IOKey):
                if spec.shape_template is not None:
                    conn.shape_node = sh.template(spec.shape_template, symbols)
                conn.types = spec.types
                conn.differentiable = spec.differentiable
                if spec.value is not NOVALUE:
                    conn.set_value(spec.value)
            elif isinstance(spec, Connection):
                self._implicit[tname] = spec
            else:
                self.attributes[tname] = spec
                try:
                    conn.set_value(_normalize_constant(spec))
                except sh.ShapeConflict as exc:
                    msg = f"{type(self).__name__}: {tname}={spec!r}: {exc}"
                    raise ShapeError(msg) from exc
        self._terminals["output"].producer = self
        for fn in self.rules:
            sh.schedule(sh.Rule(fn, self._terminals, self))
        solve()

    def flops(
        self,
        input_shapes: Mapping[str, tuple[int, ...] | None],
        output_shape: tuple[int, ...] | None,
    ) -> int | None:
        """Estimated floating-point operations of one forward call (for ``summary()``).

        Convention: count each arithmetic operation, comparison or elementary function
        (exp, log, sqrt, tanh, erf ...) once per element it is applied to, as the op's
        formula reads (``sigmoid = 1 / (1 + exp(-x))`` is 4 per element); a product of
        sums counts a multiply and an add (matmul: ``2 * M * N * K``); moving data
        (reshape, transpose, indexing, gather, padding) counts 0.

        The default, ``flops_per_element`` times the output's element count, fits
        element-wise ops: set that class attribute, or override this method (as
        reductions, matmul, convolution and pooling do). Constructor constants are in
        ``self.attributes``.

        :param input_shapes: input terminal name -> static shape: a tensor's dims,
            ``()`` for a number, ``None`` when unknown (or neither).
        :param output_shape: the output's static shape, in the same form.
        :returns: the estimate, or ``None`` when a shape it needs is unknown.
        """
        if self.flops_per_element == 0:
            return 0
        if output_shape is None:
            return None
        return self.flops_per_element * math.prod(output_shape)

    def forwarded_input(self, constants: dict[str, Any]) -> str | None:
        """Name of the input the output equals, given the constant inputs, or ``None``.

        Compile removes such calls (``Buffer``, ``Dropout`` in inference ...).
        """
        return None

    def terminal(self, name: str) -> Connection:
        try:
            return self._terminals[name]
        except KeyError:
            msg = (
                f"{self.path()}: has no terminal {name!r}; its terminals are "
                f"{list(self._terminals)}."
            )
            raise ModelConnectionError(msg) from None

    def terminal_names(self) -> list[str]:
        return list(self._terminals)

    def input_names(self) -> list[str]:
        return self._inputs

    def connections(self) -> Mapping[str, Connection]:
        return MappingProxyType(self._terminals)

    @property
    def cin(self) -> Connection:
        return self._terminals[self._inputs[0]]

    @property
    def cout(self) -> Connection:
        return self._terminals["output"]

    def cin_name(self) -> str | None:
        return self._inputs[0] if self._inputs else None

    def __getattr__(self, name: str) -> Connection:
        terminals = self.__dict__.get("_terminals")
        if terminals is not None and name in terminals:
            return terminals[name]
        msg = f"{type(self).__name__!r} object has no attribute {name!r}"
        raise AttributeError(msg)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path()}>"


def _normalize_constant(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic) and not isinstance(value, np.ndarray):
        return value.item()
    if hasattr(value, "name") and hasattr(value, "kind"):  # Dtype
        return value.name
    if isinstance(value, list) and not any(isinstance(v, Connection) for v in value):
        return tuple(value) if all(isinstance(v, int) for v in value) else value
    return value


class Model(BaseModel):
    """A composite model: children connected by named or anonymous connections.

    ``model |= child(...)`` adds ``child`` with explicit bindings;
    ``model += child(...)`` also binds the child's canonical input to this model's
    canonical output.
    """

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self._children: list[BaseModel] = []
        self._conns: dict[str, Connection] = {}
        self._exposed: dict[str, Connection] = {}
        self._class_counts: dict[str, int] = {}
        self._cin: Connection | None = None
        self._cout: Connection | None = None
        self._states: list[tuple[str, float, Connection | None]] = []
        # (child, terminal -> connection, chain) per add, replayed by from_dict.
        self._log: list[tuple[BaseModel, dict[str, Connection], bool]] = []

    # -- composition -------------------------------------------------------------------
    def _take_over(self, inner: Model) -> None:
        """Internal, for models that wrap another (``TrainModel``): make ``inner``'s
        children, connections, exposed keys, canonical input/output, states, log
        and implicit bindings this model's own (shared, not copied); ``inner`` is
        left empty-handed and must not be used again. Connections still name
        ``inner`` as their model; the caller renames them."""
        for child in inner._children:
            sh.record(child, "_parent")
            child._parent = self
        for attr in (
            "_children",
            "_conns",
            "_exposed",
            "_class_counts",
            "_cin",
            "_cout",
            "_states",
            "_log",
        ):
            sh.record(self, attr)
            setattr(self, attr, getattr(inner, attr))
        sh.record_items(self._implicit)
        self._implicit.update(inner._implicit)

    def __ior__(self, other: BaseModel | Connection) -> Self:
        self._extend(other, chain=False)
        return self

    def __iadd__(self, other: BaseModel | Connection) -> Self:
        self._extend(other, chain=True)
        return self

    def _extend(self, other: BaseModel | Connection, *, chain: bool) -> None:
        self._ensure_built()
        if isinstance(other, Connection):
            owner = _pending_owner(other)
            if owner is None:
                msg = (
                    f"{self.path()}: {other.display_name()} "
                    "is not the result of a call; "
                    "add a model or the result of calling one."
                )
                raise ModelConnectionError(msg)
            other = owner
        if not isinstance(other, BaseModel):
            msg = f"{self.path()}: cannot add {other!r}; add a model or a call result."
            raise TypeError(msg)
        self._add(other, other._pending or {}, chain=chain)

    def _add(self, child: BaseModel, bindings: dict[str, Any], *, chain: bool) -> None:
        # One transaction: a step that fails leaves this model (and every connection,
        # dim and IOKey it touched) exactly as it was. An operator builds its inner
        # model first, outside it: that build is the child's own, not the step's.
        child._ensure_built()
        with sh.transaction():
            self._add_step(child, bindings, chain=chain)

    def _add_step(
        self, child: BaseModel, bindings: dict[str, Any], *, chain: bool
    ) -> None:
        child._ensure_built()
        if child._parent is not None:
            msg = f"{child.path()} is already part of a model; create a new instance."
            raise ModelConnectionError(msg)
        if child is self or _is_ancestor(child, self):
            msg = f"{self.path()}: cannot add a model to itself."
            raise ModelConnectionError(msg)
        source = getattr(child, "_pending_source", None) or user_source_line()
        all_bindings: dict[str, Any] = dict(child._implicit)
        all_bindings.update(bindings)
        cin_name = child.cin_name()
        if chain and self._cout is not None and cin_name is not None:
            all_bindings.setdefault(cin_name, self._cout)
        # Resolve targets first: pulling in pending calls they depend on keeps the
        # children list in dependency order.
        targets = {t: self._resolve(v, t, child) for t, v in all_bindings.items()}
        for attr in ("_parent", "_child_name", "_pending"):
            sh.record(child, attr)
        child._parent = self
        child._child_name = self._child_name_for(child)
        child._pending = None
        try:
            for term, target in targets.items():
                child_conn = child.terminal(term)
                sh.record_length(child_conn.find().sources)
                child_conn.find().sources.append(source)
                merge(child_conn, target, f"{child.path()}.{term}")
            solve()
        except Exception:
            child._parent = None
            raise
        sh.record_length(self._children)
        sh.record_length(self._log)
        self._children.append(child)
        self._log.append((child, targets, chain))
        self._update_canonical(child, chain)

    def _taken_names(self) -> set[str | None]:
        """Child names in use; kept up to date incrementally (a rolled-back step
        shortens ``_children``, which rebuilds it)."""
        children = self._children
        cached = self.__dict__.get("_taken")
        if cached is None or cached[2] is not children or cached[0] > len(children):
            names = {c._child_name for c in children}
        else:
            names = cached[1]
            names.update(c._child_name for c in children[cached[0] :])
        self.__dict__["_taken"] = (len(children), names, children)
        return names

    def _child_name_for(self, child: BaseModel) -> str:
        taken = self._taken_names()
        if child.name is not None:
            if child.name in taken:
                msg = f"{self.path()}: a child named {child.name!r} already exists."
                raise ModelConnectionError(msg)
            return child.name
        base = snake_case(type(child).__name__)
        index = self._class_counts.get(base, 0)
        while f"{base}_{index}" in taken:
            index += 1
        sh.record_key(self._class_counts, base)
        self._class_counts[base] = index + 1
        return f"{base}_{index}"

    def _update_canonical(self, child: BaseModel, chain: bool) -> None:
        sh.record(self, "_cin")
        sh.record(self, "_cout")
        child_cout = child.cout
        # The canonical input is a free input: never a connection something inside
        # writes (a later child may produce it) and never a constant.
        if self._cin is None or not _is_free(self._cin):
            self._cin = self._free_input(child)
        named_output = self._exposed.get("output")
        writes_output = (
            named_output is not None and child_cout.find() is named_output.find()
        )
        if self._cout is None or chain or writes_output:
            self._cout = child_cout
            return
        current = self._cout.find()
        if any(child.terminal(n).find() is current for n in child.input_names()):
            self._cout = child_cout

    def _free_input(self, child: BaseModel) -> Connection | None:
        """The new canonical input: ``child``'s canonical input if free, else its
        first free input, else the first free connection of this model."""
        candidates: list[Connection] = []
        if child.cin_name() is not None:
            candidates.append(child.cin)
        candidates.extend(child.terminal(n) for n in child.input_names())
        candidates.extend(self._conns.values())
        return next((c for c in candidates if _is_free(c)), None)

    def _resolve(self, value: Any, term: str, child: BaseModel) -> Connection:
        if isinstance(value, IOKey) and value.model is None:
            return self._register_iokey(value)
        if isinstance(value, Connection):
            return self._adopt(value)
        if isinstance(value, str):
            return self._named(value)
        if isinstance(value, list | tuple) and _has_connection(value):
            elements = [
                self._resolve(v, term, child) if isinstance(v, str | Connection) else v
                for v in value
            ]
            maker = operator("ToList" if isinstance(value, list) else "ToTuple")
            return self._adopt(maker(len(elements))(*elements))
        conn = Connection(model=self)
        try:
            conn.set_value(_normalize_constant(value))
        except (sh.ShapeConflict, TypeError) as exc:
            msg = f"{self.path()}: cannot bind {term}={value!r}: {exc}"
            raise ModelConnectionError(msg) from exc
        return conn

    def _named(self, name: str) -> Connection:
        conn = self._conns.get(name)
        if conn is None:
            conn = Connection(model=self)
            conn.names.append((self, name))
            sh.record_key(self._conns, name)
            self._conns[name] = conn
        return conn

    def _register_iokey(self, key: IOKey) -> Connection:
        sh.record(key, "model")
        key.model = self
        name = key.key_name
        if name is None:
            if key.expose:
                unnamed = f"__unnamed_{len(self._exposed)}"
                sh.record_key(self._exposed, unnamed)
                self._exposed[unnamed] = key
            return key
        existing = self._conns.get(name)
        if existing is None:
            sh.record_length(key.names)
            sh.record_key(self._conns, name)
            key.names.append((self, name))
            self._conns[name] = key
            target: Connection = key
        else:
            target = merge(key, existing, f"{self.path()}.{name}")
        if key.expose is not False:
            sh.record_key(self._exposed, name)
            self._exposed[name] = self._conns[name]
        return target

    def _adopt(self, conn: Connection) -> Connection:
        if conn.model is None:
            if isinstance(conn, IOKey):
                return self._register_iokey(conn)
            msg = f"{self.path()}: connection {conn!r} belongs to no model."
            raise ModelConnectionError(msg)
        top = conn.model.root_model()
        if top is not self.root_model():
            if top._pending is None:
                msg = (
                    f"{self.path()}: {conn.display_name()} belongs to model "
                    f"{top.path()}, which is not part of {self.path()}. "
                    "Call that model "
                    "(or add it) before using its connections."
                )
                raise ModelConnectionError(msg)
            # Pull in the pending calls ``top`` depends on, dependencies first, one
            # after another: a long functional chain (an unrolled RNN) must not
            # recurse once per call.
            for pending in _pending_calls(top):
                if pending._pending is not None and pending._parent is None:
                    self._add(pending, pending._pending, chain=False)
        elif not _is_ancestor(self, conn.model) and conn.model is not self:
            msg = (
                f"{self.path()}: {conn.display_name()} belongs to "
                f"{conn.model.path()}, outside {self.path()}."
            )
            raise ModelConnectionError(msg)
        return conn

    def symbolic(self, name: str, value: Any) -> Any:
        """Accept a constructor argument that may be symbolic (a connection such as
        ``x.shape[1]``): return a constant unchanged, or create the input ``name`` in
        this model, bound to the connection when this model is added to a parent, and
        return ``name`` for binding children to it."""
        if not isinstance(value, Connection):
            return value
        self._named(name)
        self._implicit[name] = value
        return name

    def add_state(
        self, name: str, init: float, updated: Connection | None = None
    ) -> None:
        """Declare the input ``name`` as state (e.g. BatchNorm running statistics).

        State is supplied with the params, initialised to ``init`` by
        ``randomize_params``, never trained; when compiled for training, ``updated`` is
        returned as the extra output ``"<state key>_updated"``.
        """
        conn = self.terminal(name)
        conn.find().differentiable = False
        self._states.append((name, init, updated))

    # -- terminals ---------------------------------------------------------------------
    def terminal(self, name: str) -> Connection:
        conn = self._conns.get(name)
        if conn is None:
            msg = (
                f"{self.path()}: has no connection {name!r}; its connections are "
                f"{list(self._conns)}."
            )
            raise ModelConnectionError(msg)
        return conn

    def terminal_names(self) -> list[str]:
        return list(self._conns)

    def input_names(self) -> list[str]:
        """Inputs in positional-call order: the canonical input first."""
        names = [
            name
            for name, conn in self._conns.items()
            if (root := conn.find()).producer is None and root.value is NOVALUE
        ]
        if "input" in names:
            names.remove("input")
            names.insert(0, "input")
        elif self._cin is not None:
            cin = self._cin.find()
            first = [n for n in names if self._conns[n].find() is cin]
            names = first + [n for n in names if n not in first]
        return names

    def output_names(self) -> list[str]:
        return [n for n in self._exposed if not n.startswith("__unnamed_")]

    def connections(self) -> Mapping[str, Connection]:
        self._ensure_built()
        return MappingProxyType(self._conns)

    def exposed(self) -> Mapping[str, Connection]:
        """Read-only exposed key -> connection: the keys a compiled model takes or
        returns by these names (unnamed outputs as ``__unnamed_<n>``)."""
        self._ensure_built()
        return MappingProxyType(self._exposed)

    def states(self) -> list[tuple[str, float, Connection | None]]:
        """The inputs declared as state by :meth:`add_state` in this model (not its
        children), as ``(name, init, updated)`` in declaration order."""
        self._ensure_built()
        return list(self._states)

    def additions(self) -> list[tuple[BaseModel, Mapping[str, Connection], bool]]:
        """Every ``|=``/``+=`` step of this model in order, as ``(child, terminal ->
        connection it was bound to, chain)`` (``chain`` is true for ``+=``); what
        ``to_dict`` saves and :meth:`replay_addition` repeats."""
        self._ensure_built()
        return [
            (child, MappingProxyType(targets), chain)
            for child, targets, chain in self._log
        ]

    def replay_addition(
        self, child: BaseModel, bindings: dict[str, Any], *, chain: bool
    ) -> None:
        """Add ``child`` with ``bindings`` (terminal -> connection, key name or
        value) as one ``|=`` (``chain=False``) or ``+=`` (``chain=True``) step, one
        transaction, as :meth:`additions` lists it; for ``from_dict``. Prefer
        ``model |= child(...)`` in user code."""
        self._add(child, bindings, chain=chain)

    @property
    def last_output(self) -> Connection | None:
        """The canonical output as last written by ``+=``/``|=`` (``None`` before
        any child is added); unlike :attr:`cout`, no fallback to the exposed
        ``output`` and no error."""
        self._ensure_built()
        return self._cout

    @property
    def cin(self) -> Connection:
        self._ensure_built()
        conn = self._conns.get("input")
        if conn is not None and _is_free(conn):
            return conn
        if self._cin is None:
            if self._children:
                msg = (
                    f"{self.path()}: has no canonical input: every connection is "
                    "written by a child or holds a value. Bind the input by name "
                    "instead of using cin or +=."
                )
            else:
                msg = f"{self.path()}: has no canonical input yet (add a model first)."
            raise ModelConnectionError(msg)
        return self._cin

    @property
    def cout(self) -> Connection:
        self._ensure_built()
        # The last output written (``+=``, or ``|=`` reading the previous one), even
        # when an earlier child's output is exposed as "output".
        if self._cout is not None:
            return self._cout
        conn = self._exposed.get("output")
        if conn is not None:
            return conn
        if self._cout is None:
            msg = f"{self.path()}: has no canonical output yet (add a model first)."
            raise ModelConnectionError(msg)
        return self._cout

    def cin_name(self) -> str | None:
        self._ensure_built()
        named = self._conns.get("input")
        if self._cin is None and (named is None or not _is_free(named)):
            return None
        cin = self.cin.find()
        for name, conn in self._conns.items():
            if conn.find() is cin:
                return name
        # An unnamed canonical input: name it so that a parent can bind it.
        name = "input" if "input" not in self._conns else f"input_{len(self._conns)}"
        sh.record_key(self._conns, name)
        sh.record_length(cin.names)
        self._conns[name] = self._cin  # type: ignore[assignment]
        cin.names.append((self, name))
        return name

    def _name_canonical(self, key: str) -> bool:
        # ``shortcut(input=..., output=...)`` on a model built only with ``+=``.
        if key == "input" and self._cin is not None:
            return self.cin_name() == "input"
        if key == "output" and self._cout is not None and key not in self._conns:
            sh.record_key(self._conns, key)
            sh.record_length(self._cout.find().names)
            self._conns[key] = self._cout
            self._cout.find().names.append((self, key))
            return True
        return False

    def __getattr__(self, name: str) -> Connection:
        if name.startswith("_"):
            raise AttributeError(name)
        self._ensure_built()
        conns = self.__dict__.get("_conns")
        if conns is not None and name in conns:
            return conns[name]
        msg = f"{type(self).__name__!r} object has no attribute or connection {name!r}"
        raise AttributeError(msg)

    @property
    def children(self) -> list[BaseModel]:
        self._ensure_built()
        return list(self._children)

    def primitives(self) -> Iterator[tuple[Primitive, str]]:
        """Yield every primitive below this model with its ``_``-joined path."""
        self._ensure_built()
        stack: list[tuple[BaseModel, str]] = [
            (c, c._child_name or "") for c in reversed(self._children)
        ]
        while stack:
            model, path = stack.pop()
            if isinstance(model, Primitive):
                yield model, path
            else:
                assert isinstance(model, Model)
                stack.extend(
                    (c, f"{path}_{c._child_name}") for c in reversed(model._children)
                )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path()}>"


class Operator(Model):
    """A reusable composite: subclass it and build the inner model in ``create_model``.

    The inner model is created lazily (when the operator is called, added or compiled),
    so the subclass's ``__init__`` can set attributes after ``super().__init__``.
    """

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self._built = False

    def create_model(self) -> Model:
        """Return the model this operator stands for."""
        raise NotImplementedError

    def _ensure_built(self) -> None:
        if self.__dict__.get("_built", True):
            return
        # Recorded like the rest: a build inside a step that fails is undone whole,
        # and the operator builds again when next used.
        sh.record(self, "_built")
        self._built = True
        inner = self.create_model()
        if not isinstance(inner, Model):
            msg = f"{type(self).__name__}.create_model() must return a Model."
            raise TypeError(msg)
        inner._ensure_built()
        self._take_over(inner)
        for conn in self._conns.values():
            root = conn.find()
            sh.record(root, "names")
            root.names = [(self if m is inner else m, n) for m, n in root.names]
            if conn.model is inner:
                sh.record(conn, "model")
                conn.model = self
        for conn in self._exposed.values():
            if conn.model is inner:
                sh.record(conn, "model")
                conn.model = self


def _is_free(conn: Connection) -> bool:
    """Whether ``conn`` is an input nothing writes and no constant fills."""
    root = conn.find()
    return root.producer is None and root.value is NOVALUE


def _is_ancestor(ancestor: BaseModel, model: BaseModel) -> bool:
    node = model._parent
    while node is not None:
        if node is ancestor:
            return True
        node = node._parent
    return False


def _has_connection(values: list[Any] | tuple[Any, ...]) -> bool:
    return any(isinstance(v, Connection | str) for v in values)


def _pending_calls(top: BaseModel) -> list[BaseModel]:
    """``top`` and every pending call it depends on through its bindings, each after
    the calls it depends on (iterative depth-first post-order)."""

    def dependencies(model: BaseModel) -> Iterator[BaseModel]:
        values = [*model._implicit.values(), *(model._pending or {}).values()]
        while values:
            value = values.pop(0)
            if isinstance(value, list | tuple):
                values[:0] = value
            elif isinstance(value, Connection):
                owner = _pending_owner(value)
                if owner is not None and owner is not model:
                    yield owner

    order: list[BaseModel] = []
    seen = {id(top)}
    stack = [(top, dependencies(top))]
    while stack:
        model, remaining = stack[-1]
        for dependency in remaining:
            if id(dependency) not in seen:
                seen.add(id(dependency))
                stack.append((dependency, dependencies(dependency)))
                break
        else:
            stack.pop()
            order.append(model)
    return order


def _pending_owner(conn: Connection) -> BaseModel | None:
    if conn.model is None:
        return None
    top = conn.model.root_model()
    return top if top._pending is not None else None


def solve() -> None:
    """Run the shape/type rules to a fixed point, raising a located error on
    conflict."""
    sh.solve(_raise_rule_error)


def _raise_rule_error(rule: sh.Rule, exc: Exception) -> None:
    if isinstance(exc, MithrilError):
        return
    owner = rule.owner
    details = ", ".join(
        f"{name}: {conn.find().shape_repr()}{_user_side(conn, owner)}"
        for name, conn in rule.terminals.items()
        if ty.TENSORS & conn.find().types
    )
    sources = list(
        dict.fromkeys(s for c in rule.terminals.values() for s in c.find().sources)
    )
    where = f" (connected at {'; '.join(sources[-4:])})" if sources else ""
    msg = f"{owner.path()}: {exc} [{details}]{where}"
    raise ShapeError(msg) from exc


def _user_side(conn: Connection, owner: BaseModel) -> str:
    """`` (model.lhs_tensor, from model.relu_0.output)``: what the user named the
    connection bound to one of ``owner``'s terminals, and which model writes it."""
    root = conn.find()
    named = [(m, n) for m, n in root.names if m is not owner]
    parts: list[str] = []
    if named:
        model, name = min(named, key=lambda mn: mn[0].depth())
        parts.append(f"{model.path()}.{name}")
    producer = root.producer
    if producer is not None and producer is not owner:
        parts.append(f"from {producer.path()}.output")
    return f" ({', '.join(parts)})" if parts else ""
