"""Aligned text tables describing logical and physical models."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mithril_core.errors import ModelConnectionError
from mithril_core.logical import types as ty
from mithril_core.logical.connection import NOVALUE, Connection
from mithril_core.logical.model import BaseModel, Model, Primitive, register_inspect

if TYPE_CHECKING:
    from mithril_core.physical.flat import Node
    from mithril_core.physical.physical_model import PhysicalModel

_UNITS = ("", " K", " M", " G", " T", " P", " E")


class Summary(str):
    """The text of a ``summary()`` table. Its ``repr`` is the table itself, so a REPL
    or notebook shows ``model.summary()`` once, as a table; ``print`` it in a
    script."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str(self)


def _table(
    header: tuple[str, ...],
    rows: list[tuple[str, ...]],
    total: tuple[str, ...] | None = None,
    numeric: int = 0,
) -> str:
    """Columns padded to their widest cell; the last ``numeric`` columns (counts)
    right-aligned; ``total`` below a rule."""
    # Names are user text: a line break or terminal escape in one must not forge rows.
    header, rows = _printable_row(header), [_printable_row(r) for r in rows]
    total = _printable_row(total) if total else None
    everything = [header, *rows, *([total] if total else [])]
    widths = [max(len(r[i]) for r in everything) for i in range(len(header))]
    first_numeric = len(header) - numeric

    def line(cells: tuple[str, ...]) -> str:
        padded = (
            c.rjust(w) if i >= first_numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [line(header), rule, *(line(r) for r in rows)]
    if total is not None:
        lines += [rule, line(total)]
    return "\n".join(lines)


def _printable_row(cells: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(
        cell
        if cell.isprintable()
        else "".join(c if c.isprintable() else repr(c)[1:-1] for c in cell)
        for cell in cells
    )


def format_flops(count: int | None) -> str:
    """``count`` with a metric unit and one decimal from 1000 up (``"1.2 M"``), ``"?"``
    when unknown."""
    if count is None:
        return "?"
    if count < 1000:
        return str(count)
    value, unit = float(count), 0
    while value >= 999.95 and unit < len(_UNITS) - 1:
        value, unit = value / 1000, unit + 1
    return f"{value:.1f}{_UNITS[unit]}"


def _static_shape(conn: Connection, constant: Any = NOVALUE) -> tuple[int, ...] | None:
    """A tensor's dims, ``()`` for a number, ``None`` when unknown (or neither)."""
    root = conn.find()
    value = root.value if constant is NOVALUE else constant
    if value is not NOVALUE:
        if hasattr(value, "shape"):
            return tuple(int(d) for d in value.shape)
        return () if isinstance(value, int | float) else None
    if root.types <= ty.TENSORS:
        values = root.shape_node.values()
        if values is None or None in values:
            return None
        return tuple(values)  # type: ignore[arg-type]
    return () if root.types <= ty.SCALARS else None


def primitive_flops(primitive: Primitive) -> int | None:
    """:meth:`Primitive.flops` of a call in a logical model, with the shapes known now
    (0 when its output is already a constant: compile folds it)."""
    output = primitive.terminal("output")
    if output.find().value is not NOVALUE:
        return 0
    shapes = {n: _static_shape(primitive.terminal(n)) for n in primitive.input_names()}
    return primitive.flops(shapes, _static_shape(output))


def node_flops(node: Node) -> int | None:
    """:meth:`Primitive.flops` of a flat-graph call, with the static shapes of its
    compiled inputs and output (computed when the call was flattened)."""
    return node.flops


def _sum(counts: list[int | None]) -> int | None:
    return None if None in counts else sum(counts)  # type: ignore[arg-type]


def logical_flops(model: BaseModel) -> dict[str, int | None]:
    """Estimated forward FLOPs of ``model`` and every model below it, by
    :meth:`~BaseModel.path`: a primitive's from its ``flops`` rule, a composite's the
    sum of its children's (``None`` when any is unknown)."""
    counts: dict[str, int | None] = {}

    def visit(current: BaseModel) -> int | None:
        if isinstance(current, Primitive):
            count = primitive_flops(current)
        else:
            assert isinstance(current, Model)
            count = _sum([visit(child) for child in current.children])
        counts[current.path()] = count
        return count

    visit(model)
    return counts


def _describe(conn: Connection) -> str:
    root = conn.find()
    if root.value is not NOVALUE and not hasattr(root.value, "shape"):
        return repr(root.value)
    if root.types <= ty.TENSORS:
        return f"{root.shape_node!r}"
    return ty.format_type(root.types)


def _param_count(model: BaseModel, data: Connection | None = None) -> int | None:
    """Elements of the free float tensor inputs used below ``model`` (its
    parameters), not counting ``data`` (the root's canonical input); ``None`` while
    any of their shapes is not fully known (a partial sum would look exact)."""
    seen: set[int] = set() if data is None else {id(data.find())}
    total = 0
    if isinstance(model, Primitive):
        primitives = [(model, "")]
    else:
        assert isinstance(model, Model)
        primitives = list(model.primitives())
    for primitive, _ in primitives:
        for name in primitive.input_names():
            root = primitive.terminal(name).find()
            if (
                id(root) in seen
                or root.producer is not None
                or root.value is not NOVALUE
                or ty.TENSOR_FLOAT not in root.types
            ):
                continue
            seen.add(id(root))
            values = root.shape_node.values()
            if values is None or None in values:
                return None
            count = 1
            for v in values:
                count *= v  # type: ignore[operator]
            total += count
    return total


def _format_count(count: int | None) -> str:
    return "?" if count is None else f"{count:,}"


def _canonical_input(model: BaseModel) -> Connection | None:
    """The data input of a model (its canonical input), if it has one."""
    try:
        return model.cin
    except (ModelConnectionError, NotImplementedError):
        return None


def _terminals(model: Model) -> tuple[str, str]:
    """``model``'s inputs and outputs as seen from outside it: a named terminal is an
    output when a primitive inside ``model`` produces it, else an input."""
    inside = {id(p) for p, _ in model.primitives()}
    inputs, outputs = [], []
    names = sorted(model.connections(), key=lambda name: name != "input")  # input first
    for name in names:
        conn = model.connections()[name]
        if name.startswith("__") or name not in model.exposed():
            continue
        root = conn.find()
        if root.producer is not None and id(root.producer) in inside:
            outputs.append(f"{name}: {_describe(conn)}")
        elif root.value is NOVALUE:
            inputs.append(f"{name}: {_describe(conn)}")
    return ", ".join(inputs), ", ".join(outputs)


def logical_summary(model: BaseModel) -> Summary:
    """One row per child (recursively): path, type, inputs, outputs, parameters and
    estimated FLOPs (``?`` where a shape is unknown), then the totals."""
    rows: list[tuple[str, ...]] = []
    flops = logical_flops(model)
    data = _canonical_input(model)

    def visit(current: BaseModel, depth: int) -> None:
        if isinstance(current, Primitive):
            inputs = ", ".join(
                f"{n}: {_describe(current.terminal(n))}" for n in current.input_names()
            )
            output = _describe(current.terminal("output"))
        else:
            assert isinstance(current, Model)
            inputs, output = _terminals(current)
        label = current.child_name or current.name or type(current).__name__
        nested_primitive = isinstance(current, Primitive) and depth > 0
        params = "" if nested_primitive else _format_count(_param_count(current, data))
        rows.append(
            (
                "  " * depth + label,
                type(current).__name__,
                inputs,
                output,
                # A primitive's parameters are listed with the composite using it.
                params,
                format_flops(flops[current.path()]),
            )
        )
        if isinstance(current, Model):
            for child in current.children:
                visit(child, depth + 1)

    visit(model, 0)
    total = ("total", "", "", "", rows[0][-2], rows[0][-1])
    header = ("model", "type", "inputs", "outputs", "params", "flops")
    return Summary(_table(header, rows, total, numeric=2))


def physical_flops(pm: PhysicalModel) -> dict[str, int | None]:
    """Estimated FLOPs of each flat-graph call of ``pm`` (one forward evaluation), by
    node path."""
    return {node.path: node_flops(node) for node in pm.graph.nodes}


def physical_summary(pm: PhysicalModel) -> Summary:
    """One row per flat-graph node: path, op, input and output shapes, estimated
    FLOPs; then the total FLOPs of a forward evaluation."""
    rows: list[tuple[str, ...]] = []
    counts: list[int | None] = []
    for node in pm.graph.nodes:
        inputs = ", ".join(
            str(v.shape()) if not v.is_constant else repr(v.constant)
            for v in node.inputs
        )
        counts.append(node_flops(node))
        output = f"{node.output.name}: {node.output.shape()}"
        rows.append((node.path, node.op, inputs, output, format_flops(counts[-1])))
    total = ("total", "", "", "", format_flops(_sum(counts)))
    body = _table(("node", "op", "inputs", "output", "flops"), rows, total, numeric=1)
    params = sum(
        _numel(pm.graph.inputs[k].shape()) for k in (*pm.trainable_keys, *pm.state_keys)
    )
    return Summary(
        f"{body}\n\nbackend: {pm.backend!r}\ninputs: {list(pm.input_keys)}\n"
        f"outputs: {list(pm.output_keys)}\ntrainable parameters: {params:,}"
    )


def _numel(shape: list[int | None] | None) -> int:
    if shape is None or None in shape:
        return 0
    total = 1
    for d in shape:
        total *= d  # type: ignore[operator]
    return total


register_inspect(
    {
        "logical_summary": logical_summary,
        "logical_flops": logical_flops,
        "physical_summary": physical_summary,
        "physical_flops": physical_flops,
    }
)
