"""MLX backend for mithril_core (distribution ``mithril-mlx``).

Importing this package does not import mlx; the backend imports it when constructed.
"""

from __future__ import annotations

from mithril_mlx.backend import MlxBackend

__all__ = ["MlxBackend"]
