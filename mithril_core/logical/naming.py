"""The key of every connection of a model: the name a compiled model's inputs, outputs
and values go by (``block_0_weight``)."""

from __future__ import annotations

import re
from collections import deque

from mithril_core.errors import CompileError
from mithril_core.logical.model import BaseModel, Model, Primitive

_IDENT = re.compile(r"[^0-9a-zA-Z_]")


def ascii_identifier_chars(name: str) -> str:
    """``name`` with every character but ASCII letters, digits and ``_`` made ``_``
    (keys and generated local names)."""
    return _IDENT.sub("_", name)


def assign_names(model: Model, aliases: dict[str, str] | None = None) -> dict[int, str]:
    """Key of every connection root: the ``_``-joined path where it is first named,
    walking the tree top-down (so the shallowest name wins). Keys keep only ASCII
    letters, digits and ``_``; ``aliases`` (when given) gets each name that changed
    -> its key. Two names that become one key are refused (:class:`CompileError`)."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    # Key -> the name it was made from where sanitizing changed it: two names that
    # sanitize to one key ("a.b" and "a_b") must not silently share or swap slots.
    raw_of: dict[str, str] = {}
    queue: deque[tuple[BaseModel, str]] = deque([(model, "")])
    while queue:
        current, prefix = queue.popleft()
        if isinstance(current, Primitive):
            named = current._terminals.items()
        else:
            assert isinstance(current, Model)
            named = current._conns.items()
            for child in current._children:
                child_prefix = f"{prefix}{child._child_name}_"
                queue.append((child, child_prefix))
        for name, conn in named:
            root = conn.find()
            if id(root) in names:
                continue
            raw = prefix + name
            sanitized = ascii_identifier_chars(raw)
            if sanitized in taken and (sanitized != raw or sanitized in raw_of):
                _refuse_collision(model, raw, raw_of.get(sanitized, sanitized))
            key = _unique(sanitized, taken)
            if sanitized != raw:
                raw_of[key] = raw
                if aliases is not None:
                    aliases[raw] = key
            names[id(root)] = key
            taken.add(key)
    return names


def _refuse_collision(model: Model, raw: str, other: str) -> None:
    msg = (
        f"{model.path()}: the names {other!r} and {raw!r} both become the key "
        f"{ascii_identifier_chars(raw)!r} (keys keep only letters, digits and '_'), "
        "so data for one could reach the other. Rename one of them."
    )
    raise CompileError(msg)


def _unique(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    index = 1
    while f"{name}_{index}" in taken:
        index += 1
    return f"{name}_{index}"
