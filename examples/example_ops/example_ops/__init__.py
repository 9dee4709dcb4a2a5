"""Example third-party operators for mithril_core."""

from example_ops.primitives import Softsign

__all__ = ["Softsign"]
