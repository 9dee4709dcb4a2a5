"""Graphviz DOT of a logical model tree or a compiled flat graph."""

from __future__ import annotations

import shutil
import subprocess
from typing import TYPE_CHECKING

from mithril_core.logical.connection import NOVALUE
from mithril_core.logical.model import BaseModel, Model, Primitive, register_inspect

if TYPE_CHECKING:
    from mithril_core.physical.physical_model import PhysicalModel


def _quote(*lines: str) -> str:
    """A quoted DOT string showing ``lines`` (user text: names) one per line.

    Backslashes and quotes are escaped, so a name cannot end the string early or
    reach DOT's own escapes (``\\N``, ``\\G``); line breaks become DOT's ``\\n``.
    """
    escaped = (
        line.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\r\n", "\\n")
        .replace("\r", "\\n")
        .replace("\n", "\\n")
        for line in lines
    )
    return '"' + "\\n".join(escaped) + '"'


def model_to_dot(model: BaseModel) -> str:
    """The model tree: one cluster per composite, one node per primitive, edges along
    connections from producer to consumer."""
    lines = ["digraph model {", "  rankdir=TB;", "  node [shape=box, fontsize=10];"]
    producers: dict[int, str] = {}
    primitives: list[tuple[Primitive, str]] = []
    clusters: list[str] = []

    def visit(current: BaseModel, path: str, depth: int) -> None:
        indent = "  " * (depth + 1)
        if isinstance(current, Primitive):
            node_id = f"n{len(primitives)}"
            primitives.append((current, node_id))
            producers[id(current.terminal("output").find())] = node_id
            label = _quote(path or current.op_name, current.op_name)
            lines.append(f"{indent}{node_id} [label={label}];")
            return
        assert isinstance(current, Model)
        clusters.append(path)
        lines.append(f"{indent}subgraph cluster_{len(clusters)} {{")
        lines.append(
            f"{indent}  label={_quote(path or current.name or type(current).__name__)};"
        )
        for child in current.children:
            child_path = f"{path}_{child.child_name}" if path else str(child.child_name)
            visit(child, child_path, depth + 1)
        lines.append(f"{indent}}}")

    visit(model, "", 0)
    inputs: dict[int, str] = {}
    for primitive, node_id in primitives:
        for name in primitive.input_names():
            root = primitive.terminal(name).find()
            source = producers.get(id(root))
            if source is None:
                if root.producer is not None or root.value is not NOVALUE:
                    continue  # constants are attributes, not graph inputs
                if id(root) not in inputs:
                    inputs[id(root)] = f"i{len(inputs)}"
                    label = root.display_name().split(".")[-1]
                    lines.append(
                        f"  {inputs[id(root)]} [label={_quote(label)}, shape=ellipse];"
                    )
                source = inputs[id(root)]
            lines.append(f"  {source} -> {node_id} [label={_quote(name)}, fontsize=8];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def physical_to_dot(pm: PhysicalModel) -> str:
    """The flat graph after all passes: inputs, primitive calls and outputs."""
    lines = ["digraph physical {", "  rankdir=TB;", "  node [fontsize=10];"]
    ids: dict[int, str] = {}
    for key, value in pm.graph.inputs.items():
        ids[id(value)] = f"in_{len(ids)}"
        lines.append(
            f"  {ids[id(value)]} "
            f"[label={_quote(f'{key} {value.shape()}')}, shape=ellipse];"
        )
    for index, node in enumerate(pm.graph.nodes):
        node_id = f"op_{index}"
        label = _quote(node.op, f"{node.output.name} {node.output.shape()}")
        lines.append(f"  {node_id} [label={label}, shape=box];")
        for position, value in enumerate(node.inputs):
            source = ids.get(id(value))
            if source is not None:
                terminal = node.input_names[position]
                lines.append(
                    f"  {source} -> {node_id} [label={_quote(terminal)}, fontsize=8];"
                )
        ids[id(node.output)] = node_id
    for key, value in pm.graph.outputs.items():
        out_id = f"out_{key}"
        lines.append(
            f"  {_quote(out_id)} [label={_quote(key)}, shape=ellipse, style=bold];"
        )
        source = ids.get(id(value))
        if source is not None:
            lines.append(f"  {source} -> {_quote(out_id)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_svg(dot: str) -> str:
    """SVG text of ``dot`` via the ``dot`` binary (Graphviz)."""
    binary = shutil.which("dot")
    if binary is None:
        msg = (
            "Rendering SVG needs the Graphviz `dot` binary "
            "(e.g. apt-get install graphviz)."
        )
        raise RuntimeError(msg)
    result = subprocess.run(
        [binary, "-Tsvg"], input=dot, capture_output=True, text=True, check=True
    )
    return result.stdout


register_inspect(
    {
        "physical_to_dot": physical_to_dot,
    }
)
