from __future__ import annotations

import numpy as np

from mithril_core.backends.numpy.lowerings._utils import (
    Array,
    Entry,
    Grad,
    Needs,
    unbroadcast,
    wants,
    with_vjp,
)


def matrix_multiply_vjp(
    output_grad: Array, output: Array, left: Array, right: Array, needs: Needs = None
) -> tuple[Grad, Grad]:
    # 1-D operands are promoted to matrices as np.matmul does, then squeezed back.
    lhs = left[None, :] if left.ndim == 1 else left
    rhs = right[:, None] if right.ndim == 1 else right
    grad = np.expand_dims(output_grad, -1) if right.ndim == 1 else output_grad
    grad = np.expand_dims(grad, -2) if left.ndim == 1 else grad
    return (
        _left_grad(grad, lhs, rhs).reshape(left.shape)
        if wants(needs, 0, left)
        else None,
        _right_grad(grad, lhs, rhs).reshape(right.shape)
        if wants(needs, 1, right)
        else None,
    )


def _left_grad(grad: Array, lhs: Array, rhs: Array) -> Array:
    return unbroadcast(grad @ rhs.swapaxes(-1, -2), lhs.shape)


def _right_grad(grad: Array, lhs: Array, rhs: Array) -> Array:
    if rhs.ndim == 2 and lhs.ndim > 2:
        # Shared weight: fold the batch into rows, one GEMM instead of a batch sum.
        rows = lhs.reshape(-1, lhs.shape[-1])
        return rows.T @ grad.reshape(-1, grad.shape[-1])
    return unbroadcast(lhs.swapaxes(-1, -2) @ grad, rhs.shape)


LOWERINGS: dict[str, Entry] = {
    "matrix_multiply": with_vjp("matrix_multiply", matrix_multiply_vjp)
}
