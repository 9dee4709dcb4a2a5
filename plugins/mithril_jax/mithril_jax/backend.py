"""JAX backend: arrays are ``jax.Array``; gradients come from ``jax.vjp``.

jax is imported on construction, not when this module is imported, so listing backends
stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mithril_core.backends.base import Backend, Evaluator, Program
from mithril_core.dtypes import ALL_DTYPES, Dtype
from mithril_core.errors import CompileError

if TYPE_CHECKING:
    import jax

Outputs = dict[str, Any]
Gradients = dict[str, Any]


class JaxBackend(Backend):
    """Runs compiled models with JAX on the CPU, a GPU or a TPU.

    :param device: ``"cpu"``, ``"gpu"`` / ``"cuda"`` or ``"tpu"``, optionally with
        ``":<index>"``.
    :param dtype: Default float dtype of the arrays this backend creates.

    Constructing a ``JaxBackend`` turns on JAX's process-wide ``jax_enable_x64`` flag:
    without it JAX silently makes every int64 array (token ids, indices) int32 and every
    float64 array float32. Arrays this backend creates always carry an explicit dtype,
    so float32 models stay float32.

    ``jit=True`` wraps the whole evaluation, gradients included, in one ``jax.jit``.
    Inputs that are not arrays (Python numbers, tuples) are compile-time constants of
    the jitted function: a new value compiles it again.
    """

    name = "jax"
    has_autograd = True
    supports_jit = True
    supported_dtypes = frozenset(ALL_DTYPES)
    devices = ("cpu", "gpu", "cuda", "tpu")

    def __init__(self, device: str = "cpu", dtype: Dtype | str = "float32") -> None:
        import jax

        jax.config.update("jax_enable_x64", True)
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

    # -- array API ---------------------------------------------------------------------
    def array(self, data: Any, dtype: Dtype | str | None = None) -> jax.Array:
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
        return jax.device_put(values.astype(target), self._jax_device)

    def to_numpy(self, array: Any) -> np.ndarray:
        values = np.asarray(array)
        if values.dtype.name == "bfloat16":  # as the other backends: NumPy float32
            return values.astype(np.float32)
        return values

    def array_info(self, value: Any) -> tuple[tuple[int, ...], str] | None:
        import jax

        if isinstance(value, jax.Array):
            return tuple(value.shape), value.dtype.name
        return None

    # -- compile-time API --------------------------------------------------------------
    def build_evaluator(self, program: Program, *, jit: bool) -> Evaluator:
        import jax
        import jax.numpy as jnp

        forward = program.forward
        grad_keys = program.grad_keys

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

        if not jit:

            def evaluate(
                inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
            ) -> tuple[Outputs, Gradients | None]:
                if output_gradients is None:
                    return forward(inputs), None
                return forward_backward(inputs, output_gradients)

            return evaluate

        # One jitted forward and one jitted forward+VJP per set of non-array inputs.
        cache: dict[Any, Callable[..., Any]] = {}

        def jitted(static: dict[str, Any], with_gradients: bool) -> Callable[..., Any]:
            key = (with_gradients, _freeze(static))
            if key not in cache:
                if with_gradients:
                    cache[key] = jax.jit(
                        lambda dynamic, cotangents: forward_backward(
                            {**static, **dynamic}, cotangents
                        )
                    )
                else:
                    cache[key] = jax.jit(lambda dynamic: forward({**static, **dynamic}))
            return cache[key]

        def evaluate_jitted(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
        ) -> tuple[Outputs, Gradients | None]:
            dynamic = {k: v for k, v in inputs.items() if _is_array(v)}
            static = {k: v for k, v in inputs.items() if k not in dynamic}
            if output_gradients is None:
                return jitted(static, False)(dynamic), None
            outputs, gradients = jitted(static, True)(dynamic, dict(output_gradients))
            return outputs, gradients

        return evaluate_jitted


def _is_array(value: Any) -> bool:
    import jax

    return isinstance(value, jax.Array | np.ndarray | np.generic)


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
