"""Hand-written NumPy VJPs kept for ops that declare ``grad_rules`` (they pay: speed,
precision or warnings) agree with the VJP generated from the declared rule, on random
inputs with broadcasting, in float64 and float32. Fused VJPs of ops without a rule
(conv, pool, attention, the cross-entropy losses) are checked against finite
differences by tests/primitives/test_conformance.py."""

from __future__ import annotations

import numpy as np
import pytest

from mithril_core.backends.numpy.lowerings import LOWERINGS as NUMPY
from mithril_core.backends.numpy.lowerings._utils import vjp_from_rules
from mithril_core.primitives import CORE_PRIMITIVES

RULES = {c.op_name: getattr(c, "grad_rules", None) for c in CORE_PRIMITIVES}
rng = np.random.default_rng(7)


def _r(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape)


BASE = np.array([[0.0, 1.5, 2.0, 0.0], [0.7, 0.0, 3.0, 1.2], [0.3, 2.2, 0.0, 0.9]])
CASES: list[tuple[str, tuple[object, ...]]] = [
    ("power", (np.abs(_r(3, 4)) + 0.1, _r(4))),
    ("power", (BASE, np.array([0.0, 2.0, 0.0, 1.5]))),  # 0 ** 0, 0 ** e, b ** 0
    ("power", (_r(3, 4), np.array(2.0))),  # negative bases, integral exponent
    ("gelu", (_r(5, 6) * 3, False)),
    ("gelu", (np.array([0.0, -1e-8, 1e-8, -5.0, 6.0]), False)),
    ("gelu", (_r(5, 6) * 3, True)),
    ("cast", (_r(3, 4), "float32")),
    ("variance", (_r(2, 3, 4), 1, False, 1)),
    ("variance", (_r(2, 3, 4), (0, 2), True, 0)),
    ("variance", (_r(2, 3, 4), None, False, 2)),
    ("variance", (_r(2, 1, 4), 1, False, 1)),  # N == correction: NaN in both
    ("matrix_multiply", (_r(3, 4), _r(4, 5))),
    ("matrix_multiply", (_r(2, 3, 4), _r(4, 5))),  # shared weight: the folded GEMM
    ("matrix_multiply", (_r(2, 1, 3, 4), _r(5, 4, 2))),  # broadcast batches
    ("matrix_multiply", (_r(4), _r(2, 4, 3))),
    ("matrix_multiply", (_r(2, 3, 4), _r(4))),
    ("matrix_multiply", (_r(4), _r(4))),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    ("op", "args"), CASES, ids=[f"{op}-{i}" for i, (op, _) in enumerate(CASES)]
)
def test_fused_vjp_matches_the_declared_rule(
    op: str, args: tuple[object, ...], dtype: type
) -> None:
    args = tuple(a.astype(dtype) if isinstance(a, np.ndarray) else a for a in args)
    forward, fused = NUMPY[op].forward, NUMPY[op].vjp
    output = forward(*args)
    g = rng.standard_normal(np.shape(output)).astype(np.result_type(output))
    expected = fused(g, output, *args)
    with np.errstate(all="ignore"):  # the rule is plain xp code: NaN points may warn
        generated = vjp_from_rules(RULES[op])(g, output, *args)
    tol = 1e-10 if dtype == np.float64 else 2e-5
    for got, want, arg in zip(generated, expected, args, strict=True):
        if want is None:
            assert got is None
            continue
        assert np.shape(got) == np.shape(want) == np.shape(arg)
        assert np.result_type(got) == np.result_type(want), op
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


def test_the_fused_vjps_warn_nowhere() -> None:
    # What the hand-written VJPs are kept for (warnings are errors in this suite).
    base, exponent = BASE, np.array([0.0, 2.0, -1.0, 1.5])
    with np.errstate(divide="ignore"):
        output = base**exponent
    NUMPY["power"].vjp(np.ones((3, 4)), output, base, exponent)
    x = _r(2, 1, 4)
    y = NUMPY["variance"].forward(x, 1, False, 1)
    NUMPY["variance"].vjp(np.ones_like(y), y, x, 1, False, 1)
