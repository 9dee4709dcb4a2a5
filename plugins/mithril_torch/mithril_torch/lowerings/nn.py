from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling

from mithril_core.primitives.nn import conv_padding

Ints = tuple[int, ...]


def softmax(input: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.softmax(input, dim=axis)


def log_softmax(input: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.log_softmax(input, dim=axis)


def _conv_input(
    input: torch.Tensor, weight: torch.Tensor, padding: Any, dilation: Ints
) -> tuple[torch.Tensor, Ints]:
    # Explicit pads: PyTorch's own "same" copies (and warns) for even kernels.
    pads = conv_padding(padding, weight.shape[2:], dilation)
    if all(lo == hi for lo, hi in pads):
        return input, tuple(lo for lo, _ in pads)
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(input, flat), (0,) * len(pads)


def conv1d(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> torch.Tensor:
    input, pads = _conv_input(input, weight, padding, dilation)
    return F.conv1d(input, weight, None, stride, pads, dilation, groups)


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    stride: Ints,
    padding: Any,
    dilation: Ints,
    groups: int,
) -> torch.Tensor:
    input, pads = _conv_input(input, weight, padding, dilation)
    return F.conv2d(input, weight, None, stride, pads, dilation, groups)


def max_pool2d(
    input: torch.Tensor,
    kernel_size: Ints,
    stride: Ints,
    padding: Ints,
    dilation: Ints,
) -> torch.Tensor:
    return F.max_pool2d(input, kernel_size, stride, padding, dilation)


def avg_pool2d(
    input: torch.Tensor, kernel_size: Ints, stride: Ints, padding: Ints
) -> torch.Tensor:
    return F.avg_pool2d(input, kernel_size, stride, padding)


def adaptive_avg_pool2d(input: torch.Tensor, output_size: Any) -> torch.Tensor:
    return F.adaptive_avg_pool2d(input, output_size)


def embedding(input: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.embedding(input, weight)


def scaled_dot_product(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    is_causal: bool,
    scale: float | None,
) -> torch.Tensor:
    return F.scaled_dot_product_attention(
        query, key, value, is_causal=is_causal, scale=scale
    )


def scaled_dot_product_masked(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor,
    is_causal: bool,
    scale: float | None,
) -> torch.Tensor:
    if is_causal:
        causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool).tril()
        causal = causal.to(query.device)
        mask = (
            mask & causal
            if mask.dtype == torch.bool
            else mask.masked_fill(~causal, float("-inf"))
        )
    return F.scaled_dot_product_attention(query, key, value, mask, scale=scale)


def dropout(input: torch.Tensor, p: float, inference: bool) -> torch.Tensor:
    return F.dropout(input, p, training=not inference)


def _pad_index(size: int, before: int, after: int, mode: str) -> torch.Tensor:
    index = torch.arange(-before, size + after)
    if mode == "edge":
        return index.clamp(0, size - 1)
    period = max(2 * (size - 1), 1)
    index = index.abs() % period
    return torch.where(index >= size, period - index, index)


def pad(
    input: torch.Tensor,
    pad_width: tuple[tuple[int, int], ...],
    mode: str,
    value: float,
) -> torch.Tensor:
    if mode == "constant":
        flat = [p for pair in reversed(pad_width) for p in pair]
        return F.pad(input, flat, value=value)
    for axis, (before, after) in enumerate(pad_width):
        if before or after:
            index = _pad_index(input.shape[axis], before, after, mode)
            input = input.index_select(axis, index.to(input.device))
    return input


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
