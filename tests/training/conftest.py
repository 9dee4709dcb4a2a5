"""Fixtures of the training tests: a squared-error loss and a small regression task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mithril_core.models import Buffer, IOKey, Model


class _SquaredError(Model):
    """Fallback ``(input - target) ** 2`` (element-wise) built from core ops."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        diff = IOKey("input") - IOKey("target")
        self |= Buffer()(diff * diff, output=IOKey("output"))


class _AbsoluteError(Model):
    """Fallback ``|input - target|`` built from core ops."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        diff = IOKey("input") - IOKey("target")
        self |= Buffer()(abs(diff), output=IOKey("output"))


def _loss_class(request: pytest.FixtureRequest, name: str, fallback: type) -> type:
    """The core loss primitive ``name`` where it exists and the test's backend (NumPy
    for tests without one) lowers it, else ``fallback`` built from core ops."""
    try:
        from mithril_core.primitives import loss
    except ImportError:
        return fallback
    cls = getattr(loss, name, None)
    if cls is None:
        return fallback
    callspec = getattr(request.node, "callspec", None)
    backend_name = callspec.params.get("backend_name") if callspec else None
    from mithril_core.plugins import get_registry

    if cls.op_name not in get_registry().lowerings(backend_name or "numpy"):
        return fallback
    return cls


@pytest.fixture
def squared_error(request: pytest.FixtureRequest) -> Callable[[], Any]:
    """Factory of an unreduced squared-error loss (the core primitive when present)."""
    return _loss_class(request, "SquaredError", _SquaredError)


@pytest.fixture
def absolute_error(request: pytest.FixtureRequest) -> Callable[[], Any]:
    return _loss_class(request, "AbsoluteError", _AbsoluteError)


@pytest.fixture
def regression_data() -> tuple[np.ndarray, np.ndarray]:
    """64 samples of a noisy linear map R^3 -> R^2 (float64)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    w = np.array([[1.0, -2.0, 0.5], [0.3, 0.0, -1.0]])
    y = x @ w.T + np.array([0.3, -0.1]) + 0.05 * rng.normal(size=(64, 2))
    return x, y
