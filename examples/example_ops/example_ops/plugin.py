"""Hook implementations: the operator and its lowerings for every core backend."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mithril_core.hookspecs import hookimpl


@hookimpl
def mithril_operators() -> Sequence[type]:
    from example_ops.primitives import Softsign

    return [Softsign]


def _softsign(x: Any) -> Any:
    return x / (1 + abs(x))


def _softsign_vjp(output_grad: Any, output: Any, input: Any) -> tuple[Any]:  # noqa: A002
    return (output_grad / (1 + abs(input)) ** 2,)


@hookimpl
def mithril_lowerings(backend: str) -> Mapping[str, Any] | None:
    if backend == "numpy":
        return {"example_ops.softsign": (_softsign, _softsign_vjp)}
    if backend in ("torch", "jax", "mlx"):
        return {"example_ops.softsign": _softsign}
    if backend == "c":  # an element-wise C expression and its VJP, fused into loops
        return {
            "example_ops.softsign": (
                "({0} / (1 + MC_FABS({0})))",
                ("{g} / ((1 + MC_FABS({0})) * (1 + MC_FABS({0})))",),
            )
        }
    if backend == "onnx":  # builds ONNX nodes for ml.to_onnx and the onnx backend
        return {"example_ops.softsign": _softsign_onnx}
    return None


def _softsign_onnx(g: Any, input: Any) -> Any:  # noqa: A002
    return g.op("Div", input, g.op("Add", g.op("Abs", input), 1.0))
