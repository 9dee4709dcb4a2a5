"""Hook implementations of ``mithril-jax`` (entry point ``jax``, group ``mithril``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mithril_core.hookspecs import hookimpl


@hookimpl
def mithril_backends() -> Mapping[str, type]:
    from mithril_jax.backend import JaxBackend

    return {"jax": JaxBackend}


@hookimpl
def mithril_lowerings(backend: str) -> Mapping[str, Any] | None:
    if backend != "jax":
        return None
    from mithril_jax.lowerings import LOWERINGS  # first jax import

    return LOWERINGS
