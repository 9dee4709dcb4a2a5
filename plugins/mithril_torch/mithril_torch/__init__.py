"""PyTorch backend for mithril_core (distribution ``mithril-torch``).

Importing this package does not import torch; the backend imports it when constructed.
"""

from __future__ import annotations

from mithril_torch.backend import TorchBackend

__all__ = ["TorchBackend"]
