"""Every linalg primitive is lowered by the shared array-API table
(``mithril_core.backends.array_api``); mlx needs no override."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LOWERINGS: dict[str, Callable[..., Any]] = {}
