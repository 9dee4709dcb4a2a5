"""Hook implementations of ``mithril-mlx`` (entry point ``mlx``, group ``mithril``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mithril_core.hookspecs import hookimpl


@hookimpl
def mithril_backends() -> Mapping[str, type]:
    from mithril_mlx.backend import MlxBackend

    return {"mlx": MlxBackend}


@hookimpl
def mithril_lowerings(backend: str) -> Mapping[str, Any] | None:
    if backend != "mlx":
        return None
    from mithril_mlx.lowerings import LOWERINGS  # first mlx import

    return LOWERINGS
