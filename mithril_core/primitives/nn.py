"""Neural-network primitives that are not element-wise: softmax, convolution, pooling,
embedding, attention, dropout and padding."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from mithril_core.logical import shapes as sh
from mithril_core.logical import types as ty
from mithril_core.logical.connection import NOVALUE, IOKey
from mithril_core.logical.model import Primitive
from mithril_core.primitives import _rules as r


def _check_axis(rule: r.sh.Rule) -> bool:
    dims = rule.conn("input").shape_node.dims()
    axis = rule.conn("axis").value
    if dims is None:
        return False
    r.normalize_axes(axis, len(dims))
    return True


def _softmax_grad(xp: Any, g: Any, y: Any, input: Any, axis: int) -> Any:  # noqa: A002
    return y * (g - xp.sum(g * y, axis=axis, keepdims=True))


def _log_softmax_grad(xp: Any, g: Any, y: Any, input: Any, axis: int) -> Any:  # noqa: A002
    return g - xp.exp(y) * xp.sum(g, axis=axis, keepdims=True)


class Softmax(Primitive):
    """``exp(x) / sum(exp(x))`` along ``axis``."""

    op_name = "softmax"
    # Gradient rules: see ``elementwise.py``.
    grad_rules = {"input": _softmax_grad}
    rules = (r.kind_type(ty.FLOAT), _check_axis)
    # max, subtract, exp, sum, divide (log_softmax: a final subtract instead)
    flops_per_element = 5

    def __init__(self, axis: int = -1, name: str | None = None) -> None:
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)], type=ty.TENSORS),
            axis=axis,
            output=IOKey(shape=[("V", ...)], type=ty.TENSORS),
        )


class LogSoftmax(Softmax):
    """``log(softmax(x))`` along ``axis``, computed stably."""

    op_name = "log_softmax"
    grad_rules = {"input": _log_softmax_grad}


# -- shared helpers (also used by the backends' lowerings) -----------------------------

_FLOAT_TENSOR = frozenset({ty.TENSOR_FLOAT})


def _val(dim: sh.Dim) -> int | None:
    return dim.find().value


def as_tuple(value: Any, rank: int, what: str) -> tuple[int, ...]:
    """``value`` (an int or ``rank`` ints) as a tuple of ``rank`` ints, each >= 0 for
    ``padding`` and >= 1 for anything else (stride, dilation, kernel_size)."""
    result: tuple[int, ...] | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        result = (value,) * rank
    elif isinstance(value, tuple | list) and len(value) == rank:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            result = tuple(value)
    if result is None:
        msg = f"{what}={value!r}: expected an int or {rank} ints."
        raise ValueError(msg)
    least = 0 if what == "padding" else 1
    if any(v < least for v in result):
        msg = f"{what}={value!r}: every value must be >= {least}."
        raise ValueError(msg)
    return result


def _padding_arg(padding: Any, rank: int, stride: tuple[int, ...]) -> Any:
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            msg = (
                f"padding={padding!r}: expected an int, {rank} ints, 'same' or 'valid'."
            )
            raise ValueError(msg)
        if padding == "same" and any(s != 1 for s in stride):
            msg = "padding='same' needs stride 1 (as in PyTorch)."
            raise ValueError(msg)
        return padding
    return as_tuple(padding, rank, "padding")


def conv_padding(
    padding: Any, kernel: Sequence[int], dilation: Sequence[int]
) -> list[tuple[int, int]]:
    """(before, after) padding per spatial axis for a convolution's ``padding`` argument
    (ints, ``"valid"``, or ``"same"``: total ``d * (k - 1)``, the odd unit after, as
    PyTorch)."""
    if padding == "valid":
        return [(0, 0)] * len(kernel)
    if padding == "same":
        pads = []
        for k, d in zip(kernel, dilation, strict=True):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return pads
    return [(p, p) for p in padding]


def _window_out(
    size: int, kernel: int, pads: tuple[int, int], stride: int, dilation: int
) -> int:
    span = size + pads[0] + pads[1] - dilation * (kernel - 1) - 1
    if span < 0:
        r._fail(
            f"window of size {kernel} (dilation {dilation}) does not fit an axis of "
            f"size {size} padded by {pads}"
        )
    return span // stride + 1


# -- convolution -----------------------------------------------------------------------


def _conv_shape(rule: r.sh.Rule) -> bool:
    inp, weight, out = rule.conn("input"), rule.conn("weight"), rule.conn("output")
    idims, wdims, odims = (c.shape_node.dims() for c in (inp, weight, out))
    assert idims is not None and wdims is not None and odims is not None
    finished = True
    groups = rule.conn("groups").value
    if groups is NOVALUE:
        finished = False
    else:
        if not isinstance(groups, int) or groups < 1:
            r._fail(f"groups must be a positive int, got {groups!r}")
        c_in, per_group, c_out = _val(idims[1]), _val(wdims[1]), _val(wdims[0])
        if c_in is not None:
            if c_in % groups:
                r._fail(f"input channels {c_in} are not divisible by groups {groups}")
            sh.set_dim(wdims[1], c_in // groups)
        elif per_group is not None:
            sh.set_dim(idims[1], per_group * groups)
        else:
            finished = False
        if c_out is not None and c_out % groups:
            r._fail(f"output channels {c_out} are not divisible by groups {groups}")
    stride, padding, dilation = (
        rule.conn(n).value for n in ("stride", "padding", "dilation")
    )
    if NOVALUE in (stride, padding, dilation):
        return False
    spatial = range(2, len(idims))
    if padding == "same":
        for i in spatial:
            sh.unify_dims(idims[i], odims[i])
        return finished
    kernel = [_val(wdims[i]) for i in spatial]
    for i, k in zip(spatial, kernel, strict=True):
        size, out_size = _val(idims[i]), _val(odims[i])
        if k is None or (size is None and (out_size is None or stride[i - 2] != 1)):
            finished = False
            continue
        axis_padding = padding if isinstance(padding, str) else (padding[i - 2],)
        lo, hi = conv_padding(axis_padding, [k], [dilation[i - 2]])[0]
        if size is None:  # stride 1: the input size follows from the output's
            size = out_size + dilation[i - 2] * (k - 1) - lo - hi
            sh.set_dim(idims[i], size)
        out = _window_out(size, k, (lo, hi), stride[i - 2], dilation[i - 2])
        sh.set_dim(odims[i], out)
    return finished


class _Convolution(Primitive):
    rank: ClassVar[int] = 0
    rules = (_conv_shape,)

    def __init__(
        self,
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = NOVALUE,
        name: str | None = None,
    ) -> None:
        n = self.rank
        spatial = ["L"] if n == 1 else ["H", "W"]
        strides = as_tuple(stride, n, "stride")
        super().__init__(
            name=name,
            input=IOKey(shape=["N", "C_in", *spatial], type=_FLOAT_TENSOR),
            weight=IOKey(
                shape=["C_out", "C_in_per_group", *(f"K{s}" for s in spatial)],
                type=_FLOAT_TENSOR,
            ),
            stride=strides,
            padding=_padding_arg(padding, n, strides),
            dilation=as_tuple(dilation, n, "dilation"),
            groups=IOKey(type=int) if groups is NOVALUE else groups,
            output=IOKey(
                shape=["N", "C_out", *(f"{s}_out" for s in spatial)],
                type=_FLOAT_TENSOR,
            ),
        )

    def flops(
        self,
        input_shapes: Mapping[str, tuple[int, ...] | None],
        output_shape: tuple[int, ...] | None,
    ) -> int | None:
        weight = input_shapes["weight"]
        if weight is None or output_shape is None:
            return None
        # A multiply-add per output element and weight element of its group
        # (C_in / groups * kernel size); the bias is the composite's own Add.
        return 2 * math.prod(output_shape) * math.prod(weight[1:])


class Convolution1D(_Convolution):
    """Cross-correlation of ``input [N, C_in, L]`` with ``weight [C_out, C_in / groups,
    K]`` (no bias), as ``torch.nn.functional.conv1d``: ``output [N, C_out, L_out]``,
    ``L_out = (L + 2 * padding - dilation * (K - 1) - 1) // stride + 1``.

    :param stride: an int (or a 1-tuple).
    :param padding: an int, ``"valid"`` (0) or ``"same"`` (stride 1 only; the odd unit
        of padding goes after, as PyTorch).
    :param dilation: an int (or a 1-tuple).
    :param groups: an int; omitted, the ``groups`` terminal is an input to bind when
        the primitive is called (composites bind it to a possibly symbolic value).
    """

    op_name = "conv1d"
    rank = 1


class Convolution2D(_Convolution):
    """Cross-correlation of ``input [N, C_in, H, W]`` with ``weight [C_out, C_in /
    groups, KH, KW]`` (no bias), as ``torch.nn.functional.conv2d``.

    ``stride``, ``padding`` and ``dilation`` are ints or pairs; ``padding`` may also be
    ``"valid"`` or ``"same"`` (stride 1 only). ``groups``: as :class:`Convolution1D`.
    """

    op_name = "conv2d"
    rank = 2


# -- pooling ---------------------------------------------------------------------------


def _pool_shape(rule: r.sh.Rule) -> bool:
    kernel, stride, padding = (
        rule.conn(n).value for n in ("kernel_size", "stride", "padding")
    )
    dilation = rule.conn("dilation").value if "dilation" in rule.terminals else (1, 1)
    idims = rule.conn("input").shape_node.dims()
    odims = rule.conn("output").shape_node.dims()
    assert idims is not None and odims is not None
    finished = True
    for i in range(2):
        size = _val(idims[2 + i])
        if size is None:
            finished = False
            continue
        pads = (padding[i], padding[i])
        sh.set_dim(
            odims[2 + i], _window_out(size, kernel[i], pads, stride[i], dilation[i])
        )
    return finished


def _window_flops(kernel_size: tuple[int, ...], output_shape: Any) -> int | None:
    """One comparison or addition per output element and window element."""
    if output_shape is None:
        return None
    return math.prod(output_shape) * math.prod(kernel_size)


def _pool_terminals(kernel_size: Any, stride: Any, padding: Any) -> dict[str, Any]:
    kernel = as_tuple(kernel_size, 2, "kernel_size")
    pads = as_tuple(padding, 2, "padding")
    if any(2 * p > k for p, k in zip(pads, kernel, strict=True)):
        msg = f"padding {pads} must be at most half of kernel_size {kernel}."
        raise ValueError(msg)
    return {
        "input": IOKey(shape=["N", "C", "H", "W"], type=_FLOAT_TENSOR),
        "kernel_size": kernel,
        "stride": kernel if stride is None else as_tuple(stride, 2, "stride"),
        "padding": pads,
    }


class MaxPool2D(Primitive):
    """Max over ``kernel_size`` windows of ``input [N, C, H, W]``, as
    ``torch.nn.functional.max_pool2d`` (padding with -inf, ``ceil_mode=False``). The
    gradient goes to the first maximum of each window (row-major), as PyTorch.

    :param kernel_size: int or pair; ``stride`` defaults to it.
    """

    op_name = "max_pool2d"
    rules = (_pool_shape,)

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(
            name=name,
            **_pool_terminals(kernel_size, stride, padding),
            dilation=as_tuple(dilation, 2, "dilation"),
            output=IOKey(shape=["N", "C", "H_out", "W_out"], type=_FLOAT_TENSOR),
        )

    def flops(
        self,
        input_shapes: Mapping[str, tuple[int, ...] | None],
        output_shape: tuple[int, ...] | None,
    ) -> int | None:
        return _window_flops(self.attributes["kernel_size"], output_shape)


class AvgPool2D(Primitive):
    """Mean over ``kernel_size`` windows of ``input [N, C, H, W]``, as
    ``torch.nn.functional.avg_pool2d`` (zero padding counted in the mean:
    ``count_include_pad=True``; ``ceil_mode=False``)."""

    op_name = "avg_pool2d"
    rules = (_pool_shape,)

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(
            name=name,
            **_pool_terminals(kernel_size, stride, padding),
            output=IOKey(shape=["N", "C", "H_out", "W_out"], type=_FLOAT_TENSOR),
        )

    def flops(
        self,
        input_shapes: Mapping[str, tuple[int, ...] | None],
        output_shape: tuple[int, ...] | None,
    ) -> int | None:
        return _window_flops(self.attributes["kernel_size"], output_shape)


def adaptive_bounds(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling cells: ``[i*size // out, ceil((i+1)*size / out))``."""
    return [(i * size // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _adaptive_shape(rule: r.sh.Rule) -> bool:
    output_size = rule.conn("output_size").value
    idims = rule.conn("input").shape_node.dims()
    assert idims is not None
    result: list[sh.Dim | int | None] = [idims[0], idims[1]]
    for i, size in enumerate(output_size):
        result.append(idims[2 + i] if size is None else size)
    sh.unify_with_dims(rule.conn("output").shape_node, result)
    return True


class AdaptiveAvgPool2D(Primitive):
    """Mean over ``output_size`` cells of ``input [N, C, H, W]``, as
    ``torch.nn.functional.adaptive_avg_pool2d``; ``output_size`` is an int or a pair
    (``None`` keeps that input size)."""

    op_name = "adaptive_avg_pool2d"
    rules = (_adaptive_shape,)

    def __init__(
        self, output_size: int | tuple[int | None, int | None], name: str | None = None
    ) -> None:
        sizes = (output_size,) * 2 if isinstance(output_size, int) else output_size
        if len(sizes) != 2 or any(
            not (s is None or (isinstance(s, int) and s > 0)) for s in sizes
        ):
            msg = f"output_size={output_size!r}: expected a positive int or a pair."
            raise ValueError(msg)
        super().__init__(
            name=name,
            input=IOKey(shape=["N", "C", "H", "W"], type=_FLOAT_TENSOR),
            output_size=tuple(sizes),
            output=IOKey(shape=["N", "C", "H_out", "W_out"], type=_FLOAT_TENSOR),
        )

    def flops(
        self,
        input_shapes: Mapping[str, tuple[int, ...] | None],
        output_shape: tuple[int, ...] | None,
    ) -> int | None:
        shape = input_shapes["input"]
        # Each input element is summed into (about) one cell.
        return None if shape is None else math.prod(shape)


# -- embedding, attention, dropout, padding --------------------------------------------


class Embedding(Primitive):
    """Rows of ``weight [num_embeddings, dim]`` at the int indices ``input`` (any
    shape): ``output [*input.shape, dim]``, as ``torch.nn.functional.embedding``.
    The gradient is scattered (summed) into ``weight``; ``input`` has none.

    :param num_embeddings: fixes ``weight.shape[0]`` when given.
    :param dim: fixes ``weight.shape[1]`` when given.
    """

    op_name = "embedding"
    flops_per_element = 0

    def __init__(
        self,
        num_embeddings: int | None = None,
        dim: int | None = None,
        name: str | None = None,
    ) -> None:
        rows = "num_embeddings" if num_embeddings is None else num_embeddings
        width = "dim" if dim is None else dim
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)], type=ty.Tensor[int]),
            weight=IOKey(shape=[rows, width], type=_FLOAT_TENSOR),
            output=IOKey(shape=[("V", ...), width], type=_FLOAT_TENSOR),
        )


class ScaledDotProduct(Primitive):
    """Attention ``softmax(query @ key^T * scale [+ mask]) @ value`` over the last two
    axes, as ``torch.nn.functional.scaled_dot_product_attention``: ``query [..., Lq,
    E]``, ``key [..., Lk, E]``, ``value [..., Lk, Ev]`` -> ``output [..., Lq, Ev]``.

    :param is_causal: mask key positions after the query position (PyTorch's
        top-left aligned ``tril`` when ``Lq != Lk``).
    :param scale: ``None`` means ``1 / sqrt(E)``.
    :param use_mask: add a ``mask`` input (last terminal before ``output``),
        broadcastable to ``[..., Lq, Lk]``: a bool mask keeps the ``True`` positions,
        a float mask is added to the scores (as PyTorch's ``attn_mask``). The masked
        primitive is the class :class:`MaskedScaledDotProduct`
        (op ``scaled_dot_product_masked``); no gradient flows into the mask.
    """

    op_name = "scaled_dot_product"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        use_mask = kwargs.get("use_mask", args[2] if len(args) > 2 else False)
        return super().__new__(MaskedScaledDotProduct if use_mask else cls)

    def __init__(
        self,
        is_causal: bool = False,
        scale: float | None = None,
        use_mask: bool = False,
        name: str | None = None,
    ) -> None:
        mask = {"mask": IOKey(type=ty.Tensor[bool | float])} if use_mask else {}
        super().__init__(
            name=name,
            query=IOKey(shape=[("B", ...), "Lq", "E"], type=_FLOAT_TENSOR),
            key=IOKey(shape=[("B", ...), "Lk", "E"], type=_FLOAT_TENSOR),
            value=IOKey(shape=[("B", ...), "Lk", "Ev"], type=_FLOAT_TENSOR),
            **mask,
            is_causal=bool(is_causal),
            scale=None if scale is None else float(scale),
            output=IOKey(shape=[("B", ...), "Lq", "Ev"], type=_FLOAT_TENSOR),
        )

    def flops(
        self,
        input_shapes: Mapping[str, tuple[int, ...] | None],
        output_shape: tuple[int, ...] | None,
    ) -> int | None:
        query, key = input_shapes["query"], input_shapes["key"]
        if query is None or key is None or output_shape is None:
            return None
        scores = math.prod(output_shape[:-1]) * key[-2]  # [..., Lq, Lk]
        masked = "mask" in input_shapes or self.attributes["is_causal"]
        # query @ key^T and weights @ value (a multiply-add each), then scale,
        # mask and softmax (5) per score.
        per_score = 2 * query[-1] + 2 * output_shape[-1] + 1 + int(masked) + 5
        return scores * per_score


class MaskedScaledDotProduct(ScaledDotProduct):
    """:class:`ScaledDotProduct` with a ``mask`` input (``ScaledDotProduct(use_mask=
    True)`` builds one); terminals ``query, key, value, mask, is_causal, scale``."""

    op_name = "scaled_dot_product_masked"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return Primitive.__new__(cls)

    def __init__(
        self,
        is_causal: bool = False,
        scale: float | None = None,
        use_mask: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(is_causal=is_causal, scale=scale, use_mask=True, name=name)


class Dropout(Primitive):
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``
    while training; the identity (removed at compile) when compiled with
    ``inference=True`` or when ``p == 0``. The ``inference`` terminal is set by
    ``compile``. Random numbers come from each backend's generator (NumPy: a module
    generator, see :func:`mithril_core.backends.numpy.lowerings.nn.seed_dropout`;
    JAX: a fixed key folded with a call counter, so a jitted function reuses its
    mask; MLX and PyTorch: their global generators)."""

    op_name = "dropout"
    deterministic = False  # a fresh random mask per call
    rules = (r.same_type(),)
    flops_per_element = 2  # compare a random draw, scale

    def __init__(self, p: float = 0.5, name: str | None = None) -> None:
        if not 0.0 <= p < 1.0:
            msg = f"Dropout: p={p!r} must be in [0, 1)."
            raise ValueError(msg)
        super().__init__(
            name=name,
            input=IOKey(shape=[("V", ...)], type=ty.TENSORS),
            p=float(p),
            inference=IOKey(type=bool),
            output=IOKey(shape=[("V", ...)], type=ty.TENSORS),
        )

    def forwarded_input(self, constants: dict[str, Any]) -> str | None:
        if constants.get("p") == 0.0 or constants.get("inference") is True:
            return "input"
        return None


PAD_MODES = ("constant", "reflect", "edge")


def _pad_shape(rule: r.sh.Rule) -> bool:
    widths = rule.conn("pad_width").value
    inp, out = rule.conn("input"), rule.conn("output")
    sh.unify_with_dims(inp.shape_node, [None] * len(widths))
    sh.unify_with_dims(out.shape_node, [None] * len(widths))
    idims, odims = inp.shape_node.dims(), out.shape_node.dims()
    assert idims is not None and odims is not None
    finished = True
    for i, (before, after) in enumerate(widths):
        if before == after == 0:
            sh.unify_dims(idims[i], odims[i])
            continue
        size, padded = _val(idims[i]), _val(odims[i])
        if size is not None:
            sh.set_dim(odims[i], size + before + after)
        elif padded is not None:
            sh.set_dim(idims[i], padded - before - after)
        else:
            finished = False
    return finished


class Pad(Primitive):
    """Pad ``input`` by ``pad_width`` (NumPy's ``((before, after), ...)``, one pair per
    axis) with ``mode`` ``"constant"`` (``value``), ``"reflect"`` (mirror without the
    edge, PyTorch's ``reflect``) or ``"edge"`` (PyTorch's ``replicate``)."""

    op_name = "pad"
    flops_per_element = 0
    rules = (_pad_shape, r.same_type())

    def __init__(
        self,
        pad_width: Sequence[tuple[int, int]],
        mode: str = "constant",
        value: float = 0.0,
        name: str | None = None,
    ) -> None:
        widths = tuple((int(b), int(a)) for b, a in pad_width)
        if any(b < 0 or a < 0 for b, a in widths):
            msg = f"Pad: pad_width={pad_width!r} must be non-negative."
            raise ValueError(msg)
        if mode not in PAD_MODES:
            msg = f"Pad: mode={mode!r}; expected one of {', '.join(PAD_MODES)}."
            raise ValueError(msg)
        super().__init__(
            name=name,
            input=IOKey(type=ty.TENSORS),
            pad_width=widths,
            mode=mode,
            value=float(value),
            output=IOKey(type=ty.TENSORS),
        )
