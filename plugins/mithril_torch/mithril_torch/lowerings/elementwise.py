"""Torch overrides of the shared element-wise forwards (``array_api.lowerings(_xp)``)
where torch's meaning differs, and the element-wise ops the shared table lacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the name every torch user knows

from mithril_core.dtypes import Dtype
from mithril_torch._dtypes import torch_dtype
from mithril_torch.lowerings._xp import Value, _tensor


def floor_divide(left: Value, right: Value) -> Any:
    # `//` (aten::floor_divide) has no derivative; a floor-mode div has a zero one.
    return torch.div(_tensor(left), right, rounding_mode="floor")


# Torch's fused kernels: relu's gradient at 0 is 0 (the shared maximum(x, 0) would
# split a tie), and sigmoid/softplus/silu keep torch's own precision and backward.
def relu(input: torch.Tensor) -> torch.Tensor:
    return torch.relu(input)


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(input)


def softplus(input: torch.Tensor) -> torch.Tensor:
    return F.softplus(input)


def silu(input: torch.Tensor) -> torch.Tensor:
    return F.silu(input)


def gelu(input: torch.Tensor, approximate: bool) -> torch.Tensor:
    return F.gelu(input, approximate="tanh" if approximate else "none")


def cast(input: Value, dtype: Dtype | str) -> torch.Tensor:
    return _tensor(input).to(torch_dtype(dtype))


def stop_gradient(input: torch.Tensor) -> torch.Tensor:
    return input.detach()


LOWERINGS: dict[str, Callable[..., Any]] = {
    "floor_divide": floor_divide,
    "relu": relu,
    "sigmoid": sigmoid,
    "softplus": softplus,
    "silu": silu,
    "gelu": gelu,
    "cast": cast,
    "stop_gradient": stop_gradient,
}
