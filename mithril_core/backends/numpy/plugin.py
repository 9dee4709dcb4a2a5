"""The builtin NumPy backend, registered through the same hooks as external plugins."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mithril_core.hookspecs import hookimpl


@hookimpl
def mithril_backends() -> Mapping[str, type]:
    from mithril_core.backends.numpy.backend import NumpyBackend

    return {"numpy": NumpyBackend}


@hookimpl
def mithril_lowerings(backend: str) -> Mapping[str, Any] | None:
    if backend != "numpy":
        return None
    from mithril_core.backends.numpy.lowerings import LOWERINGS

    return LOWERINGS
