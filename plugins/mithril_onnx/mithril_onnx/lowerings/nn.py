from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mithril_core.primitives.nn import adaptive_bounds, conv_padding
from mithril_onnx.export import BOOL, INT64, OnnxBuilder, Sym

Ints = tuple[int, ...]


def softmax(g: OnnxBuilder, input: Sym, axis: int) -> Any:
    return g.op("Softmax", g.floats(input), axis=axis)


def log_softmax(g: OnnxBuilder, input: Sym, axis: int) -> Any:
    return g.op("LogSoftmax", g.floats(input), axis=axis)


def _conv(
    g: OnnxBuilder,
    input: Sym,
    weight: Any,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> Any:
    kernel = tuple(np.shape(weight)) if not isinstance(weight, Sym) else weight.shape
    if kernel is None or None in kernel[2:]:
        g.fail("the kernel size (weight shape) must be known")
    pads = conv_padding(padding, kernel[2:], dilation)  # type: ignore[arg-type]
    return g.op(
        "Conv",
        *g.promote(input, weight),
        strides=list(stride),
        dilations=list(dilation),
        pads=[p[0] for p in pads] + [p[1] for p in pads],
        group=int(groups),
    )


conv1d = _conv
conv2d = _conv


def max_pool2d(
    g: OnnxBuilder,
    input: Sym,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
) -> Any:
    return g.op(
        "MaxPool",
        input,
        kernel_shape=list(kernel_size),
        strides=list(stride),
        pads=[*padding, *padding],
        dilations=list(dilation),
    )


def avg_pool2d(
    g: OnnxBuilder, input: Sym, kernel_size: Ints, stride: Ints, padding: Ints
) -> Any:
    return g.op(
        "AveragePool",
        input,
        kernel_shape=list(kernel_size),
        strides=list(stride),
        pads=[*padding, *padding],
        count_include_pad=1,
    )


def adaptive_avg_pool2d(
    g: OnnxBuilder, input: Sym, output_size: tuple[int | None, ...]
) -> Any:
    if input.shape is None or None in input.shape[2:]:
        g.fail("the spatial size of the input must be known")
    sizes = [s or n for s, n in zip(output_size, input.shape[2:], strict=True)]
    if sizes == [1, 1]:
        return g.op("GlobalAveragePool", input)
    rows, cols = (
        adaptive_bounds(n, s)  # type: ignore[arg-type]
        for n, s in zip(input.shape[2:], sizes, strict=True)
    )
    cells = []
    for r0, r1 in rows:
        row = [
            g.op(
                "ReduceMean",
                g.op(
                    "Slice", input, g.ints([r0, c0]), g.ints([r1, c1]), g.ints([2, 3])
                ),
                g.ints([2, 3]),
                keepdims=1,
            )
            for c0, c1 in cols
        ]
        cells.append(row[0] if len(row) == 1 else g.op("Concat", *row, axis=3))
    return cells[0] if len(cells) == 1 else g.op("Concat", *cells, axis=2)


def valid_indices(g: OnnxBuilder, indices: Sym, bound: Any) -> tuple[Any, Any]:
    """``(valid, safe)``: where ``0 <= indices < bound``, and the indices with the
    others replaced by 0. Indices computed in the graph are not checked before the
    run and ONNX cannot raise: an invalid one gives NaN (as JAX and MLX), never
    another row (Gather would count negatives from the end)."""
    ids = g.cast(indices, INT64)
    valid = g.op(
        "And", g.op("GreaterOrEqual", ids, 0), g.op("Less", ids, g.cast(bound, INT64))
    )
    return valid, g.op("Where", valid, ids, g.const(np.int64(0)))


def embedding(g: OnnxBuilder, input: Any, weight: Any) -> Any:
    weight = g.sym(weight)
    valid, safe = valid_indices(g, g.sym(input), g.dims(weight)[0])
    rows = g.op("Gather", weight, safe, axis=0)
    keep = g.op("Unsqueeze", valid, g.ints([-1]))
    return g.op("Where", keep, rows, g.const(np.nan, weight.dtype))


def _swap_last(g: OnnxBuilder, value: Sym) -> Any:
    if value.rank is None:
        g.fail(f"the rank of {value.name} is unknown")
    perm = list(range(value.rank))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return g.op("Transpose", value, perm=perm)


def scaled_dot_product_masked(
    g: OnnxBuilder,
    query: Sym,
    key: Sym,
    value: Sym,
    mask: Any,
    is_causal: bool,
    scale: float | None,
) -> Any:
    query, key, value = g.promote(query, key, value)
    if scale is None:
        depth = g.dims(query)[-1]
        factor: Any = (
            depth**-0.5
            if isinstance(depth, int)
            else g.op("Reciprocal", g.op("Sqrt", g.cast(depth, query.dtype)))
        )
    else:
        factor = float(scale)
    scores = g.op("Mul", g.op("MatMul", query, _swap_last(g, key)), factor)
    minus_inf = g.const(-np.inf, query.dtype)
    if is_causal:
        scores = g.op("Where", _causal(g, query, key), scores, minus_inf)
    if mask is None:
        return g.op("MatMul", g.op("Softmax", scores, axis=-1), value)
    if (mask.dtype if isinstance(mask, Sym) else np.asarray(mask).dtype) == BOOL:
        scores = g.op("Where", mask, scores, minus_inf)
    else:
        scores = g.op("Add", scores, mask)
    # A fully masked row gives zeros (as PyTorch), not NaN.
    top = g.op("ReduceMax", scores, g.ints([-1]), keepdims=1)
    top = g.op("Where", g.op("IsInf", top), g.const(0.0, query.dtype), top)
    exp = g.op("Exp", g.op("Sub", scores, top))
    total = g.op("ReduceSum", exp, g.ints([-1]), keepdims=1)
    total = g.op("Where", g.op("Equal", total, 0.0), g.const(1.0, query.dtype), total)
    return g.op("MatMul", g.op("Div", exp, total), value)


def _causal(g: OnnxBuilder, query: Sym, key: Sym) -> Any:
    rows, cols = g.dims(query)[-2], g.dims(key)[-2]
    if isinstance(rows, int) and isinstance(cols, int):
        return g.const(np.tril(np.ones((rows, cols), dtype=bool)))
    ones = g.op("ConstantOfShape", g.shape_tensor([rows, cols]), value=_one())
    return g.cast(g.op("Trilu", ones, upper=0), BOOL)


def _one() -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ones(1, dtype=np.int64))


def scaled_dot_product(
    g: OnnxBuilder,
    query: Sym,
    key: Sym,
    value: Sym,
    is_causal: bool,
    scale: float | None,
) -> Any:
    return scaled_dot_product_masked(g, query, key, value, None, is_causal, scale)


def dropout(g: OnnxBuilder, input: Any, p: float, inference: bool) -> Any:
    if inference or p == 0.0:
        return input
    g.fail(
        "dropout in training mode draws random masks that an exported model cannot "
        "reproduce; compile with inference=True (or p=0) to export"
    )


def pad(
    g: OnnxBuilder,
    input: Sym,
    pad_width: tuple[tuple[int, int], ...],
    mode: str,
    value: float,
) -> Any:
    pads = [int(p[0]) for p in pad_width] + [int(p[1]) for p in pad_width]
    if mode == "constant":
        fill = g.const(np.asarray(value).astype(input.dtype))
        return g.op("Pad", input, g.ints(pads), fill, mode="constant")
    return g.op(
        "Pad", input, g.ints(pads), mode="edge" if mode == "edge" else "reflect"
    )


LOWERINGS: dict[str, Callable[..., Any]] = {
    "softmax": softmax,
    "log_softmax": log_softmax,
    "conv1d": conv1d,
    "conv2d": conv2d,
    "max_pool2d": max_pool2d,
    "avg_pool2d": avg_pool2d,
    "adaptive_avg_pool2d": adaptive_avg_pool2d,
    "embedding": embedding,
    "scaled_dot_product": scaled_dot_product,
    "scaled_dot_product_masked": scaled_dot_product_masked,
    "dropout": dropout,
    "pad": pad,
}
