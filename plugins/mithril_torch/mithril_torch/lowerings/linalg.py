"""matrix_multiply is the shared forward (``torch.matmul``); nothing to override."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LOWERINGS: dict[str, Callable[..., Any]] = {}
