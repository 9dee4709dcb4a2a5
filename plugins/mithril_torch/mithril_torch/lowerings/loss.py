from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the usual spelling


def squared_error(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (input - target) ** 2


def absolute_error(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (input - target).abs()


def _log_q(input: torch.Tensor, axis: int, input_type: str) -> torch.Tensor:
    if input_type == "logits":
        return torch.log_softmax(input, dim=axis)
    return input.log() if input_type == "probs" else input


def cross_entropy(
    input: torch.Tensor, target: torch.Tensor, axis: int, input_type: str
) -> torch.Tensor:
    log_q = _log_q(input, axis, input_type)
    return -log_q.gather(axis, target.unsqueeze(axis)).squeeze(axis)


def cross_entropy_soft(
    input: torch.Tensor, target: torch.Tensor, axis: int, input_type: str
) -> torch.Tensor:
    return -(target * _log_q(input, axis, input_type)).sum(dim=axis)


# PyTorch's floor of p * (1 - p) in the input gradient, a C float.
_BCE_EPSILON = float(torch.tensor(1e-12, dtype=torch.float32))


class _BinaryCrossEntropy(torch.autograd.Function):
    """F.binary_cross_entropy's values and gradients, without its range check (an
    error on the CPU, a device-side assert on CUDA): p outside [0, 1] gives NaN."""

    @staticmethod
    def forward(input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p, log_1mp = input.log().clamp(min=-100), (1 - input).log().clamp(min=-100)
        return -(target * log_p + (1 - target) * log_1mp)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        input, target = ctx.saved_tensors
        g_input = g_target = None
        if ctx.needs_input_grad[0]:
            denom = (input * (1 - input)).clamp(min=_BCE_EPSILON)
            g_input = grad * (input - target) / denom
        if ctx.needs_input_grad[1]:
            g_target = -grad * torch.logit(input)
        return g_input, g_target


def binary_cross_entropy(
    input: torch.Tensor, target: torch.Tensor, input_type: str
) -> torch.Tensor:
    if input_type == "logits":
        return F.binary_cross_entropy_with_logits(input, target, reduction="none")
    return _BinaryCrossEntropy.apply(input, target)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "squared_error": squared_error,
    "absolute_error": absolute_error,
    "cross_entropy": cross_entropy,
    "cross_entropy_soft": cross_entropy_soft,
    "binary_cross_entropy": binary_cross_entropy,
}
