"""Hook implementations of ``mithril-c`` (entry point ``c``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mithril_core.hookspecs import hookimpl


@hookimpl
def mithril_backends() -> Mapping[str, type]:
    from mithril_c.backend import CBackend

    return {"c": CBackend}


@hookimpl
def mithril_lowerings(backend: str) -> Mapping[str, Any] | None:
    if backend != "c":
        return None
    from mithril_c.lowerings import LOWERINGS

    return LOWERINGS
