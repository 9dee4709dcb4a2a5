"""The import contract (#12 item 2): each layer of ``mithril_core`` imports only the
layers above it, function-level imports included; ``if TYPE_CHECKING:`` imports are
exempt. Parsed with ``ast``, so nothing here imports the modules it checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mithril_core

ROOT = Path(mithril_core.__file__).parent
PACKAGE = "mithril_core"

# Top to bottom: a module may import modules of its own layer and of the layers above.
# A module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("mithril_core.errors", "mithril_core.dtypes", "mithril_core.hookspecs")),
    # Reads weight files (mappings of arrays); it loads them into a compiled model
    # through that model's public methods only (its PhysicalModel import is for
    # annotations), so models.gpt and PhysicalModel.load_weights may use it.
    ("io", ("mithril_core.weights",)),
    ("logical", ("mithril_core.logical",)),
    ("primitives", ("mithril_core.primitives",)),
    ("models", ("mithril_core.models", "mithril_core.training")),
    # The plugin registry loads primitives, models and backends by name (importlib
    # strings, not import statements); compile and serialize look things up in it.
    ("registry", ("mithril_core.plugins",)),
    # backends/base.py is the interface compile targets (Backend, Program, Evaluator;
    # it imports only dtypes and errors); the backends below implement it.
    ("physical", ("mithril_core.physical", "mithril_core.backends.base")),
    ("codegen", ("mithril_core.codegen", "mithril_core.backends")),
    (
        "inspect",
        (
            "mithril_core.logical.summary",
            "mithril_core.logical.dot",
            "mithril_core.logical.serialize",
            "mithril_core.parity",
        ),
    ),
    # The package facade and the command line sit on top of everything.
    ("api", ("mithril_core", "mithril_core.__main__", "mithril_core.demo")),
]

# (importer, imported) edges that break the order on purpose, each with its reason.
ALLOWED: dict[tuple[str, str], str] = {}


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best < 0:
        msg = f"module {module} is in no layer of the contract"
        raise AssertionError(msg)
    return best


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    base = ROOT.parent / rel
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every project import in ``path`` outside
    ``if TYPE_CHECKING:`` blocks."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if is_module(sub) else target))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return [
        (line, mod)
        for line, mod in found
        if mod == PACKAGE or mod.startswith(PACKAGE + ".")
    ]


def violations() -> list[str]:
    found: list[str] = []
    for path in sorted(ROOT.rglob("*.py")):
        importer = module_name(path)
        own = layer_of(importer)
        for line, imported in imports_of(path):
            if layer_of(imported) <= own or (importer, imported) in ALLOWED:
                continue
            rel = path.relative_to(ROOT.parent)
            line_text = (
                f"{rel}:{line}: {importer} ({LAYERS[own][0]}) imports "
                f"{imported} ({LAYERS[layer_of(imported)][0]})"
            )
            if line_text not in found:
                found.append(line_text)
    return found


def test_every_module_is_in_a_layer() -> None:
    for path in ROOT.rglob("*.py"):
        layer_of(module_name(path))


def test_imports_follow_the_layer_order() -> None:
    found = violations()
    assert not found, "layering violations:\n" + "\n".join(found)


def test_allowed_exceptions_are_still_needed() -> None:
    edges = {
        (module_name(path), imported)
        for path in ROOT.rglob("*.py")
        for _, imported in imports_of(path)
    }
    stale = sorted(set(ALLOWED) - edges)
    assert not stale, f"allowed edges no longer imported: {stale}"


def test_every_connection_operator_is_registered() -> None:
    # logical/ builds connection expressions from primitives registered by name.
    import re

    from mithril_core.logical import connection

    text = (ROOT / "logical" / "connection.py").read_text()
    used = set(re.findall(r'_call\(\s*"(\w+)"', text)) | {"ToList", "ToTuple"}
    assert used <= set(connection.OPERATORS), used - set(connection.OPERATORS)


# -- #12 item 3: outside logical/, models are read through their public API ---------
# (children, child_name, parent_model, connections(), exposed(), walk(), terminal(),
# input_names() ...), never through private attributes.

# The logical modules that define the model classes and may use their internals.
MODEL_INTERNALS = ("logical/model.py", "logical/connection.py")

# Modules not yet switched to the public API, with their counts: a ratchet (they
# may only go down), not an allow-list. Every module is converted; keep it empty.
NOT_YET_CONVERTED: dict[str, int] = {}


def _private_model_names() -> set[str]:
    """Private (``_x``, not dunder) attribute and method names of the logical
    classes."""
    names: set[str] = set()
    for rel in MODEL_INTERNALS:
        tree = ast.parse((ROOT / rel).read_text())
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            for node in ast.walk(cls):
                if isinstance(node, ast.FunctionDef):
                    name = node.name
                elif (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in ("self", "cls")
                ):
                    name = node.attr
                else:
                    continue
                if name.startswith("_") and not name.endswith("__"):
                    names.add(name)
    return names


def private_model_accesses() -> dict[str, list[str]]:
    """``file -> ["file:line: .name", ...]`` for modules outside the logical layer
    that read a private model attribute of anything but ``self``/``cls``."""
    private = _private_model_names()
    logical = layer_of("mithril_core.logical")
    found: dict[str, list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        if layer_of(module_name(path)) == logical:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in private
                and not (
                    isinstance(node.value, ast.Name)
                    and node.value.id in ("self", "cls")
                )
            ):
                found.setdefault(rel, []).append(
                    f"{PACKAGE}/{rel}:{node.lineno}: .{node.attr}"
                )
    return found


def test_no_private_model_access_outside_logical() -> None:
    found = private_model_accesses()
    bad = [
        line
        for rel, lines in found.items()
        if len(lines) > NOT_YET_CONVERTED.get(rel, 0)
        for line in lines
    ]
    assert not bad, "private model attributes read outside logical/:\n" + "\n".join(bad)
    stale = {
        rel: (count, len(found.get(rel, [])))
        for rel, count in NOT_YET_CONVERTED.items()
        if len(found.get(rel, [])) < count
    }
    assert not stale, f"lower NOT_YET_CONVERTED to the new counts: {stale}"


if __name__ == "__main__":
    for lines in private_model_accesses().values():
        print("\n".join(lines))
    print("\n".join(violations()) or "no violations")
