"""JAX backend: arrays are ``jax.Array``; gradients come from ``jax.vjp``.

jax is imported on construction, not when this module is imported, so listing backends
stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mithril_core.backends.base import Backend, Evaluator, Program
from mithril_core.dtypes import ALL_DTYPES, Dtype
from mithril_core.errors import CompileError

if TYPE_CHECKING:
    import jax

Outputs = dict[str, Any]
Gradients = dict[str, Any]
# One mesh-axis name (or None: not split) per dim of an array.
ShardingSpec = Sequence[str | None]


class JaxBackend(Backend):
    """Runs compiled models with JAX on the CPU, a GPU or a TPU.

    :param device: ``"cpu"``, ``"gpu"`` / ``"cuda"`` or ``"tpu"``, optionally with
        ``":<index>"``.
    :param dtype: Default float dtype of the arrays this backend creates.
    :param matmul_precision: Precision of float32 matrix products and convolutions
        on a GPU or TPU (``jax.default_matmul_precision``): ``"highest"`` (default,
        float32 as on the CPU and every other backend), or ``"high"`` /
        ``"default"`` for JAX's faster reduced-precision passes (TF32 on NVIDIA
        GPUs: a float32 ResNet-18 came out 4e-3 off float64 on an H200, measured).

    Constructing a ``JaxBackend`` turns on JAX's process-wide ``jax_enable_x64`` flag:
    without it JAX silently makes every int64 array (token ids, indices) int32 and every
    float64 array float32. Arrays this backend creates always carry an explicit dtype,
    so float32 models stay float32.

    ``jit=True`` wraps the whole evaluation, gradients included, in one ``jax.jit``.
    A jitted function cannot raise: ``evaluate`` checks index inputs (embedding ids,
    class targets) before dispatch; an index computed inside the model that is out
    of range gives NaN, never another row.
    Inputs that are not arrays (Python numbers, tuples) are compile-time constants of
    the jitted function: a new value compiles it again.

    **Sharding.** ``device_mesh=(d0, d1, ...)`` lays the first ``d0 * d1 * ...`` devices
    of the platform out as a :class:`jax.sharding.Mesh` with ``mesh_axis_names``
    (default ``("data",)`` for a 1-D mesh, ``("data", "model")`` for a 2-D one). Then
    every array the backend creates lives on the mesh: replicated, or split as
    ``sharding`` (one mesh-axis name or ``None`` per dim) says, e.g.
    ``backend.array(x, sharding=("data", None))``; ``compile(..., shardings={key:
    spec})`` pins inputs and outputs to a layout (see :mod:`mithril_jax.sharding`).
    """

    name = "jax"
    has_autograd = True
    supports_jit = True
    supported_dtypes = frozenset(ALL_DTYPES)
    devices = ("cpu", "gpu", "cuda", "tpu")

    supports_sharding = True

    def __init__(
        self,
        device: str = "cpu",
        dtype: Dtype | str = "float32",
        *,
        device_mesh: Sequence[int] | None = None,
        mesh_axis_names: Sequence[str] | None = None,
        matmul_precision: str = "highest",
    ) -> None:
        import jax

        jax.config.update("jax_enable_x64", True)
        self.matmul_precision = matmul_precision
        platform, _, index = device.partition(":")
        if platform not in self.devices:
            supported = ", ".join(self.devices)
            msg = f"JaxBackend supports devices {supported}, not {device!r}."
            raise CompileError(msg)
        try:
            found = jax.devices(platform)
        except RuntimeError as exc:
            msg = (
                f"JaxBackend(device={device!r}): JAX has no {platform!r} platform here "
                f"(available: {', '.join(str(d) for d in jax.devices())}). "
                f"Install the matching jax plugin or use device='cpu'."
            )
            raise CompileError(msg) from exc
        position = int(index) if index else 0
        if position >= len(found):
            msg = (
                f"JaxBackend(device={device!r}): only {len(found)} {platform} "
                f"device(s) exist."
            )
            raise CompileError(msg)
        super().__init__(device=device, dtype=dtype)
        self._jax_device: jax.Device = found[position]
        from mithril_jax._dtypes import dtype_name

        self._array_type = jax.Array
        self._dtype_name = dtype_name
        self._aminmax: Callable[[Any], Any] | None = None
        self._mesh: jax.sharding.Mesh | None = None
        if device_mesh is not None:
            from mithril_jax.sharding import make_mesh

            self._mesh = make_mesh(found, device_mesh, mesh_axis_names, device)
        elif mesh_axis_names is not None:
            msg = "JaxBackend: mesh_axis_names needs a device_mesh."
            raise CompileError(msg)

    @property
    def mesh(self) -> jax.sharding.Mesh | None:
        """The :class:`jax.sharding.Mesh` of ``device_mesh``, or ``None``."""
        return self._mesh

    @property
    def device_mesh(self) -> tuple[int, ...] | None:
        """Shape of the device mesh, or ``None`` without one."""
        if self._mesh is None:
            return None
        return tuple(int(n) for n in self._mesh.devices.shape)

    @property
    def mesh_axis_names(self) -> tuple[str, ...] | None:
        """Names of the mesh axes, or ``None`` without a mesh."""
        return None if self._mesh is None else tuple(self._mesh.axis_names)

    def __repr__(self) -> str:
        if self._mesh is None:
            return super().__repr__()
        return (
            f"{type(self).__name__}(device={self.device!r}, dtype={self.dtype!r}, "
            f"device_mesh={self.device_mesh}, mesh_axis_names={self.mesh_axis_names})"
        )

    def sharding(self, spec: ShardingSpec | None) -> jax.sharding.NamedSharding:
        """The :class:`jax.sharding.NamedSharding` of ``spec`` (one mesh-axis name or
        ``None`` per dim; ``None`` or ``()`` replicates) on this backend's mesh."""
        from mithril_jax.sharding import named_sharding

        return named_sharding(self._require_mesh("sharding"), spec)

    def _require_mesh(self, what: str) -> jax.sharding.Mesh:
        if self._mesh is None:
            msg = (
                f"JaxBackend.{what}: this backend has no device mesh; create it with "
                "JaxBackend(device_mesh=(n,)) to shard arrays."
            )
            raise CompileError(msg)
        return self._mesh

    # -- array API ---------------------------------------------------------------------
    def array(
        self,
        data: Any,
        dtype: Dtype | str | None = None,
        *,
        sharding: ShardingSpec | jax.sharding.Sharding | None = None,
    ) -> jax.Array:
        """As :meth:`Backend.array`; with a device mesh the array is put on the mesh,
        replicated or split as ``sharding`` says (a spec such as ``("data", None)`` or
        a :class:`jax.sharding.Sharding`)."""
        import jax

        from mithril_jax._dtypes import jax_dtype

        values = np.array(data)
        if dtype is not None:
            target = jax_dtype(self._check_dtype(dtype))
        elif values.dtype.kind == "f" or values.dtype.name == "bfloat16":
            target = jax_dtype(self.dtype)
        elif values.dtype.kind == "b":
            target = jax_dtype("bool")
        elif values.dtype.kind in "iu":
            target = jax_dtype("int64")
        else:
            msg = f"JaxBackend.array: unsupported data of NumPy dtype {values.dtype}."
            raise TypeError(msg)
        values = values.astype(target)
        if isinstance(sharding, jax.sharding.Sharding):
            return jax.device_put(values, sharding)
        if sharding is not None:
            return jax.device_put(values, self.sharding(sharding))
        if self._mesh is not None:
            return jax.device_put(values, self.sharding(None))
        return jax.device_put(values, self._jax_device)

    def to_numpy(self, array: Any) -> np.ndarray:
        values = np.asarray(array)
        if values.dtype.name == "bfloat16":  # as the other backends: NumPy float32
            return values.astype(np.float32)
        return values

    def array_info(self, value: Any) -> tuple[tuple[int, ...], str] | None:
        # evaluate calls this for every input on every call: no imports here.
        if isinstance(value, self._array_type):
            return tuple(value.shape), self._dtype_name(value.dtype)
        return None

    def index_range(self, array: Any) -> tuple[int, int]:
        if self._jax_device.platform == "cpu":  # a view: NumPy reduces in ~2 us
            values = np.asarray(array)
            return int(values.min()), int(values.max())
        if self._aminmax is None:  # one reduction on the device, one transfer
            import jax
            import jax.numpy as jnp

            self._aminmax = jax.jit(lambda v: jnp.stack([v.min(), v.max()]))
        low, high = self._aminmax(array).tolist()
        return int(low), int(high)

    # -- compile-time API --------------------------------------------------------------
    def build_evaluator(self, program: Program, *, jit: bool) -> Evaluator:
        import jax
        import jax.numpy as jnp

        forward = program.forward
        grad_keys = program.grad_keys
        if program.shardings and self._mesh is None:
            msg = (
                f"compile(shardings=...) needs a JaxBackend with a device mesh, e.g. "
                f"JaxBackend(device_mesh=(n,)); got {self!r}."
            )
            raise CompileError(msg)
        layout = None
        if self._mesh is not None:
            from mithril_jax.sharding import Layout

            layout = Layout(self._mesh, program.shardings)

        def forward_backward(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
        ) -> tuple[Outputs, Gradients]:
            leaves = {key: inputs[key] for key in grad_keys if _is_float(inputs[key])}
            rest = {key: value for key, value in inputs.items() if key not in leaves}

            def differentiable(leaves: Mapping[str, Any]) -> tuple[Outputs, Outputs]:
                outputs = forward({**rest, **leaves})
                chosen = {
                    key: outputs[key]
                    for key, cotangent in output_gradients.items()
                    if cotangent is not None and _is_float(outputs[key])
                }
                return chosen, outputs

            chosen, pullback, outputs = jax.vjp(differentiable, leaves, has_aux=True)
            (found,) = pullback({key: output_gradients[key] for key in chosen})
            gradients = {
                key: found[key] if key in found else jnp.zeros_like(inputs[key])
                for key in grad_keys
            }
            return outputs, gradients

        def run_forward(inputs: Mapping[str, Any]) -> Outputs:
            outputs = forward(inputs)
            return outputs if layout is None else layout.constrain(outputs)

        def run_forward_backward(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
        ) -> tuple[Outputs, Gradients]:
            outputs, gradients = forward_backward(inputs, output_gradients)
            if layout is None:
                return outputs, gradients
            # Pin the outputs and gradients of the keys given in shardings (inside
            # jit: sharding constraints, which XLA partitions the computation around).
            return layout.constrain(outputs), layout.constrain(gradients)

        if not jit:

            def evaluate(
                inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
            ) -> tuple[Outputs, Gradients | None]:
                if layout is not None:
                    inputs = layout.place(inputs)
                    if output_gradients is not None:
                        output_gradients = layout.place(output_gradients)
                if output_gradients is None:
                    return run_forward(inputs), None
                return run_forward_backward(inputs, output_gradients)

            return self._with_precision(evaluate)

        # One jitted forward and one jitted forward+VJP per set of non-array inputs;
        # the common case, every input an array, skips building the cache key.
        cache: dict[Any, Callable[..., Any]] = {}

        def jitted(static: dict[str, Any], with_gradients: bool) -> Callable[..., Any]:
            key = (with_gradients, _freeze(static))
            if key not in cache:
                if with_gradients:
                    cache[key] = jax.jit(
                        lambda dynamic, cotangents: run_forward_backward(
                            {**static, **dynamic}, cotangents
                        )
                    )
                else:
                    cache[key] = jax.jit(
                        lambda dynamic: run_forward({**static, **dynamic})
                    )
            return cache[key]

        all_arrays = (jitted({}, False), jitted({}, True))
        array_types = (jax.Array, np.ndarray, np.generic)

        def evaluate_jitted(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
        ) -> tuple[Outputs, Gradients | None]:
            static = {k: v for k, v in inputs.items() if not isinstance(v, array_types)}
            if static:
                dynamic = {k: v for k, v in inputs.items() if k not in static}
            else:
                dynamic = inputs if type(inputs) is dict else dict(inputs)
            if layout is not None:
                # Committed inputs on the mesh: jit partitions the computation by
                # their shardings (and recompiles for a new layout).
                dynamic = layout.place(dynamic)
                if output_gradients is not None:
                    output_gradients = layout.place(output_gradients)
            if output_gradients is None:
                function = jitted(static, False) if static else all_arrays[0]
                return function(dynamic), None
            function = jitted(static, True) if static else all_arrays[1]
            return function(dynamic, dict(output_gradients))

        return self._with_precision(evaluate_jitted)

    def _with_precision(self, evaluate: Evaluator) -> Evaluator:
        """``evaluate`` under ``matmul_precision`` off the CPU (where float32 products
        are float32 anyway). The precision is part of jit's cache key and is read when
        a call lowers, so it is set around each call."""
        import jax

        if self._jax_device.platform == "cpu":
            return evaluate
        precision = self.matmul_precision

        def evaluate_at_precision(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
        ) -> tuple[Outputs, Gradients | None]:
            with jax.default_matmul_precision(precision):
                return evaluate(inputs, output_gradients)

        return evaluate_at_precision


def _is_float(value: Any) -> bool:
    import jax.numpy as jnp

    dtype = getattr(value, "dtype", None)
    return dtype is not None and bool(jnp.issubdtype(dtype, jnp.floating))


def _freeze(value: Any) -> Any:
    # A hashable cache key; the type is part of it so that 1, 1.0 and True differ.
    if isinstance(value, list | tuple):
        return type(value), tuple(_freeze(item) for item in value)
    if isinstance(value, dict):
        return dict, tuple((key, _freeze(item)) for key, item in sorted(value.items()))
    try:
        hash(value)
    except TypeError:
        return type(value), id(value)
    return type(value), value
