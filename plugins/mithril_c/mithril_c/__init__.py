"""C backend for mithril_core: generated C per compiled model, built with cffi."""

from __future__ import annotations

from mithril_c._build import UnsafeCacheError
from mithril_c._runtime import KernelIndexError
from mithril_c.backend import CBackend

__all__ = ["CBackend", "KernelIndexError", "UnsafeCacheError"]
