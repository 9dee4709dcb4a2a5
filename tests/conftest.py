"""Shared fixtures: every installed backend, found at collection time.

A test that takes ``backend_name`` runs once per installed backend with gradients, so
a newly installed backend plugin joins every such test with no test edits.
Inference-only backends (class attribute ``supports_gradients = False``, e.g. ``onnx``)
run the tests that take ``inference_backend_name`` instead: forward passes only. A test
that also takes ``float_dtype`` runs once per (backend, float dtype the backend
supports) pair, float64 first. Cases marked as known gaps (``known_gaps`` of a
``case`` parameter) are xfailed at collection, strictly, so that a fixed gap shows up
as a failure to clean up.

``MITHRIL_TEST_DEVICE=cuda`` (or ``gpu``) runs these tests on that device: only the
backends that list it in ``devices`` take part, each created with ``device=...``
(``python -m pytest tests/primitives`` on a GPU machine checks every primitive's
forward and gradient there).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from typing import Any

import pytest

import mithril_core as ml

FLOAT_DTYPES = ("float64", "float32")
DEVICE = os.environ.get("MITHRIL_TEST_DEVICE", "")


def _on_device(name: str) -> bool:
    from mithril_core.plugins import get_registry

    devices = getattr(get_registry().backend_class(name), "devices", ("cpu",))
    return DEVICE.partition(":")[0] in devices


@cache
def all_backend_names() -> tuple[str, ...]:
    names = tuple(ml.available_backends())
    return tuple(n for n in names if _on_device(n)) if DEVICE else names


def supports_gradients(name: str) -> bool:
    """Whether backend ``name`` computes gradients (``supports_gradients``, default
    ``True``)."""
    from mithril_core.plugins import get_registry

    return bool(get_registry().backend_class(name).supports_gradients)


@cache
def backend_names() -> tuple[str, ...]:
    """The installed backends with gradients: what ``backend_name`` runs over."""
    return tuple(n for n in all_backend_names() if supports_gradients(n))


@cache
def inference_backend_names() -> tuple[str, ...]:
    """The installed inference-only backends: what ``inference_backend_name`` runs
    over."""
    return tuple(n for n in all_backend_names() if not supports_gradients(n))


def float_dtypes(name: str) -> tuple[str, ...]:
    """Float dtypes to test ``name`` with: float64 where it has it, and float32."""
    from mithril_core.plugins import get_registry

    supported = get_registry().backend_class(name).supported_dtypes
    return tuple(d for d in FLOAT_DTYPES if d in supported)


@cache
def _make_backend(name: str, dtype: str = "float32") -> Any:
    options = {"device": DEVICE} if DEVICE else {}
    return ml.backend(name, dtype=getattr(ml, dtype), **options)


@pytest.fixture
def make_backend() -> Callable[..., Any]:
    """``make_backend(name, dtype="float32")``: a shared backend ``name`` whose default
    float dtype is ``dtype`` (a name such as ``"float64"``)."""
    return _make_backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture, names in (
        ("backend_name", backend_names),
        ("inference_backend_name", inference_backend_names),
    ):
        if fixture not in metafunc.fixturenames or _parametrizes(metafunc, fixture):
            continue
        if "float_dtype" in metafunc.fixturenames:
            pairs = [(n, d) for n in names() for d in float_dtypes(n)]
            metafunc.parametrize(
                (fixture, "float_dtype"),
                pairs,
                ids=[f"{n}-{d}" for n, d in pairs],
            )
        else:
            metafunc.parametrize(fixture, names())


def _parametrizes(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether the test parametrizes ``name`` itself (then it picks its backends)."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if name in names:
            return True
    return False


@pytest.fixture
def backend(backend_name: str) -> Any:
    """The backend ``backend_name`` with float32 as its default dtype."""
    return _make_backend(backend_name, "float32")


def gap_reason(
    known_gaps: dict[str, str], backend_name: str, *variants: str
) -> str | None:
    """The reason of the first key of ``known_gaps`` matching ``backend_name`` alone or
    ``backend_name-variant`` (``"mlx-float64"``, ``"torch-jit"``)."""
    for key in (backend_name, *(f"{backend_name}-{v}" for v in variants)):
        if key in known_gaps:
            return known_gaps[key]
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None:
            continue
        case = callspec.params.get("case")
        name = next(
            (
                callspec.params[k]
                for k in ("backend_name", "inference_backend_name", "jit_backend")
                if k in callspec.params
            ),
            None,
        )
        gaps = getattr(case, "known_gaps", None)
        if not gaps or name is None:
            continue
        variants = [callspec.params.get("float_dtype", "")]
        if "jit" in item.originalname:
            variants.append("jit")
        reason = gap_reason(gaps, name, *variants)
        if reason is not None:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
