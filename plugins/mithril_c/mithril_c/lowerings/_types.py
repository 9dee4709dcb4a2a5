"""The form of a C lowering (SPEC §3: "C lowerings carry C source").

A lowering is a :class:`~mithril_core.primitives.lowering.Lowering` record (a
``(forward, vjp)`` or ``(forward, vjp, options)`` tuple is read as one):

- element-wise ops: ``forward`` is a C expression template over ``{0}``, ``{1}`` ...
  (the inputs) and ``vjp`` a tuple with one C expression per input over ``{g}`` (the
  output gradient), ``{y}`` (the output) and the inputs, or ``None`` where the input
  gets no gradient. Scalar helpers from ``csrc/mithril_c.h`` (``mc_sigmoid``,
  ``MC_EXP`` ...) may be used; ``real`` is the model's float type. Such ops are fused
  into one loop with their element-wise neighbours. Operands are converted to the
  output's C type (``real``, ``int64_t`` ...) before the template sees them; a bool
  output (a comparison) gets them converted to their common NumPy type instead.
  Third-party packages lower their element-wise primitives this way, e.g.
  ``{"example_ops.softsign": ("({0} / (1 + MC_FABS({0})))",
  ("{g} / ((1 + MC_FABS({0})) * (1 + MC_FABS({0})))",))}``. A core primitive's VJP
  may be ``FROM_RULES``: generated from its ``grad_rules``
  (:mod:`mithril_c.lowerings._symbolic`).
- other ops: ``forward(ctx, node)`` and ``vjp(ctx, node, needs)`` are Python
  functions that emit C statements through the code generator's
  :class:`mithril_c._emit.Emitter` (calls into the ``csrc/`` kernels), reading the
  node's inputs by name (``node.input("weight")``). Their tensors are ``real`` unless
  the forward is marked with :func:`dtypes`.

``options`` holds the op's facts, read by the generic code generator (which names no
operator):

- ``"int"`` / ``"bool"``: the element-wise template used when the output is an int /
  bool tensor; ``"raw"``: positions of operands read as stored (no conversion:
  conditions, truth values, a cast's input).
- ``"output_dtype"``: ``f(node) -> dtype name`` the output has (a cast); a name with no
  C type (float16) makes the op unsupported. ``"int_output"``: the dtype of an int
  output whatever the inputs' (``"int64"``: sums, arg_max).
- ``"virtual"``: no C computes the output: ``"list"`` (a list of tensors, read only
  by ops with ``"reads_lists"``, through ``ctx.parts``) or ``"chunks"`` (chunks of the
  first input, read only by ops whose ``"reads_chunk"(node)`` is true, through
  ``ctx.folded``).
- ``"gemm_fold"``: ``f(node) -> bool``: when the output is read only by ops with
  ``"reads_transposed"``, no C computes it: they read the first input through
  ``ctx.transposed`` (a transpose of the last two axes, a gemm flag).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mithril_core.primitives.lowering import Lowering

# The VJP: one template per input, or ``FROM_RULES`` (generated from grad_rules).
_Vjps = tuple[str | None, ...] | str
ElementwiseLowering = tuple[str, _Vjps] | tuple[str, _Vjps, dict[str, Any]]
Emit = Callable[..., None]
CLowering = ElementwiseLowering | tuple[Emit, Emit] | Lowering


def dtypes(spec: str | dict[int, str]) -> Callable[[Emit], Emit]:
    """Mark a forward emitter as taking tensors other than ``real``: ``"any"`` (every
    tensor input and the output, any dtype) or ``{input position: kinds}`` with kinds
    NumPy kind letters (``"iu"``: ints, ``"b"``: bools, ``"f"``: floats) or
    ``"any"``."""

    def mark(emit: Emit) -> Emit:
        emit.dtypes = spec  # type: ignore[attr-defined]
        return emit

    return mark
