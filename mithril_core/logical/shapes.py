"""Symbolic shapes: union-find dims and variadic runs, unification, and the rule
worklist.

A shape is a sequence of :class:`Dim` (one axis, a known int or a symbol) with at most
one :class:`Var` (a run of zero or more axes whose length is not yet known). Binding two
terminals to one connection unifies their shapes; primitives add :class:`Rule` objects
for relations a template cannot say (broadcasting, reductions ...). Rules watch the dims
and runs they read and re-run only when one of those changes, so composition stays
near-linear in model size.
"""

from __future__ import annotations

import gc
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

_counter = itertools.count()

# -- undo trail ------------------------------------------------------------------------
# A composition step (``|=``/``+=``) is a transaction: every change it makes to dims,
# runs, connections and models is recorded here first, and undone in reverse order if
# the step fails, so a failed step leaves the model as it was.
# Flat, three slots per change (object, what, old value): appending to one list
# allocates no tuple per change, which keeps the garbage collector out of large steps.
_TRAIL: list[Any] | None = None
_MISSING: Any = object()
# Markers for in-place changes (an entry is ``(container, marker, detail)``).
_ITEMS, _LENGTH, _KEY, _ADDED = "items", "length", "key", "added"
_ITEMS_MARK, _LENGTH_MARK, _ADDED_MARK = (_ITEMS,), (_LENGTH,), (_ADDED,)


def record(obj: Any, attr: str) -> None:
    """Remember ``obj.attr`` before it is reassigned (no-op outside a transaction)."""
    if _TRAIL is not None:
        _TRAIL.extend((obj, attr, getattr(obj, attr)))


def record_items(container: list[Any] | dict[Any, Any] | set[Any] | None) -> None:
    """Remember all items of ``container`` before it is changed in place."""
    if _TRAIL is not None and container is not None:
        _TRAIL.extend((container, _ITEMS_MARK, container.copy()))


def record_length(items: list[Any]) -> None:
    """Remember the length of ``items`` before something is appended to it."""
    if _TRAIL is not None:
        _TRAIL.extend((items, _LENGTH_MARK, len(items)))


def record_key(mapping: dict[Any, Any], key: Any) -> None:
    """Remember ``mapping[key]`` (or its absence) before it is set."""
    if _TRAIL is not None:
        _TRAIL.extend((mapping, (_KEY, key), mapping.get(key, _MISSING)))


def record_added(items: set[Any], item: Any) -> None:
    """Remember that ``item`` is about to be added to ``items`` (it is not in it)."""
    if _TRAIL is not None:
        _TRAIL.extend((items, _ADDED_MARK, item))


def _undo(obj: Any, what: Any, old: Any) -> None:
    if isinstance(what, str):
        setattr(obj, what, old)
        return
    kind = what[0]
    if kind == _LENGTH:
        del obj[old:]
    elif kind == _KEY:
        if old is _MISSING:
            obj.pop(what[1], None)
        else:
            obj[what[1]] = old
    elif kind == _ADDED:
        obj.discard(old)
    elif isinstance(obj, list):
        obj[:] = old
    else:
        obj.clear()
        obj.update(old)


def _roll_back(trail: list[Any]) -> None:
    clear_queue()
    for at in range(len(trail) - 3, -1, -3):
        _undo(trail[at], trail[at + 1], trail[at + 2])


@contextmanager
def _recording(*, always_undo: bool) -> Iterator[None]:
    global _TRAIL
    trail: list[Any] = []
    _TRAIL = trail
    # The trail keeps every replaced value alive until the step ends, so a large step
    # (an unrolled RNN pulls thousands of calls into one) made the cyclic collector
    # rescan a growing heap; the step's garbage is collected after it instead.
    collect = gc.isenabled()
    gc.disable()
    try:
        yield
    except BaseException:
        _TRAIL = None
        _roll_back(trail)
        raise
    else:
        _TRAIL = None
        if always_undo:
            _roll_back(trail)
    finally:
        _TRAIL = None
        if collect:
            gc.enable()


@contextmanager
def transaction() -> Iterator[None]:
    """Undo every recorded change if the body raises; nested uses join the outer one."""
    if _TRAIL is not None:
        yield
        return
    with _recording(always_undo=False):
        yield


@contextmanager
def scratch() -> Iterator[None]:
    """Record every change made in the body and undo them all when it ends, whether
    it returns or raises: compile specialises a model this way, reads what it needs,
    and leaves the model as it was (no copy of the model)."""
    if _TRAIL is not None:
        msg = "scratch() cannot run inside a composition step"
        raise RuntimeError(msg)
    with _recording(always_undo=True):
        yield


class ShapeConflict(Exception):  # noqa: N818 - internal signal, converted to ShapeError
    """Raised inside the solver; callers turn it into a ShapeError with paths.

    ``dims`` holds the two dims that disagree, when two dims do, so that a message can
    say which other connections share each of them."""

    def __init__(self, msg: str, dims: tuple[Dim, Dim] | None = None) -> None:
        super().__init__(msg)
        self.dims = dims


class Dim:
    """One axis: a union-find node that is either a known ``int`` or a symbol."""

    __slots__ = ("parent", "value", "name", "watchers", "rank")

    def __init__(self, value: int | None = None, name: str | None = None) -> None:
        self.parent: Dim | None = None
        self.value = value
        self.name = name
        self.watchers: set[Rule] | None = None
        self.rank = 0

    def find(self) -> Dim:
        node = self
        while node.parent is not None:
            node = node.parent
        current = self
        while current.parent is not None and current.parent is not node:
            if _TRAIL is not None:
                _TRAIL.extend((current, "parent", current.parent))
            current.parent, current = node, current.parent
        return node

    def __repr__(self) -> str:
        root = self.find()
        if root.value is not None:
            return str(root.value)
        return root.name or "None"


class Var:
    """A variadic run of axes; once resolved it stands for
    ``prefix + [inner] + suffix``."""

    __slots__ = ("parent", "resolved", "name", "watchers")

    def __init__(self, name: str | None = None) -> None:
        self.parent: Var | None = None
        self.resolved: tuple[list[Dim], Var | None, list[Dim]] | None = None
        self.name = name
        self.watchers: set[Rule] | None = None

    def find(self) -> Var:
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def __repr__(self) -> str:
        return f"{self.name or 'V'}..."


Item = Dim | Var


def expand(items: Sequence[Item]) -> tuple[list[Dim], Var | None, list[Dim]]:
    """Return ``(prefix, variadic root or None, suffix)`` with all dims as roots."""
    prefix: list[Dim] = []
    suffix: list[Dim] = []
    var: Var | None = None
    for item in items:
        if isinstance(item, Dim):
            (suffix if var is not None else prefix).append(item.find())
            continue
        pre, inner, suf = _expand_var(item)
        if var is None:
            prefix.extend(pre)
            if inner is None:
                prefix.extend(suf)
            else:
                var = inner
                suffix.extend(suf)
        else:
            suffix.extend(pre)
            suffix.extend(suf)
    return prefix, var, suffix


def _expand_var(var: Var) -> tuple[list[Dim], Var | None, list[Dim]]:
    root = var.find()
    if root.resolved is None:
        return [], root, []
    pre, inner, suf = root.resolved
    pre = [d.find() for d in pre]
    suf = [d.find() for d in suf]
    if inner is None:
        return pre, None, suf
    ipre, iinner, isuf = _expand_var(inner)
    result = (pre + ipre, iinner, isuf + suf)
    record(root, "resolved")
    root.resolved = (result[0], result[1], result[2])  # path compression
    return result


class ShapeNode:
    """The shape of one connection (items are shared with other shapes after
    unification)."""

    __slots__ = ("items",)

    def __init__(self, items: list[Item]) -> None:
        self.items = items

    @classmethod
    def unknown(cls) -> ShapeNode:
        return cls([Var()])

    def expanded(self) -> tuple[list[Dim], Var | None, list[Dim]]:
        pre, var, suf = expand(self.items)
        # Without a variadic the prefix list itself becomes ``items`` (no copy: hot).
        items: list[Item] = (
            [*pre, var, *suf] if var is not None else cast("list[Item]", pre)
        )
        if _TRAIL is not None:
            # Keep (and remember) the old list only when the expansion changed it.
            if len(items) == len(self.items) and all(
                a is b for a, b in zip(items, self.items, strict=True)
            ):
                return pre, var, suf
            record(self, "items")
        self.items = items
        return pre, var, suf

    def dims(self) -> list[Dim] | None:
        """All dims when the rank is known, else ``None``."""
        pre, var, suf = self.expanded()
        return pre if var is None else None

    def values(self) -> list[int | None] | None:
        """Dim values (``None`` for symbols) when the rank is known."""
        dims = self.dims()
        return None if dims is None else [d.value for d in dims]

    def watch(self, rule: Rule) -> None:
        for item in self.items:
            root = item.find()
            if root.watchers is None:
                record(root, "watchers")
                root.watchers = set()
            elif rule in root.watchers:
                continue
            record_added(root.watchers, rule)
            root.watchers.add(rule)

    def __repr__(self) -> str:
        pre, var, suf = self.expanded()
        parts = [repr(d) for d in pre]
        if var is not None:
            parts.append("...")
            parts.extend(repr(d) for d in suf)
        return "[" + ", ".join(parts) + "]"


def template(spec: Sequence[Any] | None, symbols: dict[str, Item]) -> ShapeNode:
    """Build a shape from a template: ints, named dims (str), ``None`` and
    ``("V", ...)``.

    Names are looked up in (and added to) ``symbols`` so that one name ties dims across
    the terminals of a primitive.
    """
    if spec is None:
        return ShapeNode.unknown()
    items: list[Item] = []
    for element in spec:
        if isinstance(element, tuple) and len(element) == 2 and element[1] is ...:
            name = str(element[0])
            var = symbols.get(name)
            if var is None:
                var = symbols[name] = Var(name)
            items.append(var)
        elif isinstance(element, str):
            dim = symbols.get(element)
            if dim is None:
                dim = symbols[element] = Dim(name=element)
            items.append(dim)
        elif element is None:
            items.append(Dim())
        elif isinstance(element, Dim):
            items.append(element)
        elif isinstance(element, int) and not isinstance(element, bool):
            if element < 0:
                msg = f"Shape template dims must be >= 0, got {element}."
                raise ShapeConflict(msg)
            items.append(Dim(element))
        else:
            msg = f"Invalid shape template element {element!r}."
            raise TypeError(msg)
    if sum(isinstance(i, Var) for i in items) > 1:
        msg = f"A shape template has at most one variadic run: {spec!r}."
        raise TypeError(msg)
    return ShapeNode(items)


# -- unification -----------------------------------------------------------------------


def unify_dims(a: Dim, b: Dim) -> None:
    a, b = a.find(), b.find()
    if a is b:
        return
    if a.value is not None and b.value is not None and a.value != b.value:
        msg = f"{a.value} != {b.value}"
        raise ShapeConflict(msg, (a, b))
    if a.rank < b.rank:
        a, b = b, a
    if _TRAIL is not None:
        for obj, attr in ((a, "rank"), (a, "value"), (a, "name"), (a, "watchers")):
            record(obj, attr)
        record(b, "parent")
        record(b, "watchers")
    b.parent = a
    if a.rank == b.rank:
        a.rank += 1
    # Only a merge that tells a side something new wakes that side's rules: a value it
    # lacked, or equality with a dim other rules constrain. Re-stating a known value
    # (a rule unifying fresh ``Dim(74)`` with a dim already 74) is no news; waking on
    # it let rules that rebuild shapes re-queue each other forever.
    a_informed = b.value is None and (a.value is not None or bool(a.watchers))
    b_informed = a.value is None and (b.value is not None or bool(b.watchers))
    a_watchers, b_watchers = a.watchers, b.watchers
    if a.value is None:
        a.value = b.value
    if a.name is None:
        a.name = b.name
    if a_watchers or b_watchers:
        a.watchers = (a_watchers or set()) | (b_watchers or set())
    b.watchers = None
    if b_informed:
        _notify(a_watchers)
    if a_informed:
        _notify(b_watchers)


def set_dim(dim: Dim, value: int) -> None:
    root = dim.find()
    if root.value == value:
        return
    if root.value is not None:
        msg = f"{root.value} != {value}"
        raise ShapeConflict(msg)
    record(root, "value")
    root.value = value
    _notify(root.watchers)


def _merge_watchers(keep: Dim | Var, gone: Dim | Var) -> None:
    watchers: set[Rule] = set()
    if keep.watchers:
        watchers |= keep.watchers
    if gone.watchers:
        watchers |= gone.watchers
    record(keep, "watchers")
    record(gone, "watchers")
    keep.watchers = watchers or None
    gone.watchers = None
    _notify(watchers)


def _resolve(var: Var, pre: list[Dim], inner: Var | None, suf: list[Dim]) -> None:
    root = var.find()
    if inner is not None and inner.find() is root:
        if pre or suf:
            msg = "a variadic run cannot contain itself"
            raise ShapeConflict(msg)
        return
    if inner is not None and not pre and not suf:
        inner_root = inner.find()
        record(root, "parent")
        root.parent = inner_root
        _merge_watchers(inner_root, root)
        return
    record(root, "resolved")
    record(root, "watchers")
    root.resolved = (pre, inner, suf)
    watchers = root.watchers
    root.watchers = None
    if inner is not None and watchers:
        inner_root = inner.find()
        record(inner_root, "watchers")
        inner_root.watchers = (inner_root.watchers or set()) | watchers
    _notify(watchers)


def unify(a: ShapeNode, b: ShapeNode) -> None:
    """Make two shapes equal, or raise :class:`ShapeConflict`."""
    if a is b:
        return
    apre, avar, asuf = a.expanded()
    bpre, bvar, bsuf = b.expanded()
    if avar is None and bvar is None:
        if len(apre) != len(bpre):
            msg = "rank mismatch"
            raise ShapeConflict(msg)
        for x, y in zip(apre, bpre, strict=True):
            unify_dims(x, y)
        return
    if avar is not None and bvar is not None and avar is bvar:
        if len(apre) != len(bpre) or len(asuf) != len(bsuf):
            msg = "rank mismatch"
            raise ShapeConflict(msg)
        for x, y in zip(apre + asuf, bpre + bsuf, strict=True):
            unify_dims(x, y)
        return
    if avar is None:
        apre, avar, asuf, bpre, bvar, bsuf = bpre, bvar, bsuf, apre, avar, asuf
    # Now a has a variadic run.
    assert avar is not None
    if bvar is None:
        full = bpre
        if len(full) < len(apre) + len(asuf):
            msg = "rank mismatch"
            raise ShapeConflict(msg)
        for x, y in zip(apre, full[: len(apre)], strict=True):
            unify_dims(x, y)
        tail = full[len(full) - len(asuf) :] if asuf else []
        for x, y in zip(asuf, tail, strict=True):
            unify_dims(x, y)
        _resolve(avar, full[len(apre) : len(full) - len(asuf)], None, [])
        return
    # Both have variadic runs: match common prefix and suffix lengths.
    n = min(len(apre), len(bpre))
    for x, y in zip(apre[:n], bpre[:n], strict=True):
        unify_dims(x, y)
    m = min(len(asuf), len(bsuf))
    for x, y in zip(asuf[len(asuf) - m :], bsuf[len(bsuf) - m :], strict=True):
        unify_dims(x, y)
    arest_pre, brest_pre = apre[n:], bpre[n:]
    arest_suf, brest_suf = asuf[: len(asuf) - m], bsuf[: len(bsuf) - m]
    if not arest_pre and not arest_suf:
        _resolve(avar, brest_pre, bvar, brest_suf)
    elif not brest_pre and not brest_suf:
        _resolve(bvar, arest_pre, avar, arest_suf)
    elif not arest_pre and not brest_suf:
        # a = V + s_a, b = p_b + W  =>  V = p_b + X, W = X + s_a
        fresh = Var()
        _resolve(avar, brest_pre, fresh, [])
        _resolve(bvar, [], fresh, arest_suf)
    else:
        fresh = Var()
        _resolve(avar, [], fresh, brest_suf)
        _resolve(bvar, arest_pre, fresh, [])


def unify_with_dims(shape: ShapeNode, dims: Iterable[Dim | int | None]) -> None:
    """Unify ``shape`` with a rank-known list of dims (ints become fixed dims)."""
    items: list[Item] = []
    for d in dims:
        if isinstance(d, Dim):
            items.append(d)
        else:
            items.append(Dim(d))
    unify(shape, ShapeNode(items))


# -- rules and the worklist ------------------------------------------------------------


class Rule:
    """A relation between terminals of one primitive, re-run when what it reads changes.

    ``fn(rule)`` inspects ``rule.terminals`` (name -> Connection), applies what it can
    and returns ``True`` when nothing more can be learned.
    """

    __slots__ = ("fn", "terminals", "owner", "done", "queued", "__weakref__", "order")

    def __init__(
        self, fn: Callable[[Rule], bool], terminals: dict[str, Any], owner: Any
    ) -> None:
        self.fn = fn
        self.terminals = terminals
        self.owner = owner
        self.done = False
        self.queued = False
        self.order = next(_counter)

    def conn(self, name: str) -> Any:
        return self.terminals[name].find()

    def run(self) -> None:
        if self.done:
            return
        for conn in self.terminals.values():
            conn.find().watch(self)
        if self.fn(self):
            record(self, "done")
            self.done = True

    def __repr__(self) -> str:
        return f"Rule({getattr(self.fn, '__name__', self.fn)!r} of {self.owner!r})"


_QUEUE: deque[Rule] = deque()


def _notify(watchers: set[Rule] | None) -> None:
    if not watchers:
        return
    # Wake in creation order, not set order (ids hash by address), so that solving is
    # the same from run to run.
    for rule in sorted(watchers, key=_rule_order):
        if not rule.done and not rule.queued:
            rule.queued = True
            _QUEUE.append(rule)


def schedule(rule: Rule) -> None:
    if not rule.done and not rule.queued:
        rule.queued = True
        _QUEUE.append(rule)


def notify(watchers: set[Rule] | None) -> None:
    """Queue every pending rule in ``watchers`` (called on type or value changes)."""
    _notify(watchers)


#: A rule re-runs only when a dim, run, type or value it watches gains information,
#: and each can gain it a bounded number of times, so a rule that runs this often in
#: one solve has a bug (it reports news it does not bring); stop with an error instead
#: of looping.
MAX_RULE_RUNS = 10_000


def _rule_order(rule: Rule) -> int:
    return rule.order


def solve(on_error: Callable[[Rule, Exception], None]) -> None:
    """Run queued rules to a fixed point; ``on_error`` turns a conflict into a user
    error."""
    runs: dict[Rule, int] = {}
    while _QUEUE:
        rule = _QUEUE.popleft()
        rule.queued = False
        count = runs[rule] = runs.get(rule, 0) + 1
        try:
            if count > MAX_RULE_RUNS:
                name = getattr(rule.fn, "__name__", repr(rule.fn))
                msg = (
                    f"the shape solver made no progress: rule {name!r} ran "
                    f"{MAX_RULE_RUNS} times in one solve without finishing. This is a "
                    "bug in that rule; please report it with the model."
                )
                raise ShapeConflict(msg)
            rule.run()
        except Exception as exc:  # converted to a user-facing error with paths
            clear_queue()
            on_error(rule, exc)
            raise


def clear_queue() -> None:
    while _QUEUE:
        _QUEUE.popleft().queued = False
