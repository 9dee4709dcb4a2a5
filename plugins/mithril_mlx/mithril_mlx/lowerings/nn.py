from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx


def softmax(input: mx.array, axis: int) -> mx.array:
    return mx.softmax(input, axis=axis)


def log_softmax(input: mx.array, axis: int) -> mx.array:
    return input - mx.logsumexp(input, axis=axis, keepdims=True)


LOWERINGS: dict[str, Callable[..., Any]] = {
    "softmax": softmax,
    "log_softmax": log_softmax,
}
