"""Calls into one compiled model: checks, pointer tables, workspace, result copies."""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np

from mithril_c._codegen import Loc, Plan
from mithril_core.errors import DtypeError, InputKeyError, MithrilError, ShapeError

_ALIGN_BYTES = 64


class KernelIndexError(MithrilError, IndexError):
    """A kernel of the compiled C met an index out of range (embedding rows,
    cross-entropy classes); nothing was written to the caller's arrays."""


class Runtime:
    """Owns the workspace and the pointer tables of one compiled model."""

    def __init__(self, module: ModuleType, plan: Plan, dtype: np.dtype) -> None:
        self.ffi = module.ffi
        self.lib = module.lib
        self.plan = plan
        self.dtype = dtype
        self.items = tuple(
            (key, shape, np.dtype(name), np.dtype(name) == dtype)
            for key, shape, name in zip(
                plan.input_keys, plan.input_shapes, plan.input_dtypes, strict=True
            )
        )
        # Workspace: one aligned block, zero pages are only touched when written.
        raw = np.zeros(plan.workspace + _ALIGN_BYTES, dtype=dtype)
        skip = (-raw.ctypes.data % _ALIGN_BYTES) // dtype.itemsize
        self.workspace = raw[skip : skip + plan.workspace]
        self.ws = self.ffi.from_buffer("real[]", self.workspace)
        self.first_output = len(plan.input_keys)
        self.first_constant = self.first_output + len(plan.output_shapes)
        self.io = self.ffi.new(
            "real *[]", max(self.first_constant + len(plan.constants), 1)
        )
        self.constants = [np.ascontiguousarray(c) for c in plan.constants]
        self._keep = [self._pointer(c) for c in self.constants]
        for slot, buffer in enumerate(self._keep, start=self.first_constant):
            self.io[slot] = buffer
        self.outputs_spec = tuple(
            (shape, np.dtype(name), np.dtype(name) == dtype)
            for shape, name in zip(plan.output_shapes, plan.output_dtypes, strict=True)
        )
        self.og = self.ffi.new("real *[]", max(len(plan.seeds), 1))
        largest = max((int(np.prod(s)) for s in plan.seed_shapes), default=0)
        self.zeros = np.zeros(max(largest, 1), dtype=dtype)
        self.zero_buffer = self.ffi.from_buffer("real[]", self.zeros)
        self.output_views = [
            (key, self._view(where)) for key, where in plan.outputs.items()
        ]
        self.grad_views = [
            (key, None if where is None else self._view(where))
            for key, where in plan.grads.items()
        ]

    def _view(self, where: tuple[Loc, tuple[int, ...], str] | np.ndarray) -> Any:
        """A workspace or constant view, or (kind, slot, shape) resolved per call."""
        if isinstance(where, np.ndarray):
            return where
        loc, shape, dtype = where
        if loc.kind == "ws":
            size = int(np.prod(shape))
            start = loc.index * self.dtype.itemsize
            data = self.workspace.view(np.uint8)[start:]
            return data[: size * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
        if loc.kind == "io" and loc.index >= self.first_constant:
            return self.constants[loc.index - self.first_constant].reshape(shape)
        if loc.kind == "io" and loc.index >= self.first_output:
            return ("out", loc.index - self.first_output, shape)
        return (loc.kind, loc.index, shape)

    def _bind(self, inputs: Mapping[str, Any]) -> tuple[list[Any], list[np.ndarray]]:
        """Check every input, allocate the outputs and point io[] at them."""
        alive = []
        io = self.io
        from_buffer = self.ffi.from_buffer
        for slot, (key, shape, dtype, real) in enumerate(self.items):
            array = self._checked(inputs, key, shape, "input", dtype)
            alive.append(array)
            io[slot] = from_buffer("real[]", array) if real else self._pointer(array)
        outputs = []
        first = self.first_output
        for slot, (shape, dtype, real) in enumerate(self.outputs_spec, start=first):
            array = np.empty(shape, dtype=dtype)
            outputs.append(array)
            io[slot] = from_buffer("real[]", array) if real else self._pointer(array)
        return alive, outputs

    def _pointer(self, array: np.ndarray) -> Any:
        """``real *`` to any array's data (the generated code casts it back)."""
        return self.ffi.cast("real *", self.ffi.from_buffer("char[]", array))

    def _checked(
        self,
        values: Mapping[str, Any],
        key: str,
        shape: tuple[int, ...],
        what: str,
        dtype: np.dtype | None = None,
    ) -> np.ndarray:
        dtype = self.dtype if dtype is None else dtype
        try:
            array = values[key]
        except KeyError:
            msg = f"{key}: missing {what}."
            raise InputKeyError(msg) from None
        if not isinstance(array, np.ndarray):
            kind = type(array).__name__
            msg = f"{key}: expected a NumPy array for backend 'c', got {kind}."
            raise DtypeError(msg)
        if array.dtype != dtype:
            # Int data of another width is widened exactly; nothing else is cast.
            if not (dtype.kind == "i" and array.dtype.kind in "iu" and _fits(array)):
                msg = (
                    f"{key}: expected dtype {dtype.name}, got {array.dtype}. "
                    "Convert it with backend.array(...); nothing is cast silently."
                )
                raise DtypeError(msg)
            array = array.astype(dtype)
        if array.shape != shape:
            msg = f"{key}: expected shape {list(shape)}, got {list(array.shape)}."
            raise ShapeError(msg)
        if not (array.flags.c_contiguous and array.flags.aligned):
            array = np.ascontiguousarray(array)
        return array

    def _call(self, status: int) -> None:
        if status:
            msg = f"Backend 'c': {self.plan.errors[status - 1]}"
            raise KernelIndexError(msg)

    def _result(
        self, view: Any, inputs: list[Any], outputs: list[Any], seeds: list[Any]
    ) -> np.ndarray:
        if isinstance(view, tuple):
            kind, slot, shape = view
            if kind == "out":
                array = outputs[slot]
                if array is None:  # a second key for the same value gets a copy
                    return np.array(self._fresh[slot], copy=True).reshape(shape)
                outputs[slot] = None
                self._fresh[slot] = array
                return array.reshape(shape)
            source = inputs[slot] if kind == "io" else seeds[slot]
            return np.array(source, copy=True).reshape(shape)
        return view.copy()

    def _outputs(self, inputs: list[Any], outputs: list[Any]) -> dict[str, Any]:
        self._fresh = list(outputs)
        return {k: self._result(v, inputs, outputs, []) for k, v in self.output_views}

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        alive, outputs = self._bind(inputs)
        self._call(self.lib.mc_forward(self.io, self.ws))
        return self._outputs(alive, outputs)

    def forward_backward(
        self, inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        alive, fresh = self._bind(inputs)
        seeds: list[Any] = []
        for slot, (key, shape) in enumerate(
            zip(self.plan.seeds, self.plan.seed_shapes, strict=True)
        ):
            if key in output_gradients:
                array = self._checked(output_gradients, key, shape, "output gradient")
                self.og[slot] = self.ffi.from_buffer("real[]", array)
            else:
                array = self.zeros[: int(np.prod(shape))].reshape(shape)
                self.og[slot] = self.zero_buffer
            seeds.append(array)
        unknown = set(output_gradients) - set(self.plan.seeds)
        if unknown:
            msg = (
                f"output_gradients has keys {sorted(unknown)} that are not "
                f"differentiable outputs; expected a subset of {list(self.plan.seeds)}."
            )
            raise InputKeyError(msg)
        self._call(self.lib.mc_forward_train(self.io, self.ws))
        self._call(self.lib.mc_backward(self.io, self.og, self.ws))
        outputs = self._outputs(alive, fresh)
        grads = {
            k: None if v is None else self._result(v, alive, fresh, seeds)
            for k, v in self.grad_views
        }
        return outputs, grads


def _fits(array: np.ndarray) -> bool:
    return array.dtype.itemsize < 8 or array.dtype.kind == "i"
