"""Hook implementations of ``mithril-onnx`` (entry point ``onnx``, group
``mithril``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mithril_core.hookspecs import hookimpl


@hookimpl
def mithril_backends() -> Mapping[str, type]:
    from mithril_onnx.backend import OnnxBackend

    return {"onnx": OnnxBackend}


@hookimpl
def mithril_lowerings(backend: str) -> Mapping[str, Any] | None:
    if backend != "onnx":
        return None
    from mithril_onnx.lowerings import LOWERINGS  # first onnx import

    return LOWERINGS
