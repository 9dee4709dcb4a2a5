"""Hook implementations of ``mithril-torch`` (entry point ``torch``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mithril_core.hookspecs import hookimpl


@hookimpl
def mithril_backends() -> Mapping[str, type]:
    from mithril_torch.backend import TorchBackend

    return {"torch": TorchBackend}


@hookimpl
def mithril_lowerings(backend: str) -> Mapping[str, Any] | None:
    if backend != "torch":
        return None
    from mithril_torch.lowerings import LOWERINGS  # first torch import

    return LOWERINGS
