from __future__ import annotations

from collections.abc import Callable, Sequence
from types import EllipsisType
from typing import Any

import torch

Index = int | slice | EllipsisType | tuple[Any, ...] | None


def reshape(input: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return torch.reshape(input, tuple(shape))


def transpose(input: torch.Tensor, axes: Sequence[int] | None) -> torch.Tensor:
    if axes is None:
        return input.permute(*reversed(range(input.ndim)))
    return input.permute(*axes)


def flatten(input: torch.Tensor, start_dim: int, end_dim: int) -> torch.Tensor:
    return torch.flatten(input, start_dim, end_dim)


def concat(input: Sequence[torch.Tensor], axis: int | None) -> torch.Tensor:
    if axis is None:
        return torch.cat([torch.flatten(part) for part in input])
    return torch.cat(list(input), dim=axis)


def split(input: torch.Tensor, split_size: int, axis: int) -> list[torch.Tensor]:
    return list(torch.split(input, split_size, dim=axis))


def indexer(input: Any, index: Index) -> Any:
    return input[index]


def shape(input: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(dim) for dim in input.shape)


def to_list(*inputs: Any) -> list[Any]:
    return list(inputs)


def to_tuple(*inputs: Any) -> tuple[Any, ...]:
    return inputs


def buffer(input: Any) -> Any:
    return input


def unsqueeze(input: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.unsqueeze(input, axis)


def squeeze(input: torch.Tensor, axis: int | tuple[int, ...] | None) -> torch.Tensor:
    return torch.squeeze(input) if axis is None else torch.squeeze(input, axis)


def expand(input: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    return input.expand(*shape)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "reshape": reshape,
    "transpose": transpose,
    "flatten": flatten,
    "concat": concat,
    "split": split,
    "indexer": indexer,
    "shape": shape,
    "to_list": to_list,
    "to_tuple": to_tuple,
    "buffer": buffer,
    "unsqueeze": unsqueeze,
    "squeeze": squeeze,
    "expand": expand,
}
