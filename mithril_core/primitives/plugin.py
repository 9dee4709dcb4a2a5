"""Core primitives, registered through the same hook as third-party operators."""

from __future__ import annotations

from collections.abc import Sequence

from mithril_core.hookspecs import hookimpl


@hookimpl
def mithril_operators() -> Sequence[type]:
    from mithril_core.primitives import CORE_PRIMITIVES

    return CORE_PRIMITIVES
