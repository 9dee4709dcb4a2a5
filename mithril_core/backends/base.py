"""The interface every backend (builtin or plugin) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mithril_core.dtypes import Dtype, as_dtype
from mithril_core.errors import CompileError, DtypeError

Evaluator = Callable[
    [Mapping[str, Any], Mapping[str, Any] | None],
    tuple[dict[str, Any], dict[str, Any] | None],
]


@dataclass
class Program:
    """Generated code of one physical model, handed to :meth:`Backend.build_evaluator`.

    ``forward(inputs) -> outputs`` maps every input key to its array and returns a dict
    of output arrays.
    ``forward_backward(inputs, output_gradients) -> (outputs, gradients)`` exists only
    for backends without autograd (generated with the VJP rules). ``grad_keys`` are the
    input keys that gradients are returned for.
    """

    forward: Callable[[Mapping[str, Any]], dict[str, Any]]
    forward_backward: Callable[..., tuple[dict[str, Any], dict[str, Any]]] | None
    input_keys: tuple[str, ...]
    output_keys: tuple[str, ...]
    grad_keys: tuple[str, ...]
    differentiable_outputs: tuple[str, ...] = field(default_factory=tuple)
    source: str = ""
    # key -> one mesh-axis name (or None) per dim; only for backends with
    # ``supports_sharding`` (see ``compile(shardings=...)``).
    shardings: dict[str, tuple[str | None, ...]] = field(default_factory=dict)


class Backend(ABC):
    """A place to run compiled models: arrays, dtypes, devices and a lowering table.

    Subclasses set ``name`` (the registry name, e.g. ``"torch"``), ``has_autograd`` and
    ``supported_dtypes`` and implement the abstract methods. Shapes are given as
    ``*dims`` or one tuple.
    """

    name: ClassVar[str] = ""
    has_autograd: ClassVar[bool] = False
    supports_jit: ClassVar[bool] = False
    #: False for inference-only backends (ONNX Runtime): evaluate with
    #: ``output_gradients`` raises.
    supports_gradients: ClassVar[bool] = True
    supports_sharding: ClassVar[bool] = False
    supported_dtypes: ClassVar[frozenset[str]] = frozenset()
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, device: str = "cpu", dtype: Dtype | str = "float32") -> None:
        self._dtype = self._check_dtype(dtype)
        self._device = device

    # -- properties -------------------------------------------------------------------
    @property
    def dtype(self) -> Dtype:
        """Default float dtype of arrays this backend creates."""
        return self._dtype

    @property
    def device(self) -> str:
        """Device string, e.g. ``"cpu"`` or ``"cuda:0"``."""
        return self._device

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device!r}, dtype={self.dtype!r})"

    def _check_dtype(self, dtype: Dtype | str | None) -> Dtype:
        if dtype is None:
            return self._dtype
        resolved = as_dtype(dtype)
        if resolved.name not in self.supported_dtypes:
            msg = (
                f"{type(self).__name__} does not support dtype {resolved.name!r}; "
                f"supported: {', '.join(sorted(self.supported_dtypes))}."
            )
            raise DtypeError(msg)
        return resolved

    # -- array API ---------------------------------------------------------------------
    @abstractmethod
    def array(self, data: Any, dtype: Dtype | str | None = None) -> Any:
        """Copy ``data`` (nested lists, NumPy or framework arrays) into a backend array.

        Float data gets the backend dtype unless ``dtype`` is given; int and bool keep
        their kind (ints become int64 where the framework has it).
        """

    @abstractmethod
    def to_numpy(self, array: Any) -> np.ndarray:
        """Return a NumPy copy (or view) of ``array``."""

    @abstractmethod
    def array_info(self, value: Any) -> tuple[tuple[int, ...], str] | None:
        """Return ``(shape, dtype name)`` if ``value`` is an array of this backend, else
        ``None``. Used to validate evaluate inputs."""

    def index_range(self, array: Any) -> tuple[int, int]:
        """``(min, max)`` of a non-empty int array, as Python ints. evaluate checks
        int inputs that index (embedding ids, class targets) with it before dispatch;
        backends override it with one device reduction."""
        values = self.to_numpy(array)
        return int(values.min()), int(values.max())

    # ``placement`` (e.g. ``sharding=`` on a backend with a device mesh) goes to
    # :meth:`array` with the values.
    def zeros(
        self,
        *shape: int | tuple[int, ...],
        dtype: Dtype | str | None = None,
        **placement: Any,
    ) -> Any:
        """Array of zeros."""
        return self._from_numpy(np.zeros(_shape(shape)), dtype, placement)

    def ones(
        self,
        *shape: int | tuple[int, ...],
        dtype: Dtype | str | None = None,
        **placement: Any,
    ) -> Any:
        """Array of ones."""
        return self._from_numpy(np.ones(_shape(shape)), dtype, placement)

    def randn(
        self,
        *shape: int | tuple[int, ...],
        dtype: Dtype | str | None = None,
        **placement: Any,
    ) -> Any:
        """Standard-normal samples from the backend's seeded generator."""
        values = self._rng().standard_normal(_shape(shape))
        return self._from_numpy(values, dtype, placement)

    def rand(
        self,
        *shape: int | tuple[int, ...],
        dtype: Dtype | str | None = None,
        **placement: Any,
    ) -> Any:
        """Uniform [0, 1) samples from the backend's seeded generator."""
        return self._from_numpy(self._rng().random(_shape(shape)), dtype, placement)

    def _from_numpy(
        self, values: np.ndarray, dtype: Dtype | str | None, placement: dict[str, Any]
    ) -> Any:
        return self.array(values, dtype=self._check_dtype(dtype), **placement)

    def arange(
        self,
        start: float,
        stop: float | None = None,
        step: float = 1,
        dtype: Dtype | str | None = None,
    ) -> Any:
        """Evenly spaced values as ``numpy.arange``; ints stay ints unless ``dtype``."""
        values = np.arange(start, stop, step) if stop is not None else np.arange(start)
        return self.array(
            values, dtype=None if dtype is None else self._check_dtype(dtype)
        )

    def seed(self, seed: int) -> None:
        """Seed the generator behind ``randn`` and ``rand``."""
        self._generator = np.random.Generator(np.random.Philox(seed))

    def _rng(self) -> np.random.Generator:
        # One counter-based generator for all backends: same seed, same numbers.
        if not hasattr(self, "_generator"):
            self.seed(0)
        return self._generator

    # -- compile-time API --------------------------------------------------------------
    @abstractmethod
    def build_evaluator(self, program: Program, *, jit: bool) -> Evaluator:
        """Return
        ``evaluate(inputs, output_gradients) -> (outputs, gradients or None)``.

        ``inputs`` maps every key of ``program.input_keys`` to an array. Backends with
        autograd differentiate ``program.forward`` w.r.t. ``program.grad_keys`` with
        their own VJP (and jit the whole function when ``jit``); others call
        ``program.forward_backward``.
        """

    def build_program(
        self,
        graph: Any,
        lowerings: Mapping[str, Any],
        *,
        grad_keys: tuple[str, ...],
        differentiable_outputs: tuple[str, ...],
        inference: bool,
        file_path: str | None,
    ) -> Program | None:
        """Generate this backend's own code for the flat graph, or return ``None`` to
        use the generated Python (the default). Backends that compile another language
        (C) override this; ``graph`` is a :class:`mithril_core.physical.flat.FlatGraph`
        after all passes, ``lowerings`` this backend's merged lowering table."""
        return None

    def scalar(self, value: Any, dtype_name: str) -> Any:
        """Convert a folded compile-time constant array to a backend array."""
        return self.array(np.asarray(value), dtype=dtype_name)


def _shape(shape: tuple[int | tuple[int, ...], ...]) -> tuple[int, ...]:
    if len(shape) == 1 and isinstance(shape[0], tuple | list):
        return tuple(int(d) for d in shape[0])
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


DEFAULT_MESH_AXIS_NAMES = {1: ("data",), 2: ("data", "model")}


def mesh_layout(
    owner: str, shape: Sequence[int], axis_names: Sequence[str] | None
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The sizes and axis names of a backend's ``device_mesh=shape`` (default names
    ``("data",)`` and ``("data", "model")``), checked; errors name ``owner``."""
    dims = tuple(int(n) for n in shape)
    if not dims or any(n < 1 for n in dims):
        msg = f"{owner}: device_mesh must be positive sizes, got {tuple(shape)}."
        raise CompileError(msg)
    if axis_names is None:
        if len(dims) not in DEFAULT_MESH_AXIS_NAMES:
            msg = (
                f"{owner}: name the axes of the {len(dims)}-D device_mesh {dims} "
                "with mesh_axis_names=(...)."
            )
            raise CompileError(msg)
        return dims, DEFAULT_MESH_AXIS_NAMES[len(dims)]
    names = tuple(str(name) for name in axis_names)
    if len(names) != len(dims) or len(set(names)) != len(names):
        msg = (
            f"{owner}: mesh_axis_names {names} must be {len(dims)} distinct names, "
            f"one per axis of device_mesh {dims}."
        )
        raise CompileError(msg)
    return dims, names
