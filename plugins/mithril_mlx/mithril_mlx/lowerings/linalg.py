from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx


def matrix_multiply(left: mx.array, right: mx.array) -> mx.array:
    return mx.matmul(left, right)


LOWERINGS: dict[str, Callable[..., Any]] = {"matrix_multiply": matrix_multiply}
