"""C VJP templates generated from a primitive's declared ``grad_rules``.

Each rule ``rule(xp, g, y, *inputs)`` is evaluated once with a symbolic ``xp`` whose
arrays are C expression strings (``{g}``, ``{y}``, ``{0}`` ...) and whose functions are
the scalar macros and helpers of ``csrc/mithril_c.h`` (``MC_COS``, ``mc_sign`` ...):
the result is the element-wise template the fused VJP loop formats. A rule that uses
what C cannot say this way (a function with no macro here, a Python branch on an
array) gives ``None``: its op keeps a hand-written template.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from mithril_core.primitives.lowering import GradRule


class Unsupported(Exception):
    """The rule needs something the symbolic namespace cannot express."""


def _c(x: Any) -> str:
    if isinstance(x, Sym):
        return x.text
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"((real){x!r})"
    msg = f"a {type(x).__name__} operand"
    raise Unsupported(msg)


class Sym:
    """A C expression standing for an array element."""

    __slots__ = ("text",)
    dtype = None  # a cast's rule asks; the C assignment converts

    def __init__(self, text: str) -> None:
        self.text = text

    def __bool__(self) -> bool:
        msg = "a Python branch on an array"
        raise Unsupported(msg)

    def _op(self, op: str, other: Any, swap: bool = False) -> Sym:
        a, b = (_c(other), self.text) if swap else (self.text, _c(other))
        return Sym(f"({a} {op} {b})")

    def __add__(self, o: Any) -> Sym:
        return self._op("+", o)

    def __radd__(self, o: Any) -> Sym:
        return self._op("+", o, True)

    def __sub__(self, o: Any) -> Sym:
        return self._op("-", o)

    def __rsub__(self, o: Any) -> Sym:
        return self._op("-", o, True)

    def __mul__(self, o: Any) -> Sym:
        return self._op("*", o)

    def __rmul__(self, o: Any) -> Sym:
        return self._op("*", o, True)

    def __truediv__(self, o: Any) -> Sym:
        return self._op("/", o)

    def __rtruediv__(self, o: Any) -> Sym:
        return self._op("/", o, True)

    def __neg__(self) -> Sym:
        return Sym(f"(-{self.text})")

    def __gt__(self, o: Any) -> Sym:
        return self._op(">", o)

    def __ge__(self, o: Any) -> Sym:
        return self._op(">=", o)

    def __lt__(self, o: Any) -> Sym:
        return self._op("<", o)

    def __le__(self, o: Any) -> Sym:
        return self._op("<=", o)

    def __eq__(self, o: Any) -> Sym:  # type: ignore[override]
        return self._op("==", o)

    def __ne__(self, o: Any) -> Sym:  # type: ignore[override]
        return self._op("!=", o)

    __hash__ = None  # type: ignore[assignment]


# xp function -> the C macro or helper (one real argument).
_UNARY = {
    "exp": "MC_EXP",
    "log": "MC_LOG",
    "log1p": "MC_LOG1P",
    "sqrt": "MC_SQRT",
    "sin": "MC_SIN",
    "cos": "MC_COS",
    "tanh": "MC_TANH",
    "abs": "MC_FABS",
    "absolute": "MC_FABS",
    "sign": "mc_sign",
    "erf": "MC_ERF",
    "floor": "MC_FLOOR",
}


class _Namespace:
    """The symbolic ``xp``."""

    def __getattr__(self, name: str) -> Any:
        macro = _UNARY.get(name)
        if macro is None:
            msg = f"xp.{name}"
            raise Unsupported(msg)
        return lambda x: Sym(f"{macro}({_c(x)})")

    @staticmethod
    def where(condition: Any, a: Any, b: Any) -> Sym:
        return Sym(f"({_c(condition)} ? {_c(a)} : {_c(b)})")

    @staticmethod
    def power(a: Any, b: Any) -> Sym:
        return Sym(f"MC_POW({_c(a)}, {_c(b)})")

    @staticmethod
    def logical_and(a: Any, b: Any) -> Sym:
        return Sym(f"({_c(a)} && {_c(b)})")

    @staticmethod
    def logical_or(a: Any, b: Any) -> Sym:
        return Sym(f"({_c(a)} || {_c(b)})")

    @staticmethod
    def logical_not(a: Any) -> Sym:
        return Sym(f"(!{_c(a)})")

    @staticmethod
    def astype(x: Any, dtype: Any) -> Any:
        return x


XP = _Namespace()


def vjp_templates(rules: Mapping[str, GradRule]) -> tuple[str | None, ...] | None:
    """One C template per input (``None``: no gradient), or ``None`` when a rule
    cannot be expressed (or the op declares no rule)."""
    if not rules:
        return None
    names = tuple(inspect.signature(next(iter(rules.values()))).parameters)[3:]
    inputs = [Sym(f"{{{j}}}") for j in range(len(names))]
    templates: list[str | None] = []
    for name in names:
        rule = rules.get(name)
        if rule is None:
            templates.append(None)
            continue
        try:
            templates.append(_c(rule(XP, Sym("{g}"), Sym("{y}"), *inputs)))
        except (Unsupported, TypeError, AttributeError):
            return None
    return tuple(templates)


# Stands for "the VJP generated from the primitive's grad_rules" in a table entry.
FROM_RULES = "from grad_rules"


def from_rules(table: Mapping[str, Any]) -> dict[str, Any]:
    """``table`` with every :data:`FROM_RULES` VJP generated from the core primitive's
    ``grad_rules`` (an entry whose rules cannot be expressed is an error: give it a
    hand-written template)."""
    from mithril_core.primitives import CORE_PRIMITIVES

    rules = {p.op_name: getattr(p, "grad_rules", None) for p in CORE_PRIMITIVES}
    result: dict[str, Any] = {}
    for op, entry in table.items():
        if isinstance(entry, tuple) and len(entry) > 1 and entry[1] == FROM_RULES:
            templates = vjp_templates(rules.get(op) or {})
            if templates is None:
                msg = f"C lowering {op!r}: its grad_rules have no C template form."
                raise ValueError(msg)
            entry = (entry[0], templates, *entry[2:])
        result[op] = entry
    return result
