"""JAX backend for mithril_core (distribution ``mithril-jax``).

Importing this package does not import jax; the backend imports it when constructed.
"""

from __future__ import annotations

from mithril_jax.backend import JaxBackend

__all__ = ["JaxBackend"]
