"""Command line: ``python -m mithril_core ops|plugins|demo``.

- ``ops``: the operator x backend coverage table, one row per registered primitive, one
  column per installed backend; a cell says what the backend provides for the
  operator: ``fwd`` (a forward lowering), ``vjp`` (its registered gradient rule, for
  backends without autograd), ``autograd`` (gradients from the framework), ``jit``;
  ``-`` when the backend has no lowering. Listing lowerings imports the frameworks.
- ``plugins``: the loaded plugins, their distributions and what each contributes.
- ``demo``: the demo training script (``mithril_core.demo``), arguments passed on.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from mithril_core.errors import MSG_MISSING_DEPENDENCY, MissingBackendError

COMMANDS = ("ops", "plugins", "demo")

_INSTALL_ALL = "python -m pip install -r requirements-dev.txt"
# Modules that come with one extra or one framework, by top-level name.
_INSTALL = {
    "sklearn": 'python -m pip install -e ".[demo]"',
    "torch": (
        "python -m pip install torch --index-url https://download.pytorch.org/whl/cpu"
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command in ``argv`` (default ``sys.argv[1:]``); return its exit
    status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    handlers = {"ops": _ops, "plugins": _plugins, "demo": _demo}
    if command not in handlers:
        print(f"unknown command {command!r}\n{_usage()}", file=sys.stderr)
        return 2
    # A missing backend or dependency is the user's install, not a bug: one line
    # saying what to run instead of a traceback.
    try:
        return handlers[command](rest)
    except MissingBackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        if not top or top.startswith("mithril"):
            raise
        command_line = _INSTALL.get(top, _INSTALL_ALL)
        print(
            "error: " + MSG_MISSING_DEPENDENCY.format(error=exc, command=command_line),
            file=sys.stderr,
        )
        return 1


def _usage() -> str:
    return (
        "usage: python -m mithril_core {ops,plugins,demo} [options]\n"
        "  ops      operator x backend coverage table (--backend NAME ..., --missing)\n"
        "  plugins  loaded plugins and the distributions they come from\n"
        "  demo     train a small classifier (python -m mithril_core demo --help)"
    )


# -- ops --
def coverage() -> tuple[list[str], dict[str, dict[str, str]], dict[str, str]]:
    """``(backends, {op: {backend: cell}}, {backend: error})``: the coverage table.

    A backend whose lowerings fail to load gets ``?`` cells and its error message."""
    from mithril_core.plugins import get_registry

    registry = get_registry()
    backends = sorted(registry.backends)
    errors: dict[str, str] = {}
    tables: dict[str, dict[str, Any] | None] = {}
    for name in backends:
        try:
            tables[name] = registry.lowerings(name)
        except Exception as exc:  # shown in the table's footer, not swallowed
            tables[name] = None
            errors[name] = f"{type(exc).__name__}: {exc}"
    rows: dict[str, dict[str, str]] = {}
    for op in sorted(registry.operators):
        row: dict[str, str] = {}
        for name in backends:
            table = tables[name]
            row[name] = (
                "?" if table is None else _cell(registry.backends[name], table, op)
            )
        rows[op] = row
    return backends, rows, errors


def _cell(backend_cls: type, table: dict[str, Any], op: str) -> str:
    from mithril_core.primitives.lowering import as_lowering

    if op not in table:
        return "-"
    parts = ["fwd"]
    entry = table[op]
    if getattr(backend_cls, "has_autograd", False):
        parts.append("autograd")
    elif as_lowering(entry).vjp is not None:
        parts.append("vjp")
    if getattr(backend_cls, "supports_jit", False):
        parts.append("jit")
    return "+".join(parts)


def _ops(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mithril_core ops",
        description="Operator x backend coverage of the installed plugins.",
    )
    parser.add_argument(
        "--backend",
        action="append",
        help="only this backend's column (repeatable)",
    )
    parser.add_argument(
        "--missing",
        action="store_true",
        help="only operators that some shown backend does not lower",
    )
    args = parser.parse_args(argv)
    backends, rows, errors = coverage()
    if args.backend:
        unknown = sorted(set(args.backend) - set(backends))
        if unknown:
            from mithril_core.plugins import get_registry

            for name in unknown:
                try:
                    get_registry().backend_class(name)
                except MissingBackendError as exc:
                    print(f"error: {exc}", file=sys.stderr)
            return 2
        backends = [b for b in backends if b in args.backend]
    shown = {
        op: row
        for op, row in rows.items()
        if not args.missing or any(row[b] in ("-", "?") for b in backends)
    }
    header = ["operator", *backends]
    body = [[op, *(row[b] for b in backends)] for op, row in shown.items()]
    print(_table(header, body))
    counts = ", ".join(
        f"{b} {sum(row[b] not in ('-', '?') for row in rows.values())}/{len(rows)}"
        for b in backends
    )
    print(f"\nlowered: {counts}")
    nowhere = [op for op, row in rows.items() if all(c == "-" for c in row.values())]
    if nowhere:
        print(
            f"lowered by no backend: {', '.join(nowhere)} (compile-time primitives "
            "are removed before code generation)"
        )
    for name, error in errors.items():
        if name in backends:
            print(f"{name}: lowerings failed to load: {error}", file=sys.stderr)
    return 1 if any(name in backends for name in errors) else 0


# -- plugins --
def plugin_rows() -> list[tuple[str, str, str, str]]:
    """``(plugin, distribution and version, backends, operator count)`` per plugin."""
    from mithril_core.plugins import DEFAULT_PLUGINS, distributions, get_manager

    manager = get_manager()
    dists = distributions()
    contributions: dict[str, tuple[list[str], int]] = {}
    for impl in manager.hook.mithril_backends.get_hookimpls():
        names: Any = impl.function() or {}  # plugin boundary
        contributions.setdefault(impl.plugin_name, ([], 0))[0].extend(sorted(names))
    for impl in manager.hook.mithril_operators.get_hookimpls():
        classes: Any = impl.function() or ()
        backends, _ = contributions.get(impl.plugin_name, ([], 0))
        contributions[impl.plugin_name] = (backends, len(classes))
    rows = []
    for name, _plugin in manager.list_name_plugin():
        if name in DEFAULT_PLUGINS:
            dist = "mithril-core"
        else:
            dist = dists.get(name, "?")
        backends, operators = contributions.get(name, ([], 0))
        rows.append(
            (
                name,
                f"{dist} {_version(dist)}".strip(),
                ", ".join(backends) or "-",
                str(operators) if operators else "-",
            )
        )
    return rows


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def _plugins(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mithril_core plugins",
        description="Loaded mithril plugins and the distributions they come from.",
    )
    parser.parse_args(argv)
    header = ["plugin", "distribution", "backends", "operators"]
    print(_table(header, [list(row) for row in plugin_rows()]))
    return 0


# -- demo --
def _demo(argv: Sequence[str]) -> int:
    if importlib.util.find_spec("mithril_core.demo") is None:
        print("this installation has no demo (mithril_core.demo)", file=sys.stderr)
        return 2
    from mithril_core.demo import main as demo

    return int(demo(list(argv)) or 0)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":
    raise SystemExit(main())
