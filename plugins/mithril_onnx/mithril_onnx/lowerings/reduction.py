from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from mithril_onnx.export import INT64, OnnxBuilder, Sym

Axis = int | tuple[int, ...] | None


def _axes(g: OnnxBuilder, axis: Axis) -> Sym | None:
    if axis is None:
        return None
    return g.axes([axis] if isinstance(axis, int) else axis)


def _reduce(op_type: str, to_float: bool = False) -> Callable[..., Any]:
    def lower(g: OnnxBuilder, input: Sym, axis: Axis, keepdim: bool) -> Any:
        x = g.floats(input) if to_float else input
        if x.dtype.kind == "b":
            x = g.cast(x, INT64)
        return g.op(op_type, x, _axes(g, axis), keepdims=int(keepdim))

    return lower


sum = _reduce("ReduceSum")
mean = _reduce("ReduceMean", to_float=True)
max = _reduce("ReduceMax")
min = _reduce("ReduceMin")


def variance(
    g: OnnxBuilder, input: Sym, axis: Axis, keepdim: bool, correction: float
) -> Any:
    x = g.floats(input)
    axes = _axes(g, axis)
    centered = g.op("Sub", x, g.op("ReduceMean", x, axes, keepdims=1))
    total = g.op(
        "ReduceSum", g.op("Mul", centered, centered), axes, keepdims=int(keepdim)
    )
    count = _count(g, x, axis)
    return g.op("Div", total, g.cast(g.op("Sub", count, correction), x.dtype))


def _count(g: OnnxBuilder, x: Sym, axis: Axis) -> Any:
    # How many values each result reduces: a number where the dims are known.
    axes = None if axis is None else ([axis] if isinstance(axis, int) else list(axis))
    if x.shape is not None:
        picked = x.shape if axes is None else [x.shape[a] for a in axes]
        if None not in picked:
            return g.const(float(math.prod(picked)), x.dtype)  # type: ignore[arg-type]
    dims = g.op("Shape", x)
    if axes is not None:
        dims = g.op("Gather", dims, g.ints(axes), axis=0)
    return g.cast(g.op("ReduceProd", dims, keepdims=0), x.dtype)


def _arg(op_type: str) -> Callable[..., Any]:
    def lower(g: OnnxBuilder, input: Sym, axis: int | None, keepdim: bool) -> Any:
        x = input if input.dtype.kind == "f" else g.cast(input, "float64")
        if axis is not None:
            return g.op(op_type, x, axis=axis, keepdims=int(keepdim))
        flat = g.op("Reshape", x, g.ints([-1]))
        found = g.op(op_type, flat, axis=0, keepdims=0)
        if keepdim:
            if input.rank is None:
                g.fail("keepdim with axis=None needs the input's rank")
            return g.op("Reshape", found, g.ints([1] * input.rank))
        return found

    return lower


arg_max = _arg("ArgMax")
arg_min = _arg("ArgMin")


LOWERINGS: dict[str, Callable[..., Any]] = {
    "sum": sum,
    "mean": mean,
    "max": max,
    "min": min,
    "variance": variance,
    "arg_max": arg_max,
    "arg_min": arg_min,
}
