from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def matrix_multiply(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    return torch.matmul(left, right)


LOWERINGS: dict[str, Callable[..., Any]] = {"matrix_multiply": matrix_multiply}
