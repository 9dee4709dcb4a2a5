"""Aligned text tables describing logical and physical models."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mithril_core.logical import types as ty
from mithril_core.logical.connection import NOVALUE, Connection
from mithril_core.logical.model import BaseModel, Model, Primitive

if TYPE_CHECKING:
    from mithril_core.physical.physical_model import PhysicalModel


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )
    return "\n".join(lines)


def _describe(conn: Connection) -> str:
    root = conn.find()
    if root.value is not NOVALUE and not hasattr(root.value, "shape"):
        return repr(root.value)
    if root.types <= ty.TENSORS:
        return f"{root.shape_node!r}"
    return ty.format_type(root.types)


def _param_count(model: BaseModel) -> int:
    """Elements of float tensor inputs with known shapes below ``model``
    (parameters)."""
    seen: set[int] = set()
    total = 0
    primitives = (
        [(model, "")] if isinstance(model, Primitive) else list(model.primitives())
    )  # type: ignore[attr-defined]
    for primitive, _ in primitives:
        for name in primitive._inputs:
            root = primitive._terminals[name].find()
            if (
                id(root) in seen
                or root.producer is not None
                or root.value is not NOVALUE
            ):
                continue
            seen.add(id(root))
            values = root.shape_node.values()
            if (
                ty.TENSOR_FLOAT in root.types
                and values is not None
                and None not in values
            ):
                count = 1
                for v in values:
                    count *= v  # type: ignore[operator]
                total += count
    return total


def logical_summary(model: BaseModel) -> str:
    """One row per child (recursively): path, type, inputs, outputs, parameters."""
    model._ensure_built()
    rows: list[tuple[str, ...]] = []

    def visit(current: BaseModel, depth: int) -> None:
        if isinstance(current, Primitive):
            inputs = ", ".join(
                f"{n}: {_describe(current._terminals[n])}" for n in current._inputs
            )
            output = _describe(current._terminals["output"])
        else:
            assert isinstance(current, Model)
            inputs = ", ".join(
                f"{n}: {_describe(current._conns[n])}" for n in current.input_names()
            )
            output = ", ".join(
                f"{n}: {_describe(c)}"
                for n, c in current._exposed.items()
                if not n.startswith("__") and c.find().producer is not None
            )
        label = current._child_name or current.name or type(current).__name__
        rows.append(
            (
                "  " * depth + label,
                type(current).__name__,
                inputs,
                output,
                f"{_param_count(current):,}",
            )
        )
        if isinstance(current, Model):
            for child in current._children:
                visit(child, depth + 1)

    visit(model, 0)
    return _table(("model", "type", "inputs", "outputs", "params"), rows)


def physical_summary(pm: PhysicalModel) -> str:
    """One row per flat-graph node: path, op, input and output shapes."""
    rows: list[tuple[str, ...]] = []
    for node in pm.graph.nodes:
        inputs = ", ".join(
            str(v.shape()) if not v.is_constant else repr(v.constant)
            for v in node.inputs
        )
        rows.append(
            (node.path, node.op, inputs, f"{node.output.name}: {node.output.shape()}")
        )
    body = _table(("node", "op", "inputs", "output"), rows)
    params = sum(
        _numel(pm.graph.inputs[k].shape()) for k in (*pm.trainable_keys, *pm.state_keys)
    )
    return (
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
