"""Hook specifications of the ``mithril`` plugin project (entry-point group
``mithril``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("mithril")
hookimpl = pluggy.HookimplMarker("mithril")


@hookspec
def mithril_backends() -> Mapping[str, type] | None:
    """Return the backends this package contributes, as ``{name: BackendClass}``.

    Called once, the first time the backend registry is used (``available_backends()``,
    ``backend(name)``, ``ml.TorchBackend``). The class must subclass
    :class:`mithril_core.backends.Backend`. Importing the framework belongs in the
    class's module, which this hook may import: the hook itself is called only when a
    backend is needed. Two packages contributing one name is an error naming both.
    """


@hookspec
def mithril_operators() -> Sequence[type] | None:
    """Return the primitive classes (subclasses of ``Primitive``) this package declares.

    Called once, when the operator registry is first built (at the first compile or on
    ``python -m mithril_core ops``). Each class's ``op_name`` must be unique across all
    packages; third-party names should be ``"<package>.<name>"``.
    """


@hookspec
def mithril_lowerings(backend: str) -> Mapping[str, Any] | None:
    """Return this package's lowerings for ``backend``, or ``None`` if it has none.

    Called once per backend name, when a model is first compiled for it. The mapping is
    ``op_name -> forward`` for backends with autograd and ``op_name -> (forward, vjp)``
    for NumPy and C; ``forward(*inputs)`` returns the output,
    ``vjp(output_grad, output, *inputs)`` returns one gradient per input (``None`` where
    not differentiable). Results of all packages are merged; two packages lowering one
    op for one backend is an error naming both.

    :param backend: Backend name, as in ``mithril_core.backend("torch")``.
    """
