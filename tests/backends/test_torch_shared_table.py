"""Torch's forwards come from the shared array-API table (#12 item 4) over its
NumPy-named adapter ``_xp``, overridden only where torch's meaning differs. Values
and gradients, eager and under torch.compile: tests/primitives (``-k torch``)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mithril_torch.lowerings import (  # noqa: E402
    FAMILIES,
    LOWERINGS,
    OVERRIDES,
    SHARED,
    _xp,
)

from mithril_core.backends import array_api  # noqa: E402
from mithril_core.errors import PluginError  # noqa: E402
from mithril_core.primitives.lowering import merge_lowerings  # noqa: E402


def test_family_tables_override_exactly_the_listed_shared_forwards() -> None:
    shadowed = set().union(*FAMILIES.values()) & set(SHARED)
    assert shadowed == OVERRIDES


def test_every_other_shared_forward_is_torchs() -> None:
    assert set(SHARED) == set(array_api.lowerings(_xp))
    for op, entry in SHARED.items():
        if op not in OVERRIDES:
            assert LOWERINGS[op] is entry and entry.named, op


def test_merge_refuses_a_duplicate_in_torchs_family_tables() -> None:
    tables = {**FAMILIES, "mithril_torch.lowerings.extra": {"gelu": torch.relu}}
    with pytest.raises(PluginError, match=r"torch backend.*'gelu'.*elementwise.*extra"):
        merge_lowerings("torch", tables, shared=SHARED)


def test_shared_forwards_take_python_scalars_on_either_side() -> None:
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(LOWERINGS["subtract"](left=3, right=t), torch.tensor([2.0, 1.0]))
    assert torch.equal(
        LOWERINGS["greater"](left=1.5, right=t), torch.tensor([True, False])
    )
    assert torch.equal(
        LOWERINGS["maximum"](left=t, right=1.5), torch.tensor([1.5, 2.0])
    )
    assert torch.equal(LOWERINGS["power"](base=2, exponent=t), torch.tensor([2.0, 4.0]))
    assert LOWERINGS["add"](left=t.half(), right=0.5).dtype == torch.float16
    assert (
        LOWERINGS["mean"](input=torch.tensor([1, 2]), axis=None, keepdim=False) == 1.5
    )


def test_relu_keeps_torchs_zero_gradient_at_zero() -> None:
    # Why relu is overridden: the shared maximum(x, 0) splits the tie at 0.
    x = torch.zeros(2, requires_grad=True)
    (grad,) = torch.autograd.grad(LOWERINGS["relu"](x).sum(), x)
    assert torch.equal(grad, torch.zeros(2))
