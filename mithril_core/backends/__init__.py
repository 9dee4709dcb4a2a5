"""Backend base class and the builtin NumPy backend."""

from mithril_core.backends.base import Backend, Evaluator, Program

__all__ = ["Backend", "Evaluator", "Program"]
