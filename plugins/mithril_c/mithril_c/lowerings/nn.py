from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mithril_c._emit import Emitter
from mithril_c._fuse import broadcast_strides, contiguous_strides, loop_nest
from mithril_c.lowerings._types import CLowering, dtypes
from mithril_core.errors import CompileError
from mithril_core.physical.flat import Node, Value
from mithril_core.primitives.nn import conv_padding

Needs = tuple[bool, ...]


def _layout(ctx: Emitter, node: Node) -> str:
    shape = ctx.shape(node.input("input"))
    axis = node.input("axis").constant % len(shape)
    outer = math.prod(shape[:axis])
    inner = math.prod(shape[axis + 1 :])
    return f"{outer}, {shape[axis]}, {inner}"


def softmax(ctx: Emitter, node: Node) -> None:
    x = ctx.ptr(node.input("input"))
    ctx.line(f"mc_softmax({ctx.out(node)}, {x}, {_layout(ctx, node)});")


def softmax_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    pointer, accumulate = ctx.target(node.input("input"))
    ctx.line(
        f"mc_softmax_vjp({pointer}, {ctx.gout(node)}, {ctx.ptr(node.output)}, "
        f"{_layout(ctx, node)}, {int(accumulate)});"
    )


def log_softmax(ctx: Emitter, node: Node) -> None:
    x = ctx.ptr(node.input("input"))
    ctx.line(f"mc_log_softmax({ctx.out(node)}, {x}, {_layout(ctx, node)});")


def log_softmax_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    pointer, accumulate = ctx.target(node.input("input"))
    ctx.line(
        f"mc_log_softmax_vjp({pointer}, {ctx.gout(node)}, {ctx.ptr(node.output)}, "
        f"{_layout(ctx, node)}, {int(accumulate)});"
    )


# -- convolution -----------------------------------------------------------------------


# Convolutions whose images have at most this many output pixels run chunks of
# images through one product (columns side by side), in chunks of about this many
# scratch values (columns and the transposed output).
_CHUNK_PIXELS = 1024
_CHUNK_VALUES = 1 << 21


def _conv(ctx: Emitter, node: Node) -> tuple[str, int, bool]:
    """The ``long`` dims array of mc_conv2d, the size of its column scratch, and
    whether the whole batch is one chunk (the columns mc_conv2d leaves in the scratch
    are then those of every image)."""
    x, w = node.input("input"), node.input("weight")
    stride, padding, dilation, groups = (
        node.input(k).constant for k in ("stride", "padding", "dilation", "groups")
    )
    if not isinstance(groups, int):
        msg = f"{node.path}: backend 'c' needs a constant 'groups', got {groups!r}."
        raise CompileError(msg)
    xs, ws, ys = ctx.shape(x), ctx.shape(w), ctx.shape(node.output)
    pads = conv_padding(padding, ws[2:], dilation)
    if len(xs) == 3:  # 1-d: a 2-d convolution of height 1
        xs, ws, ys = (*xs[:2], 1, xs[2]), (*ws[:2], 1, ws[2]), (*ys[:2], 1, ys[2])
        stride, dilation, pads = (1, *stride), (1, *dilation), [(0, 0), *pads]
    n, c, h, width = xs
    f, _, kh, kw = ws
    oh, ow = ys[2:]
    # Images run on separate threads, each with its own column scratch ...
    copies = max(min(n, ctx.threads), 1)
    scratch = (c // groups) * kh * kw * oh * ow * copies
    # ... or small images go in chunks, side by side (mc_conv2d_chunked).
    k, pixels, chunk = c * kh * kw, oh * ow, 0
    if groups == 1 and n > 1 and pixels <= _CHUNK_PIXELS:
        chunk = max(1, min(n, _CHUNK_VALUES // ((k + f) * pixels)))
        scratch = max(scratch, (k + f) * chunk * pixels)
    dims = (n, c, h, width, f, kh, kw, oh, ow, *stride, pads[0][0], pads[1][0])
    dims += (*dilation, groups, copies, chunk)
    return ctx.longs(dims), scratch, chunk >= n


# Winograd F(4x4, 3x3): a block of tiles (whole rows of tiles) has about this many
# transformed-domain elements (inputs and products), and at least _WINOGRAD_TILES
# tiles, so that each of its 36 matrix products is wide enough for the gemm kernels.
_WINOGRAD_BLOCK = 1 << 21
_WINOGRAD_TILES = 64
# The fewest output tiles (4 x 4, over the batch) for which Winograd beats im2col +
# gemm: below, transforming the weights (36 f c values per call) costs more than the
# products save (measured on ResNet-18 shapes, 1 and 2 threads).
_WINOGRAD_MIN_TILES = 32


def _winograd(ctx: Emitter, node: Node) -> tuple[str, int, int] | None:
    """The dims of mc_conv2d_winograd and the sizes of its two scratch regions, or
    None when the convolution is not a 3x3, stride-1 one that pays, or when its
    result is differentiated (the training forward): Winograd's float32 error
    (~1e-5 relative) made ResNet-18's weight gradients 13x further from torch's."""
    if ctx.for_gradients:
        return None
    x, w = node.input("input"), node.input("weight")
    stride, padding, dilation, groups = (
        node.input(k).constant for k in ("stride", "padding", "dilation", "groups")
    )
    xs, ws, ys = ctx.shape(x), ctx.shape(w), ctx.shape(node.output)
    if len(xs) != 4 or tuple(ws[2:]) != (3, 3) or groups != 1:
        return None
    if tuple(stride) != (1, 1) or tuple(dilation) != (1, 1):
        return None
    pads = conv_padding(padding, ws[2:], dilation)
    n, c, h, width = xs
    f = ws[0]
    oh, ow = ys[2:]
    th, tw = -(-oh // 4), -(-ow // 4)
    if min(n, c, f, oh, ow) <= 0 or n * th * tw < _WINOGRAD_MIN_TILES:
        return None
    rows = n * th
    tiles = max(_WINOGRAD_TILES, _WINOGRAD_BLOCK // (36 * (c + f)))
    block = max(1, min(rows, tiles // tw))
    dims = (n, c, h, width, f, oh, ow, pads[0][0], pads[1][0], th, tw, block)
    return ctx.longs(dims), 36 * f * c, 36 * (c + f) * block * tw


def conv(ctx: Emitter, node: Node) -> None:
    winograd = _winograd(ctx, node)
    if winograd is not None:
        dims, weights, blocks = winograd
        x, w = ctx.ptr(node.input("input")), ctx.ptr(node.input("weight"))
        u = ctx.temp(node, "wino_u", weights)
        v = ctx.temp(node, "wino_v", blocks)
        ctx.line(f"mc_conv2d_winograd({ctx.out(node)}, {x}, {w}, {dims}, {u}, {v});")
        return
    dims, columns, _ = _conv(ctx, node)
    x, w = ctx.ptr(node.input("input")), ctx.ptr(node.input("weight"))
    col = ctx.temp(node, "col", columns)
    ctx.line(f"mc_conv2d({ctx.out(node)}, {x}, {w}, {dims}, {col});")


def conv_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    # The training forward ran mc_conv2d (never Winograd) with the same scratch, which
    # lives until here (a temp of this node): its columns of a one-chunk batch are
    # the weight gradient's.
    dims, columns, whole = _conv(ctx, node)
    x, w = ctx.ptr(node.input("input")), ctx.ptr(node.input("weight"))
    col = ctx.temp(node, "col", columns)
    gx, acc_x = ctx.target(node.input("input")) if needs[0] else ("NULL", False)
    gw, acc_w = ctx.target(node.input("weight")) if needs[1] else ("NULL", False)
    ctx.line(
        f"mc_conv2d_vjp({gx}, {gw}, {ctx.gout(node)}, {x}, {w}, {dims}, {col}, "
        f"{int(acc_x)}, {int(acc_w)}, {int(whole)});"
    )


# -- pooling ---------------------------------------------------------------------------


def _pool(ctx: Emitter, node: Node) -> str:
    n, c, h, w = ctx.shape(node.input("input"))
    oh, ow = ctx.shape(node.output)[2:]
    kernel, stride, padding = (
        node.input(k).constant for k in ("kernel_size", "stride", "padding")
    )
    has = "dilation" in node.input_names
    dilation = node.input("dilation").constant if has else (1, 1)
    dims = (n * c, h, w, oh, ow, *kernel, *stride, *padding, *dilation)
    return ctx.longs(dims)


def _argmax(ctx: Emitter, node: Node) -> str:
    """Scratch for each output's index of its maximum (the training forward writes
    it, the VJP reads it)."""
    h, w = ctx.shape(node.input("input"))[-2:]
    if h * w >= 2**31:
        msg = f"{node.path}: backend 'c' pools planes of fewer than 2**31 elements."
        raise CompileError(msg)
    return ctx.temp(node, "argmax", ctx.numel(node.output), "int32_t")


def max_pool2d(ctx: Emitter, node: Node) -> None:
    x = ctx.ptr(node.input("input"))
    at = _argmax(ctx, node) if ctx.for_gradients else "NULL"
    ctx.line(f"mc_max_pool2d({ctx.out(node)}, {x}, {_pool(ctx, node)}, {at});")


def max_pool2d_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    pointer, accumulate = ctx.target(node.input("input"))
    ctx.line(
        f"mc_max_pool2d_vjp({pointer}, {ctx.gout(node)}, {_argmax(ctx, node)}, "
        f"{_pool(ctx, node)}, {int(accumulate)});"
    )


def avg_pool2d(ctx: Emitter, node: Node) -> None:
    x = ctx.ptr(node.input("input"))
    ctx.line(f"mc_avg_pool2d({ctx.out(node)}, {x}, {_pool(ctx, node)});")


def avg_pool2d_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    pointer, accumulate = ctx.target(node.input("input"))
    ctx.line(
        f"mc_avg_pool2d_vjp({pointer}, {ctx.gout(node)}, {_pool(ctx, node)}, "
        f"{int(accumulate)});"
    )


def _adaptive(ctx: Emitter, node: Node) -> str:
    n, c, h, w = ctx.shape(node.input("input"))
    oh, ow = ctx.shape(node.output)[2:]
    return f"{n * c}, {h}, {w}, {oh}, {ow}"


def adaptive_avg_pool2d(ctx: Emitter, node: Node) -> None:
    x = ctx.ptr(node.input("input"))
    ctx.line(f"mc_adaptive_avg_pool2d({ctx.out(node)}, {x}, {_adaptive(ctx, node)});")


def adaptive_avg_pool2d_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    pointer, accumulate = ctx.target(node.input("input"))
    ctx.line(
        f"mc_adaptive_avg_pool2d_vjp({pointer}, {ctx.gout(node)}, "
        f"{_adaptive(ctx, node)}, {int(accumulate)});"
    )


# -- embedding, padding ----------------------------------------------------------------


def _embedding(ctx: Emitter, node: Node) -> tuple[str, str, str]:
    """The index arguments, the sizes (count, rows, dim) and the range error."""
    index, weight = node.input("input"), node.input("weight")
    rows, dim = ctx.shape(weight)
    size = np.dtype(ctx.dtype(index)).itemsize
    message = f"{node.path}: an embedding index is out of range for {rows} rows."
    return f"{ctx.ptr(index)}, {size}", f"{ctx.numel(index)}, {rows}, {dim}", message


@dtypes({0: "iu"})
def embedding(ctx: Emitter, node: Node) -> None:
    index, sizes, message = _embedding(ctx, node)
    weight = ctx.ptr(node.input("weight"))
    ctx.check(f"mc_embedding({ctx.out(node)}, {index}, {weight}, {sizes})", message)


def embedding_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    index, sizes, message = _embedding(ctx, node)
    pointer, accumulate = ctx.target(node.input("weight"))
    call = (
        f"mc_embedding_vjp({pointer}, {ctx.gout(node)}, {index}, {sizes}, "
        f"{int(accumulate)})"
    )
    ctx.check(call, message)


_PAD_MODES = {"constant": 0, "reflect": 1, "edge": 2}


def _pad(ctx: Emitter, node: Node) -> str:
    shape, out = ctx.shape(node.input("input")), ctx.shape(node.output)
    widths, mode = node.input("pad_width").constant, node.input("mode").constant
    before = [b for b, _ in widths]
    return (
        f"{len(shape)}, {ctx.longs(shape)}, {ctx.longs(out)}, {ctx.longs(before)}, "
        f"{_PAD_MODES[mode]}"
    )


def pad(ctx: Emitter, node: Node) -> None:
    x, value = ctx.ptr(node.input("input")), ctx.lit(node.input("value").constant)
    ctx.line(f"mc_pad({ctx.out(node)}, {x}, {_pad(ctx, node)}, {value});")


def pad_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    pointer, accumulate = ctx.target(node.input("input"))
    ctx.line(
        f"mc_pad_vjp({pointer}, {ctx.gout(node)}, {_pad(ctx, node)}, "
        f"{int(accumulate)});"
    )


# -- attention -------------------------------------------------------------------------


_QKV = ("query", "key", "value")


@dataclass
class _Attention:
    batch: tuple[int, ...]
    lq: int
    lk: int
    e: int
    ev: int
    scale: str
    causal: int
    mask: Value | None
    mask_strides: tuple[int, ...]

    def strides(self) -> list[tuple[int, ...]]:
        """Element strides over the batch dims of q, k, v, output/g, p, mask."""
        own = contiguous_strides(self.batch)
        blocks = (
            self.lq * self.e,
            self.lk * self.e,
            self.lk * self.ev,
            self.lq * self.ev,
            self.lq * self.lk,
        )
        result = [tuple(s * b for s in own) for b in blocks]
        return [*result, self.mask_strides[:-2] or (0,) * len(self.batch)]


def _attention(ctx: Emitter, node: Node) -> _Attention:
    q, k, v = (node.input(name) for name in _QKV)
    mask = node.input("mask") if "mask" in node.input_names else None
    causal, scale = node.input("is_causal").constant, node.input("scale").constant
    qs, ks, vs = ctx.shape(q), ctx.shape(k), ctx.shape(v)
    batch, (lq, e), lk, ev = qs[:-2], qs[-2:], ks[-2], vs[-1]
    factor = e**-0.5 if scale is None else scale
    strides: tuple[int, ...] = (0,) * (len(batch) + 2)
    if mask is not None:
        strides = broadcast_strides(ctx.shape(mask), (*batch, lq, lk))
    return _Attention(
        batch, lq, lk, e, ev, ctx.lit(float(factor)), int(causal), mask, strides
    )


def _batches(ctx: Emitter, a: _Attention, call: str, writes: tuple[int, ...]) -> None:
    """``call`` once per batch entry; ``{0}``..``{5}``: offsets of q, k, v, o, p,
    mask; it writes the blocks of ``writes`` (entries split over threads unless two
    of them write one block)."""
    ctx.line(
        *loop_nest(
            a.batch,
            a.strides(),
            lambda index: [call.format(*index)],
            var="b",
            writes=writes,
            work=math.prod(a.batch) * a.lq * a.lk * (a.e + a.ev),
        )
    )


@dtypes({3: "b"})
def scaled_dot_product(ctx: Emitter, node: Node) -> None:
    a = _attention(ctx, node)
    q, k, v = (ctx.ptr(node.input(name)) for name in _QKV)
    out = ctx.out(node)
    probs = ctx.temp(node, "probs", math.prod(a.batch) * a.lq * a.lk)
    mask, kind = "NULL", 0
    if a.mask is not None:
        mask = f"(const void *)({ctx.ptr(a.mask)} + {{5}})"
        kind = 2 if ctx.is_real(a.mask) else 1
    rs, cs = a.mask_strides[-2:]
    _batches(
        ctx,
        a,
        f"mc_sdp({out} + {{3}}, {probs} + {{4}}, {q} + {{0}}, {k} + {{1}}, "
        f"{v} + {{2}}, {mask}, {kind}, {rs}, {cs}, {a.lq}, {a.lk}, {a.e}, {a.ev}, "
        f"{a.scale}, {a.causal});",
        (3, 4),
    )


def scaled_dot_product_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    a = _attention(ctx, node)
    q, k, v = (ctx.ptr(node.input(name)) for name in _QKV)
    probs = ctx.temp(node, "probs", math.prod(a.batch) * a.lq * a.lk)
    # One scratch block per batch entry: entries may run on different threads.
    scratch = ctx.temp(node, "dp", math.prod(a.batch) * a.lq * a.lk)
    writes = [4]
    grads = []
    for j in range(3):
        if needs[j]:
            writes.append(j)
            pointer, accumulate = ctx.target(node.input(_QKV[j]))
            grads.append((f"{pointer} + {{{j}}}", int(accumulate)))
        else:
            grads.append(("NULL", 0))
    gmask = "NULL"
    if a.mask is not None and needs[3] and ctx.is_real(a.mask):
        pointer, accumulate = ctx.target(a.mask)
        if not accumulate:
            ctx.line(f"mc_fill({pointer}, {ctx.numel(a.mask)}, 0);")
        gmask = f"{pointer} + {{5}}"
        writes.append(5)
    rs, cs = a.mask_strides[-2:]
    _batches(
        ctx,
        a,
        f"mc_sdp_vjp({grads[0][0]}, {grads[1][0]}, {grads[2][0]}, {gmask}, "
        f"{ctx.gout(node)} + {{3}}, {probs} + {{4}}, {q} + {{0}}, {k} + {{1}}, "
        f"{v} + {{2}}, {scratch} + {{4}}, {rs}, {cs}, {a.lq}, {a.lk}, {a.e}, {a.ev}, "
        f"{a.scale}, {grads[0][1]}, {grads[1][1]}, {grads[2][1]});",
        tuple(writes),
    )


# -- dropout ---------------------------------------------------------------------------


def dropout(ctx: Emitter, node: Node) -> None:
    x, p = ctx.ptr(node.input("input")), ctx.lit(node.input("p").constant)
    state = ctx.state(node, "state", 1, "uint64_t")
    # A fixed odd seed per dropout node: a compiled model's masks are reproducible.
    seed = (0x9E3779B97F4A7C15 * (ctx.graph.nodes.index(node) + 1)) % 2**64 | 1
    ctx.line(
        f"mc_dropout({ctx.out(node)}, {x}, {ctx.numel(node.output)}, {p}, {state}, "
        f"{seed}ULL);"
    )


def dropout_vjp(ctx: Emitter, node: Node, needs: Needs) -> None:
    x, y = ctx.ptr(node.input("input")), ctx.ptr(node.output)
    pointer, accumulate = ctx.target(node.input("input"))
    p = ctx.lit(node.input("p").constant)
    ctx.line(
        f"mc_dropout_vjp({pointer}, {ctx.gout(node)}, {y}, {x}, "
        f"{ctx.numel(node.output)}, {p}, {int(accumulate)});"
    )


LOWERINGS: dict[str, CLowering] = {
    "softmax": (softmax, softmax_vjp),
    "log_softmax": (log_softmax, log_softmax_vjp),
    "conv1d": (conv, conv_vjp),
    "conv2d": (conv, conv_vjp),
    "max_pool2d": (max_pool2d, max_pool2d_vjp),
    "avg_pool2d": (avg_pool2d, avg_pool2d_vjp),
    "adaptive_avg_pool2d": (adaptive_avg_pool2d, adaptive_avg_pool2d_vjp),
    "embedding": (embedding, embedding_vjp),
    "pad": (pad, pad_vjp),
    "scaled_dot_product": (scaled_dot_product, scaled_dot_product_vjp),
    "scaled_dot_product_masked": (scaled_dot_product, scaled_dot_product_vjp),
    "dropout": (dropout, dropout_vjp),
}
