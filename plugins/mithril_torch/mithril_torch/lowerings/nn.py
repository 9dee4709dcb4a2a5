from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def softmax(input: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.softmax(input, dim=axis)


def log_softmax(input: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.log_softmax(input, dim=axis)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "softmax": softmax,
    "log_softmax": log_softmax,
}
