"""Type sets: what a connection may hold (tensor of float/int/bool, or a Python
value)."""

from __future__ import annotations

import types as _pytypes
from typing import Any

import numpy as np

TENSOR_FLOAT = "Tensor[float]"
TENSOR_INT = "Tensor[int]"
TENSOR_BOOL = "Tensor[bool]"
INT = "int"
FLOAT = "float"
BOOL = "bool"
LIST = "list"
TUPLE = "tuple"
NONE = "None"
STR = "str"
SLICE = "slice"
ELLIPSIS = "ellipsis"

TENSORS = frozenset({TENSOR_FLOAT, TENSOR_INT, TENSOR_BOOL})
SCALARS = frozenset({INT, FLOAT, BOOL})
ANY = TENSORS | SCALARS | frozenset({LIST, TUPLE, NONE, STR, SLICE, ELLIPSIS})

_KIND_ORDER = {BOOL: 0, INT: 1, FLOAT: 2}
_TENSOR_OF = {BOOL: TENSOR_BOOL, INT: TENSOR_INT, FLOAT: TENSOR_FLOAT}
_KIND_OF = {TENSOR_BOOL: BOOL, TENSOR_INT: INT, TENSOR_FLOAT: FLOAT}


class _TensorMeta(type):
    def __getitem__(cls, kind: Any) -> frozenset[str]:
        return frozenset(_TENSOR_OF[_atom(k)] for k in _union_args(kind))


class Tensor(metaclass=_TensorMeta):
    """Type marker: ``Tensor`` is any tensor, ``Tensor[float]`` a float tensor,
    ``Tensor[int | bool]`` an int or bool tensor."""


def _union_args(kind: Any) -> tuple[Any, ...]:
    if isinstance(kind, _pytypes.UnionType):
        return kind.__args__
    return (kind,)


def _atom(kind: Any) -> str:
    mapping = {
        int: INT,
        float: FLOAT,
        bool: BOOL,
        list: LIST,
        tuple: TUPLE,
        None: NONE,
        type(None): NONE,
        str: STR,
        slice: SLICE,
        type(...): ELLIPSIS,
    }
    if kind in mapping:
        return mapping[kind]
    msg = f"Unsupported type {kind!r}."
    raise TypeError(msg)


def to_type_set(kind: Any) -> frozenset[str]:
    """Convert a user annotation (``Tensor[float]``, ``int | float``, ``list``) to
    atoms."""
    if kind is None:
        return ANY
    if isinstance(kind, frozenset):
        return kind
    if kind is Tensor:
        return TENSORS
    atoms: set[str] = set()
    for arg in _union_args(kind):
        if isinstance(arg, frozenset):
            atoms |= arg
        elif arg is Tensor:
            atoms |= TENSORS
        else:
            atoms.add(_atom(arg))
    return frozenset(atoms)


def type_of_value(value: Any) -> frozenset[str]:
    """Type atoms of a constant value."""
    if isinstance(value, bool | np.bool_):
        return frozenset({BOOL})
    if isinstance(value, int | np.integer):
        return frozenset({INT})
    if isinstance(value, float | np.floating):
        return frozenset({FLOAT})
    if isinstance(value, np.ndarray):
        kind = value.dtype.kind
        return frozenset(
            {
                TENSOR_BOOL
                if kind == "b"
                else TENSOR_INT
                if kind in "iu"
                else TENSOR_FLOAT
            }
        )
    if value is None:
        return frozenset({NONE})
    if isinstance(value, list):
        return frozenset({LIST})
    if isinstance(value, tuple):
        return frozenset({TUPLE})
    if isinstance(value, str):
        return frozenset({STR})
    if isinstance(value, slice):
        return frozenset({SLICE})
    if value is Ellipsis:
        return frozenset({ELLIPSIS})
    if hasattr(value, "name") and hasattr(value, "kind"):  # a Dtype
        return frozenset({STR})
    msg = f"Unsupported constant value {value!r} of type {type(value).__name__}."
    raise TypeError(msg)


def format_type(atoms: frozenset[str]) -> str:
    if atoms == ANY:
        return "Any"
    if atoms == TENSORS:
        return "Tensor"
    tensor_kinds = sorted(
        (_KIND_OF[a] for a in atoms if a in TENSORS), key=_KIND_ORDER.__getitem__
    )
    parts = []
    if tensor_kinds:
        parts.append(f"Tensor[{' | '.join(tensor_kinds)}]")
    parts.extend(sorted(a for a in atoms if a not in TENSORS))
    return " | ".join(parts)


def promote(
    left: frozenset[str], right: frozenset[str], *, true_divide: bool = False
) -> frozenset[str]:
    """Result types of an arithmetic op on operands of the given types."""
    out: set[str] = set()
    for a in left:
        for b in right:
            result = _promote_atoms(a, b)
            if result is None:
                continue
            if true_divide:
                result = TENSOR_FLOAT if result in TENSORS else FLOAT
            out.add(result)
    return frozenset(out)


def _promote_atoms(a: str, b: str) -> str | None:
    a_tensor, b_tensor = a in TENSORS, b in TENSORS
    ka = _KIND_OF.get(a, a)
    kb = _KIND_OF.get(b, b)
    if ka not in _KIND_ORDER or kb not in _KIND_ORDER:
        return None
    if a_tensor and b_tensor:
        kind = max(ka, kb, key=_KIND_ORDER.__getitem__)
        return _TENSOR_OF[kind]
    if a_tensor or b_tensor:
        tensor_kind = ka if a_tensor else kb
        scalar_kind = kb if a_tensor else ka
        # A Python float scalar lifts an int tensor to float; otherwise the tensor wins.
        kind = max(tensor_kind, scalar_kind, key=_KIND_ORDER.__getitem__)
        return _TENSOR_OF[kind]
    return max(ka, kb, key=_KIND_ORDER.__getitem__)


def as_tensor_kind(atoms: frozenset[str], kind: str) -> frozenset[str]:
    """Tensor atoms become ``Tensor[kind]``, scalar atoms become ``kind``."""
    out = set()
    for a in atoms:
        if a in TENSORS:
            out.add(_TENSOR_OF[kind])
        elif a in SCALARS:
            out.add(kind)
    return frozenset(out)
