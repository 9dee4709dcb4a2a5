"""Shapes and dtypes known only at evaluate: the input signature the generated code
is specialised to. The specialisation itself is the core's
:func:`mithril_core.physical.flat.specialize` (the primitives' rules solved again on
the IR)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mithril_core.logical import types as ty
from mithril_core.physical import flat
from mithril_core.physical.flat import specialize

__all__ = ["assumed", "signature", "specialize"]

_ORDER = (ty.TENSOR_FLOAT, ty.TENSOR_INT, ty.TENSOR_BOOL)
_LETTERS = {ty.TENSOR_FLOAT: "f", ty.TENSOR_INT: "iu", ty.TENSOR_BOOL: "b"}


def assumed(
    graph: flat.FlatGraph,
) -> tuple[tuple[tuple[tuple[int, ...], str] | None, ...], dict[str, frozenset[str]]]:
    """The signature compiled before any data is seen (``None`` where an input's
    shape is not fully known) and, per input of several possible tensor kinds, the
    dtype kind letters it accepts. Such inputs are assumed float, else int."""
    sig: list[tuple[tuple[int, ...], str] | None] = []
    ambiguous: dict[str, frozenset[str]] = {}
    for key, value in graph.inputs.items():
        kinds = value.types & ty.TENSORS
        shape = value.shape()
        if len(kinds) > 1:
            ambiguous[key] = frozenset("".join(_LETTERS[k] for k in kinds))
        if shape is None or None in shape or not kinds:
            sig.append(None)
            continue
        kind = next(k for k in _ORDER if k in kinds)
        sig.append((tuple(shape), _LETTERS[kind][0]))  # type: ignore[arg-type]
    return tuple(sig), ambiguous


def signature(
    keys: tuple[str, ...], inputs: Mapping[str, Any]
) -> tuple[tuple[tuple[int, ...], str], ...]:
    """What the specialised code depends on: each input's shape and dtype kind."""
    result = []
    for key in keys:
        array = inputs[key]
        result.append((array.shape, array.dtype.kind))
    return tuple(result)
