"""The form of a C lowering (SPEC §3: "C lowerings carry C source").

A lowering is ``(forward, vjp)``:

- element-wise ops: ``forward`` is a C expression template over ``{0}``, ``{1}`` ...
  (the inputs) and ``vjp`` a tuple with one C expression per input over ``{g}`` (the
  output gradient), ``{y}`` (the output) and the inputs, or ``None`` where the input
  gets no gradient. Scalar helpers from ``csrc/mithril_c.h`` (``mc_sigmoid``,
  ``MC_EXP`` ...) may be used; ``real`` is the model's float type. Such ops are fused
  into one loop with their element-wise neighbours. Third-party packages lower their
  element-wise primitives this way, e.g.
  ``{"example_ops.softsign": ("({0} / (1 + MC_FABS({0})))",
  ("{g} / ((1 + MC_FABS({0})) * (1 + MC_FABS({0})))",))}``.
- other ops: ``forward(ctx, node)`` and ``vjp(ctx, node, needs)`` are Python
  functions that emit C statements through the code generator's
  :class:`mithril_c._codegen.Emitter` (calls into the ``csrc/`` kernels).
"""

from __future__ import annotations

from collections.abc import Callable

ElementwiseLowering = tuple[str, tuple[str | None, ...]]
Emit = Callable[..., None]
CLowering = ElementwiseLowering | tuple[Emit, Emit]
