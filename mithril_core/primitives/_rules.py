"""Reusable shape, type and value rules for primitive declarations.

A rule is ``fn(rule) -> bool``: it reads its primitive's terminals
(``rule.conn(name)``), applies what it can learn and returns ``True`` once finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mithril_core.errors import MithrilTypeError
from mithril_core.logical import shapes as sh
from mithril_core.logical import types as ty
from mithril_core.logical.connection import NOVALUE, Connection

RuleFn = Callable[[sh.Rule], bool]


def _fail(message: str) -> None:
    raise sh.ShapeConflict(message)


def normalize_axes(axis: Any, rank: int) -> tuple[int, ...]:
    axes = (
        tuple(range(rank))
        if axis is None
        else (axis,)
        if isinstance(axis, int)
        else axis
    )
    out = []
    for a in axes:
        if not -rank <= a < rank:
            _fail(f"axis {a} is out of range for rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        _fail(f"repeated axis in {axis!r}")
    return tuple(out)


def check_axis(owner: str, axis: Any, *, allow_none: bool = True) -> Any:
    """Validate an ``axis`` constructor argument (an int, a sequence of ints or, where
    allowed, ``None``) and return it with a list made a tuple; raise a
    :class:`MithrilTypeError` naming ``owner`` otherwise."""
    if axis is None and allow_none:
        return None
    if isinstance(axis, Connection):
        return axis
    items = tuple(axis) if isinstance(axis, list | tuple) else None
    candidates = (axis,) if items is None else items
    if all(
        isinstance(a, int | np.integer) and not isinstance(a, bool | np.bool_)
        for a in candidates
    ):
        if items is None:
            return int(axis)
        return tuple(int(a) for a in items)
    wanted = (
        "an int, a tuple of ints or None" if allow_none else "an int or a tuple of ints"
    )
    msg = f"{owner}: axis={axis!r} is not {wanted}; give whole-number axes."
    raise MithrilTypeError(msg)


# -- types -----------------------------------------------------------------------------


def promote_types(*inputs: str, true_divide: bool = False) -> RuleFn:
    def promote_rule(rule: sh.Rule) -> bool:
        types = [rule.conn(name).types for name in inputs]
        result = types[0]
        for other in types[1:]:
            result = ty.promote(result, other, true_divide=true_divide)
        rule.conn("output").restrict_type(result)
        return all(len(t) == 1 for t in types)

    promote_rule.__name__ = "promote_types"
    return promote_rule


def same_type(source: str = "input") -> RuleFn:
    def same_type_rule(rule: sh.Rule) -> bool:
        src, out = rule.conn(source), rule.conn("output")
        out.restrict_type(src.types)
        src.restrict_type(out.types)
        return len(src.types) == 1

    return same_type_rule


def kind_type(kind: str, source: str = "input") -> RuleFn:
    """Output is a ``kind`` tensor if ``source`` is a tensor, a ``kind`` scalar
    otherwise."""

    def kind_type_rule(rule: sh.Rule) -> bool:
        src = rule.conn(source)
        rule.conn("output").restrict_type(ty.as_tensor_kind(src.types, kind))
        return len(src.types) == 1

    return kind_type_rule


def tensor_if_any(kind: str, *inputs: str) -> RuleFn:
    """Comparisons: a bool tensor if any input is a tensor, else a bool scalar."""

    def tensor_if_any_rule(rule: sh.Rule) -> bool:
        types = [rule.conn(n).types for n in inputs]
        out: set[str] = set()
        if any(t & ty.TENSORS for t in types):
            out |= ty.as_tensor_kind(ty.TENSORS, kind)
        if all(t & ty.SCALARS for t in types):
            out.add(kind)
        rule.conn("output").restrict_type(frozenset(out))
        return all(len(t) == 1 for t in types)

    return tensor_if_any_rule


# -- shapes ----------------------------------------------------------------------------


def broadcast(*inputs: str) -> RuleFn:
    """NumPy broadcasting of ``inputs`` into ``output``."""

    def broadcast_rule(rule: sh.Rule) -> bool:
        out = rule.conn("output")
        shapes: list[list[sh.Dim]] = []
        open_shape: tuple[list[sh.Dim], sh.Var, list[sh.Dim]] | None = None
        for name in inputs:
            conn = rule.conn(name)
            if conn.types <= ty.SCALARS | {ty.NONE}:
                shapes.append([])
                continue
            pre, var, suf = conn.shape_node.expanded()
            if var is not None:
                if open_shape is not None:
                    return False
                open_shape = (pre, var, suf)
                shapes.append(suf)
                continue
            shapes.append(pre)
        if open_shape is not None:
            # One operand of unknown rank: the others must fit in its known suffix.
            pre, var, suf = open_shape
            if any(len(s) > len(suf) for s in shapes):
                return False
            rank = len(suf)
            opre, ovar, osuf = out.shape_node.expanded()
            if ovar is not var or len(opre) != len(pre) or len(osuf) != rank:
                fresh = [sh.Dim() for _ in range(rank)]
                sh.unify(out.shape_node, sh.ShapeNode([*pre, var, *fresh]))
                opre, ovar, osuf = out.shape_node.expanded()
            _broadcast_positions(shapes, osuf[len(osuf) - rank :] if rank else [])
            return False
        rank = max(len(s) for s in shapes)
        sh.unify_with_dims(out.shape_node, [None] * rank)
        dims = out.shape_node.dims()
        assert dims is not None
        return _broadcast_positions(shapes, dims)

    return broadcast_rule


def _broadcast_positions(shapes: list[list[sh.Dim]], out_dims: list[sh.Dim]) -> bool:
    finished = True
    for position in range(1, len(out_dims) + 1):
        candidates = [s[-position] for s in shapes if len(s) >= position]
        target = out_dims[-position]
        known = {d.value for d in candidates if d.value is not None and d.value != 1}
        if len(known) > 1:
            _fail(f"cannot broadcast dims {sorted(known)} at axis -{position}")
        if known:
            sh.set_dim(target, known.pop())
            continue
        unknown = [d for d in candidates if d.value is None]
        if not unknown:
            sh.set_dim(target, 1)
            continue
        roots = {id(d.find()) for d in unknown}
        if len(roots) == 1 and all(
            d.value == 1 for d in candidates if d.value is not None
        ):
            sh.unify_dims(target, unknown[0])
        else:
            finished = False
    return finished


def reduce_shape(rule: sh.Rule) -> bool:
    axis_conn, keep_conn = rule.conn("axis"), rule.conn("keepdim")
    axis, keepdim = axis_conn.value, keep_conn.value
    if axis is NOVALUE or keepdim is NOVALUE:
        return False
    inp, out = rule.conn("input"), rule.conn("output")
    pre, var, suf = inp.shape_node.expanded()
    if var is None:
        axes = normalize_axes(axis, len(pre))
        dims: list[sh.Dim | int] = []
        for i, d in enumerate(pre):
            if i in axes:
                if keepdim:
                    dims.append(1)
            else:
                dims.append(d)
        sh.unify_with_dims(out.shape_node, dims)
        return True
    axes_list = (
        [axis] if isinstance(axis, int) else list(axis) if axis is not None else None
    )
    if axes_list is None:
        if not keepdim:
            sh.unify_with_dims(out.shape_node, [])
            return True
        return False
    if all(a < 0 for a in axes_list) and len(suf) >= max(-a for a in axes_list):
        idx = {len(suf) + a for a in axes_list}
        new_suf = [
            1 if i in idx else d for i, d in enumerate(suf) if keepdim or i not in idx
        ]
        sh.unify(out.shape_node, sh.ShapeNode([*pre, var, *_dims(new_suf)]))
        return True
    if all(a >= 0 for a in axes_list) and len(pre) > max(axes_list):
        new_pre = [
            1 if i in axes_list else d
            for i, d in enumerate(pre)
            if keepdim or i not in axes_list
        ]
        sh.unify(out.shape_node, sh.ShapeNode([*_dims(new_pre), var, *suf]))
        return True
    return False


def _dims(values: Sequence[sh.Dim | int | None]) -> list[sh.Dim]:
    return [v if isinstance(v, sh.Dim) else sh.Dim(v) for v in values]


def matmul_shape(rule: sh.Rule) -> bool:
    left, right, out = rule.conn("left"), rule.conn("right"), rule.conn("output")
    ldims, rdims = left.shape_node.dims(), right.shape_node.dims()
    if rdims is not None and len(rdims) == 2 and ldims is None:
        # [..., k] @ [k, m] -> [..., m] holds for every left rank >= 1.
        batch = sh.Var()
        k, m = rdims
        sh.unify(left.shape_node, sh.ShapeNode([batch, k]))
        sh.unify(out.shape_node, sh.ShapeNode([batch, m]))
        return True
    if ldims is None or rdims is None:
        return False
    if not ldims or not rdims:
        _fail("matrix_multiply operands must have rank >= 1")
    l2 = ldims if len(ldims) > 1 else [sh.Dim(1), ldims[0]]
    r2 = rdims if len(rdims) > 1 else [rdims[0], sh.Dim(1)]
    try:
        sh.unify_dims(l2[-1], r2[-2])
    except sh.ShapeConflict:
        _fail(f"inner dims do not match: left {_fmt(ldims)} @ right {_fmt(rdims)}")
    lb, rb = l2[:-2], r2[:-2]
    batch_dims: list[sh.Dim | int | None] = []
    finished = True
    for i in range(1, max(len(lb), len(rb)) + 1):
        cands = [s[-i] for s in (lb, rb) if len(s) >= i]
        known = {d.value for d in cands if d.value not in (None, 1)}
        if len(known) > 1:
            _fail(f"batch dims {sorted(known)} do not broadcast")
        if known:
            batch_dims.insert(0, known.pop())
        elif len(cands) == 1:
            batch_dims.insert(0, cands[0])
        elif all(d.value == 1 for d in cands):
            batch_dims.insert(0, 1)
        else:
            batch_dims.insert(0, None)
            finished = False
    result: list[sh.Dim | int | None] = list(batch_dims)
    if len(ldims) > 1:
        result.append(l2[-2])
    if len(rdims) > 1:
        result.append(r2[-1])
    sh.unify_with_dims(out.shape_node, result)
    return finished


def _fmt(dims: list[sh.Dim]) -> str:
    return "[" + ", ".join(repr(d) for d in dims) + "]"


def reshape_shape(rule: sh.Rule) -> bool:
    target = rule.conn("shape").value
    if target is NOVALUE:
        return False
    inp, out = rule.conn("input"), rule.conn("output")
    target = tuple(target)
    if sum(1 for t in target if t == -1) > 1:
        _fail(f"reshape shape {target} has more than one -1")
    in_values = inp.shape_node.values()
    if -1 not in target:
        sh.unify_with_dims(out.shape_node, list(target))
        if in_values is not None and in_values.count(None) == 1:
            _solve_missing_dim(inp.shape_node, _prod(target))
            in_values = inp.shape_node.values()
        if in_values is not None and None not in in_values:
            _check_size(in_values, target)
            return True
        return False
    known = [t for t in target if t != -1]
    if in_values is None or None in in_values:
        sh.unify_with_dims(out.shape_node, [None if t == -1 else t for t in target])
        return False
    total = _prod(in_values)
    rest = _prod(known)
    if rest == 0 or total % rest:
        _fail(f"cannot reshape {list(in_values)} into {list(target)}")
    sh.unify_with_dims(
        out.shape_node, [total // rest if t == -1 else t for t in target]
    )
    return True


def _solve_missing_dim(shape: sh.ShapeNode, total: int) -> None:
    """Set the one unknown dim of ``shape`` so that its size is ``total``."""
    dims = shape.dims()
    assert dims is not None
    known = [d.value for d in dims if d.value is not None]
    rest = _prod(known)
    if rest == 0 or total % rest:
        shown = ", ".join("?" if d.value is None else str(d.value) for d in dims)
        _fail(f"cannot reshape [{shown}] into a shape of {total} elements")
    missing = next(d for d in dims if d.value is None)
    sh.set_dim(missing, total // rest)


def _check_size(in_values: Sequence[int], target: Sequence[int]) -> None:
    if _prod(in_values) != _prod(target):
        _fail(f"cannot reshape {list(in_values)} into {list(target)}")


def _prod(values: Sequence[int]) -> int:
    result = 1
    for v in values:
        result *= v
    return result


def transpose_shape(rule: sh.Rule) -> bool:
    axes = rule.conn("axes").value
    if axes is NOVALUE:
        return False
    inp, out = rule.conn("input"), rule.conn("output")
    if axes is not None:
        sh.unify_with_dims(inp.shape_node, [None] * len(axes))
    dims = inp.shape_node.dims()
    if dims is None:
        out_dims = out.shape_node.dims()
        if out_dims is None:
            return False
        sh.unify_with_dims(inp.shape_node, [None] * len(out_dims))
        dims = inp.shape_node.dims()
        assert dims is not None
    perm = (
        tuple(reversed(range(len(dims))))
        if axes is None
        else normalize_axes(axes, len(dims))
    )
    if len(perm) != len(dims):
        _fail(f"axes {axes} do not match rank {len(dims)}")
    sh.unify_with_dims(out.shape_node, [dims[p] for p in perm])
    return True


def flatten_shape(rule: sh.Rule) -> bool:
    start, end = rule.conn("start_dim").value, rule.conn("end_dim").value
    if start is NOVALUE or end is NOVALUE:
        return False
    inp, out = rule.conn("input"), rule.conn("output")
    dims = inp.shape_node.dims()
    if dims is None:
        return False
    rank = len(dims)
    if rank == 0:
        sh.unify_with_dims(out.shape_node, [1])
        return True
    s, e = normalize_axes(start, rank)[0], normalize_axes(end, rank)[0]
    middle = dims[s : e + 1]
    values = [d.value for d in middle]
    merged: sh.Dim | int | None = None if None in values else _prod(values)
    if len(middle) == 1:
        merged = middle[0]
    sh.unify_with_dims(out.shape_node, [*dims[:s], merged, *dims[e + 1 :]])
    return merged is not None


def elements_of(conn: Connection) -> list[Connection] | None:
    root = conn.find()
    if root.elements is not None:
        return root.elements
    if isinstance(root.value, list | tuple):
        return None
    return None


def concat_shape(rule: sh.Rule) -> bool:
    axis = rule.conn("axis").value
    if axis is NOVALUE:
        return False
    elements = elements_of(rule.conn("input"))
    out = rule.conn("output")
    if elements is None:
        return False
    for element in elements:  # their shapes may be learned after the list is built
        element.find().watch(rule)
    ranks = [e.find().shape_node.dims() for e in elements]
    known_rank = next((len(r) for r in ranks if r is not None), None)
    if known_rank is None:
        out_dims = out.shape_node.dims()
        if out_dims is None:
            return False
        known_rank = len(out_dims)
    for e in elements:
        sh.unify_with_dims(e.find().shape_node, [None] * known_rank)
    sh.unify_with_dims(out.shape_node, [None] * known_rank)
    ax = normalize_axes(axis, known_rank)[0]
    all_dims = [e.find().shape_node.dims() for e in elements]
    out_dims = out.shape_node.dims()
    assert out_dims is not None
    for i in range(known_rank):
        if i == ax:
            continue
        for dims in all_dims:
            assert dims is not None
            sh.unify_dims(out_dims[i], dims[i])
    sizes = [dims[ax].value for dims in all_dims if dims is not None]
    if None in sizes:
        return False
    sh.set_dim(out_dims[ax], sum(sizes))  # type: ignore[arg-type]
    return True


def split_shape(rule: sh.Rule) -> bool:
    size, axis = rule.conn("split_size").value, rule.conn("axis").value
    if size is NOVALUE or axis is NOVALUE:
        return False
    inp, out = rule.conn("input"), rule.conn("output")
    dims = inp.shape_node.dims()
    if dims is None:
        return False
    ax = normalize_axes(axis, len(dims))[0]
    total = dims[ax].value
    if total is None:
        return False
    if size <= 0:
        _fail(f"split_size must be positive, got {size}")
    chunks = [min(size, total - start) for start in range(0, total, size)]
    elements = []
    for chunk in chunks:
        element = Connection(type=inp.types)
        sh.unify_with_dims(element.shape_node, [*dims[:ax], chunk, *dims[ax + 1 :]])
        elements.append(element)
    sh.record(out, "elements")
    out.elements = elements
    sh.notify(out.watchers)
    return True


def indexer_shape(rule: sh.Rule) -> bool:
    inp, out = rule.conn("input"), rule.conn("output")
    index = rule.conn("index").value
    if index is NOVALUE:
        return False
    if not inp.types & ty.TENSORS:
        # Lists and tuples: a known element, or a slice of elements.
        elements = elements_of(inp)
        if elements is None or not isinstance(index, int):
            return inp.types <= {ty.TUPLE, ty.LIST} and isinstance(index, slice)
        try:
            element = elements[index].find()
        except IndexError:
            _fail(f"index {index} out of range for {len(elements)} elements")
        out.restrict_type(element.types)
        sh.unify(out.shape_node, element.shape_node)
        return True
    dims = inp.shape_node.dims()
    if dims is None:
        return False
    items = index if isinstance(index, tuple) else (index,)
    if any(not isinstance(i, int | slice | type(None) | type(...)) for i in items):
        return True  # advanced indexing: the shape comes from the backend at compile
    n_consuming = sum(1 for i in items if isinstance(i, int | slice))
    if n_consuming > len(dims):
        _fail(f"too many indices ({n_consuming}) for rank {len(dims)}")
    if any(i is Ellipsis for i in items):
        at = items.index(Ellipsis)
        fill = (slice(None),) * (len(dims) - n_consuming)
        items = items[:at] + fill + items[at + 1 :]
    result: list[sh.Dim | int | None] = []
    position = 0
    finished = True
    for item in items:
        if item is None:
            result.append(1)
            continue
        dim = dims[position]
        position += 1
        if isinstance(item, int):
            if dim.value is not None and not -dim.value <= item < dim.value:
                _fail(f"index {item} out of range for dim {dim.value}")
            continue
        if item == slice(None):
            result.append(dim)
        elif dim.value is not None:
            result.append(len(range(*item.indices(dim.value))))
        else:
            result.append(None)
            finished = False
    result.extend(dims[position:])
    sh.unify_with_dims(out.shape_node, result)
    return finished


def shape_value(rule: sh.Rule) -> bool:
    inp, out = rule.conn("input"), rule.conn("output")
    dims = inp.shape_node.dims()
    if dims is not None:
        elements = []
        for d in dims:
            element = Connection(type=frozenset({ty.INT}))
            sh.unify_with_dims(element.shape_node, [])
            if d.value is not None:
                element.value = d.value
            elements.append(element)
        if out.elements is None:
            sh.record(out, "elements")
            out.elements = elements
            sh.notify(out.watchers)
    values = inp.shape_node.values()
    if values is None or None in values:
        return False
    out.set_value(tuple(values))
    return True


def to_sequence(kind: type) -> RuleFn:
    def to_sequence_rule(rule: sh.Rule) -> bool:
        names = [n for n in rule.terminals if n != "output"]
        out = rule.conn("output")
        if out.elements is None:
            sh.record(out, "elements")
            out.elements = [rule.conn(n) for n in names]
            sh.notify(out.watchers)
        values = [rule.conn(n).value for n in names]
        if any(v is NOVALUE for v in values):
            return False
        if any(hasattr(v, "shape") for v in values):
            return True
        out.set_value(kind(values))
        return True

    return to_sequence_rule


def fold_scalars(fn: Callable[..., Any], *inputs: str) -> RuleFn:
    """Compute the output value at composition time when every input is a known
    non-tensor value (shape arithmetic such as ``C // groups``)."""

    def fold_rule(rule: sh.Rule) -> bool:
        conns = [rule.conn(n) for n in inputs]
        if any(c.types & ty.TENSORS and not c.types <= ty.SCALARS for c in conns):
            if all(c.types <= ty.TENSORS for c in conns if c.value is NOVALUE):
                return True
        values = [c.value for c in conns]
        if any(v is NOVALUE for v in values):
            return False
        if any(hasattr(v, "shape") for v in values):
            return True
        rule.conn("output").set_value(fn(*values))
        return True

    fold_rule.__name__ = f"fold_{getattr(fn, '__name__', 'op')}"
    return fold_rule


def index_fold(rule: sh.Rule) -> bool:
    inp, index, out = rule.conn("input"), rule.conn("index"), rule.conn("output")
    if index.value is NOVALUE:
        return False
    if inp.value is not NOVALUE and isinstance(inp.value, tuple | list):
        out.set_value(inp.value[index.value])
        return True
    elements = elements_of(inp)
    if elements is not None and isinstance(index.value, int):
        value = elements[index.value].find().value
        if value is not NOVALUE and not hasattr(value, "shape"):
            out.set_value(value)
            return True
    return bool(inp.types <= ty.TENSORS)


def pass_through(source: str = "input") -> RuleFn:
    """``output`` is ``source`` unchanged, whatever it holds (tensor, scalar, tuple,
    list): same shape, same type, same elements."""

    def pass_through_rule(rule: sh.Rule) -> bool:
        src, out = rule.conn(source), rule.conn("output")
        sh.unify(src.shape_node, out.shape_node)
        out.restrict_type(src.types)
        src.restrict_type(out.types)
        for a, b in ((src, out), (out, src)):
            if b.elements is None and a.elements is not None:
                sh.record(b, "elements")
                b.elements = a.elements
                sh.notify(b.watchers)
        sequence = bool(src.types & {ty.TUPLE, ty.LIST})
        return len(src.types) == 1 and (not sequence or src.elements is not None)

    return pass_through_rule


def same_shape(*names: str) -> RuleFn:
    def same_shape_rule(rule: sh.Rule) -> bool:
        first = rule.conn(names[0]).shape_node
        for name in names[1:]:
            sh.unify(first, rule.conn(name).shape_node)
        return True

    return same_shape_rule
