"""Cross-backend parity: run one model on several backends and find where they diverge.

:func:`check_parity` compiles a model for a reference backend (NumPy in float64) and for
each backend to check, gives every one the same parameters and data, and evaluates
every intermediate value of the compiled flat graph node by node with each backend's
own lowerings. The report names the first value that diverges from the reference: the
flat-graph node path, the operator and the largest absolute difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import mithril_core.codegen.python  # noqa: F401 - registers the Python codegen
from mithril_core.backends.base import Backend
from mithril_core.dtypes import float64
from mithril_core.errors import CompileError, InputKeyError
from mithril_core.physical.flat import FlatGraph, Node, Value
from mithril_core.physical.model import compile as compile_model
from mithril_core.plugins import get_registry
from mithril_core.primitives.lowering import as_lowering

# SPEC quality bars: float64 and float32 agreement with the float64 NumPy reference.
TOLERANCES = {"float64": (1e-5, 1e-8), "float32": (1e-3, 1e-5)}
_LOW_PRECISION = (1e-2, 1e-3)


@dataclass
class Divergence:
    """The first value of one backend that differs from the reference.

    ``path`` is the flat-graph node path (``"linear_0.matrix_multiply_0"``) and ``op``
    its operator; for a difference that appears only in the compiled model's outputs
    (generated code, jit) ``op`` is ``"evaluate"`` and ``path`` names the output key.
    """

    backend: str
    path: str
    op: str
    value: str
    max_abs_diff: float
    detail: str = ""

    def __str__(self) -> str:
        text = (
            f"{self.backend}: {self.path} ({self.op}) -> {self.value}: "
            f"max abs diff {self.max_abs_diff:.3g}"
        )
        return f"{text} ({self.detail})" if self.detail else text


@dataclass
class BackendParity:
    """What was compared on one backend."""

    backend: str
    dtype: str
    rtol: float
    atol: float
    compared: int = 0
    max_abs_diff: float = 0.0
    first_divergence: Divergence | None = None
    traced: bool = (
        True  # False: the lowerings are not Python callables (C), outputs only
    )


@dataclass
class ParityReport:
    """Result of :func:`check_parity`; ``ok`` when no backend diverged."""

    reference: str
    results: dict[str, BackendParity] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.first_divergence is None for r in self.results.values())

    @property
    def divergences(self) -> list[Divergence]:
        """The first divergence of each backend that has one."""
        return [
            r.first_divergence
            for r in self.results.values()
            if r.first_divergence is not None
        ]

    @property
    def first(self) -> Divergence | None:
        found = self.divergences
        return found[0] if found else None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [f"parity against {self.reference} (float64):"]
        for r in self.results.values():
            scope = "every value" if r.traced else "outputs only"
            status = (
                "ok"
                if r.first_divergence is None
                else f"DIVERGES at {r.first_divergence}"
            )
            lines.append(
                f"  {r.backend} [{r.dtype}, rtol={r.rtol:g}, atol={r.atol:g}]: "
                f"{r.compared} values ({scope}), max abs diff {r.max_abs_diff:.3g}: "
                f"{status}"
            )
        return "\n".join(lines)


def check_parity(
    model: Any,
    backends: Sequence[str | Backend] | None = None,
    *,
    shapes: Mapping[str, Iterable[int | None]] | None = None,
    data: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    inference: bool = False,
    constant_keys: Mapping[str, Any] | None = None,
) -> ParityReport:
    """Compare every intermediate value of ``model`` on ``backends`` with a float64
    NumPy reference.

    :param backends: backend names (compiled in float64 where the backend supports it,
        else float32) or backend instances (used with their own dtype); default: every
        installed backend.
    :param shapes: input shapes for compile; data shapes are added automatically.
    :param data: NumPy (or array-like) values of the data inputs, the same on every
        backend.
    :param params: NumPy values of the parameters; default
        ``randomize_params(seed)`` (identical numbers on every backend).
    :param rtol: relative tolerance; default by dtype (1e-5 in float64, 1e-3 in
        float32).
    :param atol: absolute tolerance; default by dtype (1e-8 in float64, 1e-5 in
        float32).
    :param inference: compile with ``inference=True``.
    :param constant_keys: passed to compile.
    :returns: a :class:`ParityReport`; ``report.first`` is the first divergence.
    """
    data = {k: _as_reference(v) for k, v in (data or {}).items()}
    all_shapes = {k: list(v.shape) for k, v in data.items()}
    all_shapes.update({k: list(v) for k, v in (shapes or {}).items()})
    options: dict[str, Any] = {
        "shapes": all_shapes,
        "data_keys": set(data),
        "inference": inference,
        "constant_keys": constant_keys,
        "jit": False,
    }
    reference_backend = get_registry().backend_class("numpy")(dtype=float64)
    reference_pm = compile_model(model, reference_backend, **options)
    inputs: dict[str, Any] = dict(data)
    if params is None:
        inputs.update(reference_pm.randomize_params(seed))
    else:
        inputs.update({k: _as_reference(v) for k, v in params.items()})
    missing = [k for k in reference_pm.graph.inputs if k not in inputs]
    if missing:
        msg = (
            f"check_parity: no values for inputs {missing}; give them in data= "
            f"(or params=). Parameters are randomized unless params= is given."
        )
        raise InputKeyError(msg)
    reference, failure = _trace(
        reference_pm.graph, _lowerings("numpy"), reference_backend, inputs
    )
    if failure is not None:
        node, exc = failure
        msg = f"check_parity: the NumPy reference failed at {node.path} ({node.op})."
        raise CompileError(msg) from exc
    assert reference is not None  # NumPy lowerings are Python callables
    reference_outputs = {
        k: _value_of(v, reference) for k, v in reference_pm.graph.outputs.items()
    }

    report = ParityReport(reference="numpy")
    for item in backends if backends is not None else sorted(get_registry().backends):
        backend = _backend(item)
        dtype = backend.dtype.name
        default_rtol, default_atol = TOLERANCES.get(dtype, _LOW_PRECISION)
        result = BackendParity(
            backend=backend.name,
            dtype=dtype,
            rtol=default_rtol if rtol is None else rtol,
            atol=default_atol if atol is None else atol,
        )
        report.results[_unique(report.results, backend.name)] = result
        pm = compile_model(model, backend, **options)
        converted = {
            k: _to_backend(v, backend) for k, v in inputs.items() if k in pm.input_keys
        }
        traced, failure = _trace(pm.graph, _lowerings(backend.name), backend, converted)
        result.traced = traced is not None
        if traced is not None:
            _compare_trace(result, backend, pm.graph, reference, traced, failure)
        try:
            outputs = pm.evaluate(
                {k: v for k, v in converted.items() if k in pm.trainable_keys},
                {k: v for k, v in converted.items() if k not in pm.trainable_keys},
            )
        except Exception as exc:  # reported as this backend's divergence
            _fail(result, "compiled model", "evaluate", "outputs", exc)
            continue
        for key, expected in reference_outputs.items():
            if key in outputs:
                _compare(
                    result,
                    backend,
                    expected,
                    outputs[key],
                    path=f"output {key!r}",
                    op="evaluate",
                    value=key,
                )
    return report


# -- running a flat graph node by node --
def _lowerings(backend: str) -> dict[str, Any]:
    return get_registry().lowerings(backend)


def _forward(entry: Any) -> Any:
    forward = None if entry is None else as_lowering(entry).forward
    return forward if callable(forward) else None


def _trace(
    graph: FlatGraph,
    lowerings: Mapping[str, Any],
    backend: Backend,
    inputs: Mapping[str, Any],
) -> tuple[dict[str, Any] | None, tuple[Node, Exception] | None]:
    """Every node output of ``graph`` by value name (``None`` if some lowering is not
    a Python callable: backends that compile another language), and the node that
    raised with its exception, if one did (later nodes are not run)."""
    forwards = {}
    for node in graph.nodes:
        forward = _forward(lowerings.get(node.op))
        if forward is None:
            return None, None
        forwards[node.op] = forward
    values: dict[str, Any] = {
        value.name: inputs[key] for key, value in graph.inputs.items()
    }
    for node in graph.nodes:
        args = [_argument(v, values, backend) for v in node.inputs]
        try:
            values[node.output.name] = forwards[node.op](*args)
        except Exception as exc:  # the caller reports it with the node's path
            return values, (node, exc)
    return values, None


def _argument(value: Value, values: Mapping[str, Any], backend: Backend) -> Any:
    if value.is_constant:
        return _to_backend(value.constant, backend)
    return values[value.name]


def _value_of(value: Value, values: Mapping[str, Any]) -> Any:
    return value.constant if value.is_constant else values[value.name]


def _as_reference(value: Any) -> Any:
    array = np.asarray(value)
    return array.astype(np.float64) if array.dtype.kind == "f" else array


def _to_backend(value: Any, backend: Backend) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if not isinstance(value, np.ndarray):
        return value
    if value.dtype.kind == "f":
        dtype = backend.dtype.name
    elif value.dtype.kind == "b":
        dtype = "bool"
    else:
        dtype = "int64" if "int64" in backend.supported_dtypes else "int32"
    return backend.array(value, dtype=dtype)


def _backend(item: str | Backend) -> Backend:
    if isinstance(item, Backend):
        return item
    backend_class: type[Backend] = get_registry().backend_class(item)
    supported = backend_class.supported_dtypes
    dtype = "float64" if "float64" in supported else "float32"
    return backend_class(dtype=dtype)


def _unique(taken: Mapping[str, Any], name: str) -> str:
    index, candidate = 1, name
    while candidate in taken:
        index += 1
        candidate = f"{name}#{index}"
    return candidate


# -- comparing --
def _compare(
    result: BackendParity,
    backend: Backend,
    expected: Any,
    got: Any,
    *,
    path: str,
    op: str,
    value: str,
) -> None:
    diff, detail = _difference(backend, expected, got, result.rtol, result.atol)
    result.compared += 1
    if math.isfinite(diff):
        result.max_abs_diff = max(result.max_abs_diff, diff)
    if detail is not None and result.first_divergence is None:
        result.first_divergence = Divergence(
            backend=result.backend,
            path=path,
            op=op,
            value=value,
            max_abs_diff=diff,
            detail=detail,
        )


def _compare_trace(
    result: BackendParity,
    backend: Backend,
    graph: FlatGraph,
    reference: Mapping[str, Any],
    traced: Mapping[str, Any],
    failure: tuple[Node, Exception] | None,
) -> None:
    for node in graph.nodes:
        if failure is not None and node is failure[0]:
            _fail(result, node.path, node.op, node.output.name, failure[1])
            return
        name = node.output.name
        if name in reference:
            _compare(
                result,
                backend,
                reference[name],
                traced[name],
                path=node.path,
                op=node.op,
                value=name,
            )


def _fail(
    result: BackendParity, path: str, op: str, value: str, exc: Exception
) -> None:
    if result.first_divergence is None:
        result.first_divergence = Divergence(
            backend=result.backend,
            path=path,
            op=op,
            value=value,
            max_abs_diff=math.inf,
            detail=f"raised {type(exc).__name__}: {exc}",
        )


def _difference(
    backend: Backend, expected: Any, got: Any, rtol: float, atol: float
) -> tuple[float, str | None]:
    """``(max abs diff, None if within tolerance else why)``."""
    if isinstance(expected, list | tuple):
        if not isinstance(got, list | tuple) or len(got) != len(expected):
            return math.inf, f"expected a sequence of {len(expected)}, got {got!r}"
        found = [
            _difference(backend, e, g, rtol, atol)
            for e, g in zip(expected, got, strict=True)
        ]
        diff = max((d for d, _ in found), default=0.0)
        reasons = [f"element {i}: {why}" for i, (_, why) in enumerate(found) if why]
        return diff, reasons[0] if reasons else None
    want = np.asarray(expected)
    have = np.asarray(backend.to_numpy(got) if _is_array(backend, got) else got)
    if want.shape != have.shape:
        return math.inf, f"shape {list(have.shape)}, reference {list(want.shape)}"
    if want.size == 0:
        return 0.0, None
    if want.dtype.kind in "biu" and have.dtype.kind in "biu":
        diff = float(np.max(np.abs(want.astype(np.int64) - have.astype(np.int64))))
        return diff, None if diff == 0 else "values differ"
    want64, have64 = want.astype(np.float64), have.astype(np.float64)
    with np.errstate(invalid="ignore"):
        delta = np.abs(want64 - have64)
    both_nan = np.isnan(want64) & np.isnan(have64)
    delta = np.where(both_nan, 0.0, delta)
    diff = float(np.max(np.where(np.isnan(delta), np.inf, delta)))
    close = np.isclose(have64, want64, rtol=rtol, atol=atol, equal_nan=True)
    if bool(np.all(close)):
        return diff, None
    where = np.unravel_index(int(np.argmin(close.reshape(-1) * 1)), close.shape)
    return diff, (
        f"{int(np.size(close) - np.count_nonzero(close))} of {close.size} elements "
        f"outside rtol={rtol:g}, atol={atol:g}; at {tuple(int(i) for i in where)}: "
        f"{have64[where]!r} vs reference {want64[where]!r}"
    )


def _is_array(backend: Backend, value: Any) -> bool:
    return backend.array_info(value) is not None


__all__ = ["BackendParity", "Divergence", "ParityReport", "check_parity"]
