"""The lowering record every backend's table holds, and the checked merge of tables.

A primitive's contract lives here with its declaration: the registry hands every
consumer a :class:`Lowering`, whatever form a plugin's hook returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mithril_core.errors import PluginError

# One input's gradient: ``rule(xp, output_grad, output, *inputs)``, its parameters
# after the first three named as the primitive's input terminals, in their order.
GradRule = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Lowering:
    """How one backend runs one primitive.

    :param forward: ``forward(*inputs)`` returns the output. (For C: an expression
        template or an emitter; its ``_codegen`` reads it.)
    :param vjp: for backends without autograd, ``vjp(output_grad, output, *inputs,
        needs=None)`` returns one gradient per input (``None`` where not
        differentiable or not needed); ``None`` for backends with autograd.
    :param named: ``forward`` takes its inputs as keywords named after the
        primitive's input terminals, and generated code calls it so.
    :param options: backend-specific variants (C: ``"int"``, ``"bool"``, ``"raw"``;
        see ``mithril_c.lowerings._types``).
    """

    forward: Any
    vjp: Any = None
    named: bool = False
    options: Mapping[str, Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the forward (``table[op](*inputs)`` in tests and scripts)."""
        return self.forward(*args, **kwargs)


def as_lowering(entry: Any, *, where: str = "") -> Lowering:
    """``entry`` as a :class:`Lowering`: a record, a ``(forward, vjp)`` tuple or a bare
    forward (the forms the ``mithril_lowerings`` hook accepts)."""
    if isinstance(entry, Lowering):
        return entry
    if isinstance(entry, tuple) and 1 <= len(entry) <= 2:
        return Lowering(*entry)
    if isinstance(entry, tuple) and len(entry) == 3 and isinstance(entry[2], Mapping):
        return Lowering(entry[0], entry[1], options=entry[2])
    if callable(entry) or isinstance(entry, str):
        return Lowering(entry)
    msg = (
        f"{where or 'lowering'}: expected a Lowering, a (forward, vjp[, options]) "
        f"tuple or a callable, got {type(entry).__name__}: {entry!r}."
    )
    raise PluginError(msg)


def forward_of(entry: Any) -> Any:
    """The forward of a table entry in any accepted form."""
    return as_lowering(entry).forward


def merge_lowerings(
    backend: str,
    tables: Mapping[str, Mapping[str, Any]],
    *,
    shared: Mapping[str, Any] | None = None,
) -> dict[str, Lowering]:
    """Merge a backend's family ``tables`` (table name -> ``{op: entry}``) into one
    table of records.

    A name in two family tables is refused, naming both. ``shared`` (the table written
    once against an array API) comes first; a family table naming one of its ops
    overrides it: that is what family tables of array-API backends are for.
    """
    merged = {
        op: as_lowering(e, where=f"{backend}: {op}") for op, e in (shared or {}).items()
    }
    owner: dict[str, str] = {}
    for table_name, table in tables.items():
        for op, entry in table.items():
            if op in owner:
                msg = (
                    f"{backend} backend: primitive {op!r} is lowered by both "
                    f"{owner[op]!r} and {table_name!r}; keep one."
                )
                raise PluginError(msg)
            owner[op] = table_name
            merged[op] = as_lowering(entry, where=f"{backend}: {op}")
    return merged
