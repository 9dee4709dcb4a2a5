"""The builtin NumPy backend."""

from mithril_core.backends.numpy.backend import NumpyBackend

__all__ = ["NumpyBackend"]
