"""The form of a C lowering (SPEC §3: "C lowerings carry C source").

A lowering is ``(forward, vjp)`` or, for element-wise ops, optionally
``(forward, vjp, options)``:

- element-wise ops: ``forward`` is a C expression template over ``{0}``, ``{1}`` ...
  (the inputs) and ``vjp`` a tuple with one C expression per input over ``{g}`` (the
  output gradient), ``{y}`` (the output) and the inputs, or ``None`` where the input
  gets no gradient. Scalar helpers from ``csrc/mithril_c.h`` (``mc_sigmoid``,
  ``MC_EXP`` ...) may be used; ``real`` is the model's float type. Such ops are fused
  into one loop with their element-wise neighbours. Operands are converted to the
  output's C type (``real``, ``int64_t`` ...) before the template sees them; a bool
  output (a comparison) gets them converted to their common NumPy type instead.
  ``options`` may hold ``"int"`` / ``"bool"``: the template used when the output is
  an int / bool tensor, and ``"raw"``: positions of operands read as stored (no
  conversion: conditions, truth values, a cast's input). Third-party packages lower
  their element-wise primitives this way, e.g.
  ``{"example_ops.softsign": ("({0} / (1 + MC_FABS({0})))",
  ("{g} / ((1 + MC_FABS({0})) * (1 + MC_FABS({0})))",))}``.
- other ops: ``forward(ctx, node)`` and ``vjp(ctx, node, needs)`` are Python
  functions that emit C statements through the code generator's
  :class:`mithril_c._codegen.Emitter` (calls into the ``csrc/`` kernels). Their
  tensors are ``real`` unless the forward is marked with :func:`dtypes`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ElementwiseLowering = (
    tuple[str, tuple[str | None, ...]]
    | tuple[str, tuple[str | None, ...], dict[str, Any]]
)
Emit = Callable[..., None]
CLowering = ElementwiseLowering | tuple[Emit, Emit]


def dtypes(spec: str | dict[int, str]) -> Callable[[Emit], Emit]:
    """Mark a forward emitter as taking tensors other than ``real``: ``"any"`` (every
    tensor input and the output, any dtype) or ``{input position: kinds}`` with kinds
    NumPy kind letters (``"iu"``: ints, ``"b"``: bools, ``"f"``: floats) or
    ``"any"``."""

    def mark(emit: Emit) -> Emit:
        emit.dtypes = spec  # type: ignore[attr-defined]
        return emit

    return mark
