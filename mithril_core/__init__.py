"""mithril_core: compose models once, compile them for NumPy, PyTorch, JAX, MLX or C.

Importing this package imports no framework: backends load through the plugin registry
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Declares the primitives and registers the connection operators (``a + b`` ...) with
# logical/; imports NumPy, never a framework.
from mithril_core import primitives as _primitives  # noqa: F401  (registers operators)
from mithril_core.dtypes import (
    Dtype,
    bfloat16,
    bool_,
    float16,
    float32,
    float64,
    int8,
    int16,
    int32,
    int64,
    uint8,
)
from mithril_core.errors import (
    MissingBackendError,
    MithrilError,
    PluginError,
    ShapeError,
)

# The inspect layer: registers what model.to_dict(), model.summary(), pm.to_dot() ...
# call, so the logical and physical layers never import it.
from mithril_core.logical import dot as _dot  # noqa: F401
from mithril_core.logical import serialize as _serialize  # noqa: F401
from mithril_core.logical import summary as _summary  # noqa: F401

if TYPE_CHECKING:
    from mithril_core.backends.base import Backend
    from mithril_core.physical.physical_model import PhysicalModel

__version__ = "0.1.0"

_LAZY_BACKENDS = {
    "NumpyBackend": "numpy",
    "TorchBackend": "torch",
    "JaxBackend": "jax",
    "MlxBackend": "mlx",
    "CBackend": "c",
    "OnnxBackend": "onnx",
}


def available_backends() -> list[str]:
    """Names of the installed backends (``"numpy"`` always)."""
    from mithril_core.plugins import get_registry

    return sorted(get_registry().backends)


def backend(name: str, **options: Any) -> Backend:
    """Build the backend called ``name`` (``"numpy"``, ``"torch"`` ...) with ``options``
    such as ``dtype=ml.float64`` or ``device="cuda"``."""
    from mithril_core.plugins import get_registry

    return get_registry().backend_class(name)(**options)


def compile(model: Any, backend: Backend, **options: Any) -> PhysicalModel:  # noqa: A001
    """Compile a logical model for ``backend``; see
    :func:`mithril_core.physical.model.compile`."""
    import mithril_core.codegen.python  # noqa: F401 - registers the Python codegen
    from mithril_core.physical.model import compile as _compile

    return _compile(model, backend, **options)


def to_dot(model: Any) -> str:
    """Graphviz DOT of a logical model's tree (or of a compiled model's flat graph)."""
    from mithril_core.logical.dot import model_to_dot, physical_to_dot
    from mithril_core.physical.physical_model import PhysicalModel

    if isinstance(model, PhysicalModel):
        return physical_to_dot(model)
    return model_to_dot(model)


def to_svg(model: Any) -> str:
    """SVG of :func:`to_dot` through the Graphviz ``dot`` binary (a clear error when
    Graphviz is not installed)."""
    from mithril_core.logical.dot import render_svg

    return render_svg(to_dot(model))


def __getattr__(name: str) -> Any:
    if name in _LAZY_BACKENDS:
        from mithril_core.plugins import get_registry

        return get_registry().backend_class(_LAZY_BACKENDS[name])
    if name == "check_parity":
        from mithril_core.parity import check_parity

        return check_parity
    if name == "to_onnx":
        try:
            from mithril_onnx.export import to_onnx
        except ImportError as exc:
            msg = (
                "ml.to_onnx needs the mithril-onnx plugin: python -m pip install -e "
                f"./plugins/mithril_onnx (or pip install mithril-onnx); {exc}"
            )
            raise MissingBackendError(msg) from exc
        return to_onnx
    if name == "models":
        import mithril_core.models as models

        return models
    msg = f"module 'mithril_core' has no attribute {name!r}"
    raise AttributeError(msg)


__all__ = [
    "CBackend",
    "Dtype",
    "JaxBackend",
    "MissingBackendError",
    "MithrilError",
    "MlxBackend",
    "NumpyBackend",
    "OnnxBackend",
    "PluginError",
    "ShapeError",
    "TorchBackend",
    "available_backends",
    "backend",
    "check_parity",
    "bfloat16",
    "bool_",
    "compile",
    "to_dot",
    "to_onnx",
    "to_svg",
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
]
