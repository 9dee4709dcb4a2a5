"""Element-wise lowerings: C expression templates, fused into generated loops.

``{0}``, ``{1}`` ... are the inputs (array elements, fused temporaries or literals),
``{y}`` the output element and ``{g}`` its gradient. The forward is one expression; the
VJP is one expression per input (``None``: no gradient), generated from the primitive's
``grad_rules`` where the entry says ``FROM_RULES`` (see
:mod:`mithril_c.lowerings._symbolic`), else hand-written (the reason is noted).
Options (third element, see :mod:`mithril_c.lowerings._types`) give int/bool variants
and raw operands.
"""

from __future__ import annotations

from mithril_c.lowerings._symbolic import FROM_RULES
from mithril_c.lowerings._types import CLowering
from mithril_core.physical.flat import Node

_PICK_MAX = "{g} * mc_share({0} < {1}, {0}, {1})"
_PICK_MAX_RIGHT = "{g} * mc_share({0} > {1}, {0}, {1})"
_PICK_MIN = "{g} * mc_share({0} > {1}, {0}, {1})"
_PICK_MIN_RIGHT = "{g} * mc_share({0} < {1}, {0}, {1})"
_NO_GRAD = (None, None)
_TRUTH = {"raw": (0, 1)}


def _cast_dtype(node: Node) -> str:
    """The dtype name a cast's output gets."""
    dtype = node.input("dtype").constant
    return str(getattr(dtype, "name", dtype))


LOWERINGS: dict[str, CLowering] = {
    "add": ("({0} + {1})", FROM_RULES),
    "subtract": ("({0} - {1})", FROM_RULES),
    "multiply": ("({0} * {1})", FROM_RULES),
    "divide": ("({0} / {1})", FROM_RULES),
    "floor_divide": (
        "MC_FLOOR({0} / {1})",
        _NO_GRAD,
        {"int": "mc_floor_divide_int({0}, {1})"},
    ),
    "power": ("MC_POW({0}, {1})", FROM_RULES, {"int": "mc_power_int({0}, {1})"}),
    # Hand-written: with a NaN operand neither loses and both get the whole gradient
    # (PyTorch's); the rule's ``g * (left < right)`` would give 0.
    "minimum": (
        "mc_min2({0}, {1})",
        (_PICK_MIN, _PICK_MIN_RIGHT),
        {"int": "({0} < {1} ? {0} : {1})"},
    ),
    "maximum": (
        "mc_max2({0}, {1})",
        (_PICK_MAX, _PICK_MAX_RIGHT),
        {"int": "({0} > {1} ? {0} : {1})"},
    ),
    "negate": ("(-{0})", FROM_RULES),
    "absolute": ("MC_FABS({0})", FROM_RULES, {"int": "mc_abs_int({0})"}),
    "exponential": ("MC_EXP({0})", FROM_RULES),
    "log": ("MC_LOG({0})", FROM_RULES),
    "sqrt": ("MC_SQRT({0})", FROM_RULES),
    "sine": ("MC_SIN({0})", FROM_RULES),
    "cosine": ("MC_COS({0})", FROM_RULES),
    # Hand-written: a NaN input passes the gradient (PyTorch's); the rule's
    # ``g * (y > 0)`` would give 0.
    "relu": (
        "mc_relu({0})",
        ("({y} <= 0 ? 0 : {g})",),
        {"int": "({0} > 0 ? {0} : 0)"},
    ),
    "sigmoid": ("mc_sigmoid({0})", FROM_RULES),
    "tanh": ("MC_TANH({0})", FROM_RULES),
    # Hand-written: the rules' stable sigmoid needs xp.logaddexp (no C macro here).
    "softplus": ("mc_softplus({0})", ("{g} * mc_sigmoid({0})",)),
    "silu": ("({0} * mc_sigmoid({0}))", ("{g} * mc_silu_grad({0}, {y})",)),
    "leaky_relu": ("({0} > 0 ? {0} : {0} * {1})", FROM_RULES),
    # Hand-written: the rule branches in Python on ``approximate``.
    "gelu": ("mc_gelu({0}, {1})", ("{g} * mc_gelu_grad({0}, {1})", None)),
    "stop_gradient": ("{0}", (None,)),
    "where": ("({0} ? {1} : {2})", FROM_RULES, {"raw": (0,)}),
    # The assignment to the output's C type converts (C truncates toward zero, as
    # NumPy's astype); bools are "not zero".
    "cast": (
        "{0}",
        FROM_RULES,
        {"raw": (0,), "bool": "({0} != 0)", "output_dtype": _cast_dtype},
    ),
    "greater": ("({0} > {1})", _NO_GRAD),
    "greater_equal": ("({0} >= {1})", _NO_GRAD),
    "less": ("({0} < {1})", _NO_GRAD),
    "less_equal": ("({0} <= {1})", _NO_GRAD),
    "equal": ("({0} == {1})", _NO_GRAD),
    "not_equal": ("({0} != {1})", _NO_GRAD),
    "logical_and": ("({0} && {1})", _NO_GRAD, _TRUTH),
    "logical_or": ("({0} || {1})", _NO_GRAD, _TRUTH),
    "logical_xor": ("(!{0} != !{1})", _NO_GRAD, _TRUTH),
    "logical_not": ("(!{0})", (None,), {"raw": (0,)}),
}
