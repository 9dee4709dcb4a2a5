"""Shape manipulation: reshape, transpose, flatten, concat, split, indexing and
friends."""

from __future__ import annotations

from typing import Any

from mithril_core.logical import shapes as sh
from mithril_core.logical import types as ty
from mithril_core.logical.connection import NOVALUE, IOKey
from mithril_core.logical.model import Primitive
from mithril_core.primitives import _rules as r

_SEQUENCE = frozenset({ty.TUPLE, ty.LIST})


class Reshape(Primitive):
    """Reshape ``input`` to ``shape`` (a tuple that may hold one -1)."""

    op_name = "reshape"
    flops_per_element = 0
    rules = (r.reshape_shape, r.same_type())

    def __init__(self, shape: Any = NOVALUE, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS),
            shape=IOKey(type=tuple | list) if shape is NOVALUE else _as_tuple(shape),
            output=IOKey(type=ty.TENSORS),
        )


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class Transpose(Primitive):
    """Permute axes; ``axes=None`` reverses them."""

    op_name = "transpose"
    flops_per_element = 0
    rules = (r.transpose_shape, r.same_type())

    def __init__(self, axes: Any = None, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS),
            axes=_as_tuple(axes),
            output=IOKey(type=ty.TENSORS),
        )


class Flatten(Primitive):
    """Flatten dims ``start_dim`` .. ``end_dim`` into one (as ``torch.flatten``)."""

    op_name = "flatten"
    flops_per_element = 0
    rules = (r.flatten_shape, r.same_type())

    def __init__(
        self, start_dim: int = 0, end_dim: int = -1, name: str | None = None
    ) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS),
            start_dim=start_dim,
            end_dim=end_dim,
            output=IOKey(type=ty.TENSORS),
        )


def _concat_type(rule: sh.Rule) -> bool:
    elements = r.elements_of(rule.conn("input"))
    if elements is None:
        return False
    for element in elements:  # their types may be learned after the list is built
        element.find().watch(rule)
    types = frozenset().union(*(e.find().types for e in elements))
    rule.conn("output").restrict_type(types & ty.TENSORS)
    return all(len(e.find().types) == 1 for e in elements)


class Concat(Primitive):
    """Concatenate a list of tensors along ``axis``."""

    op_name = "concat"
    flops_per_element = 0
    rules = (r.concat_shape, _concat_type)

    def __init__(self, axis: int = 0, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=list | tuple),
            axis=axis,
            output=IOKey(type=ty.TENSORS),
        )


class Split(Primitive):
    """Split into chunks of ``split_size`` along ``axis`` (last may be shorter), as
    ``torch.split``; the output is a list, indexable as ``split.output[i]``."""

    op_name = "split"
    flops_per_element = 0
    rules = (r.split_shape,)

    def __init__(self, split_size: int, axis: int = 0, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS),
            split_size=split_size,
            axis=axis,
            output=IOKey(type=list),
        )


def _indexer_type(rule: sh.Rule) -> bool:
    inp = rule.conn("input")
    if inp.types <= ty.TENSORS:
        rule.conn("output").restrict_type(inp.types)
        return len(inp.types) == 1  # a later, narrower input type narrows the output
    return not inp.types & ty.TENSORS


class Indexer(Primitive):
    """``input[index]`` for tensors, lists and tuples (ints, slices, None, Ellipsis)."""

    op_name = "indexer"
    flops_per_element = 0
    rules = (r.indexer_shape, _indexer_type, r.index_fold)

    def __init__(self, index: Any = NOVALUE, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS | _SEQUENCE),
            index=IOKey() if index is NOVALUE else index,
            output=IOKey(),
        )


class Shape(Primitive):
    """The shape of ``input`` as a tuple of ints (known at compile time)."""

    op_name = "shape"
    flops_per_element = 0
    rules = (r.shape_value,)

    def __init__(self, name: str | None = None) -> None:
        super().__init__(
            name=name, input=IOKey(type=ty.TENSORS), output=IOKey(type=tuple)
        )


class ToList(Primitive):
    """Collect ``n`` inputs into a list (created when a list of connections is
    bound)."""

    op_name = "to_list"
    flops_per_element = 0
    rules = (r.to_sequence(list),)

    def __init__(self, n: int, name: str | None = None) -> None:
        inputs = {f"input_{i}": IOKey() for i in range(n)}
        super().__init__(name=name, **inputs, output=IOKey(type=list))


class ToTuple(ToList):
    """Collect ``n`` inputs into a tuple."""

    op_name = "to_tuple"
    rules = (r.to_sequence(tuple),)

    def __init__(self, n: int, name: str | None = None) -> None:
        inputs = {f"input_{i}": IOKey() for i in range(n)}
        Primitive.__init__(self, name=name, **inputs, output=IOKey(type=tuple))


class Buffer(Primitive):
    """Identity: forwards ``input`` to ``output`` (removed at compile). Any value
    passes: a tensor, a scalar, a tuple (``Shape()``'s result) or a list."""

    op_name = "buffer"
    flops_per_element = 0
    rules = (r.pass_through(),)

    def forwarded_input(self, constants: dict[str, Any]) -> str | None:
        return "input"

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name, input=IOKey(), output=IOKey())


def _unsqueeze_shape(rule: sh.Rule) -> bool:
    axis = rule.conn("axis").value
    dims = rule.conn("input").shape_node.dims()
    if dims is None:
        return False
    ax = r.normalize_axes(axis, len(dims) + 1)[0]
    sh.unify_with_dims(rule.conn("output").shape_node, [*dims[:ax], 1, *dims[ax:]])
    return True


class Unsqueeze(Primitive):
    """Insert a size-1 axis at ``axis``."""

    op_name = "unsqueeze"
    flops_per_element = 0
    rules = (_unsqueeze_shape, r.same_type())

    def __init__(self, axis: int = 0, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS),
            axis=r.check_axis("Unsqueeze", axis, allow_none=False),
            output=IOKey(type=ty.TENSORS),
        )


def _squeeze_shape(rule: sh.Rule) -> bool:
    axis = rule.conn("axis").value
    dims = rule.conn("input").shape_node.dims()
    if dims is None:
        return False
    if axis is None:
        if any(d.value is None for d in dims):
            return False
        kept = [d for d in dims if d.value != 1]
    else:
        axes = r.normalize_axes(axis, len(dims))
        for a in axes:
            sh.set_dim(dims[a], 1)
        kept = [d for i, d in enumerate(dims) if i not in axes]
    sh.unify_with_dims(rule.conn("output").shape_node, kept)
    return True


class Squeeze(Primitive):
    """Remove size-1 axes (``axis`` None: all of them)."""

    op_name = "squeeze"
    flops_per_element = 0
    rules = (_squeeze_shape, r.same_type())

    def __init__(
        self, axis: int | tuple[int, ...] | None = None, name: str | None = None
    ) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS),
            axis=r.check_axis("Squeeze", axis),
            output=IOKey(type=ty.TENSORS),
        )


def _expand_shape(rule: sh.Rule) -> bool:
    target = rule.conn("shape").value
    dims = rule.conn("input").shape_node.dims()
    if target is NOVALUE or dims is None:
        return False
    offset = len(target) - len(dims)
    if offset < 0:
        r._fail(f"cannot expand rank {len(dims)} to {list(target)}")
    out: list[sh.Dim | int | None] = []
    finished = True
    for i, t in enumerate(target):
        if t == -1:
            if i < offset:
                r._fail(f"-1 in expand shape {list(target)} at a new axis")
            out.append(dims[i - offset])
            continue
        if i >= offset:
            value = dims[i - offset].value
            # An input dim learned later is checked when it is: keep watching.
            finished = finished and value is not None
            if value is not None and value not in (1, t):
                shown = [d.value for d in dims]
                r._fail(
                    f"cannot broadcast input {shown} to {list(target)}: axis "
                    f"{i - offset} has size {value}, which is neither 1 nor {t}"
                )
        out.append(t)
    sh.unify_with_dims(rule.conn("output").shape_node, out)
    return finished


class Expand(Primitive):
    """Broadcast ``input`` to ``shape`` (-1 keeps a dim)."""

    op_name = "expand"
    flops_per_element = 0
    rules = (_expand_shape, r.same_type())

    def __init__(self, shape: Any = NOVALUE, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS),
            shape=IOKey(type=tuple) if shape is NOVALUE else tuple(shape),
            output=IOKey(type=ty.TENSORS),
        )
