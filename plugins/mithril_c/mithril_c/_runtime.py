"""Calls into one compiled model: checks, pointer tables, workspace, result arrays."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from mithril_c._plan import Loc, Plan
from mithril_core.errors import DtypeError, IndexRangeError, InputKeyError, ShapeError

_ALIGN_BYTES = 64


class KernelIndexError(IndexRangeError):
    """A kernel of the compiled C met an index out of range (embedding rows,
    cross-entropy classes); nothing was written to the caller's arrays."""


def _references(items: list[Any], i: int) -> int:
    """The reference count of ``items[i]`` as this call sees it (the argument's own
    reference included, or not, by the interpreter's rules)."""
    return sys.getrefcount(items[i])


# What _references says of an object only a list holds, measured through the same
# code (interpreters differ: 3.14 may not count the argument); None where there are
# no reference counts (nothing is then reused).
_ALONE = _references([object()], 0) if hasattr(sys, "getrefcount") else None


class _Recycler:
    """The arrays calls return, one kind per result. A big one (``smallest`` bytes or
    more) is written into again by a later call once no caller holds it or a view of
    it (its reference count says so), instead of a fresh one: a training step's
    gradients are then written where they are returned, with no copy and no page
    faults for new memory. At most ``keep`` arrays per result are kept (a caller
    holding the results of two calls in a row still reuses); when all are held, the
    newest replaces one (results a caller keeps for good leave with the caller).
    Small ones are fresh each call (cheaper than the checks)."""

    def __init__(
        self,
        specs: Sequence[tuple[tuple[int, ...], np.dtype]],
        keep: int = 2,
        smallest: int = 1 << 16,
    ) -> None:
        self.specs = tuple(
            (shape, dtype, math.prod(shape) * dtype.itemsize >= smallest)
            for shape, dtype in specs
        )
        self.recycles = _ALONE is not None and any(big for _, _, big in self.specs)
        self.kept: list[list[np.ndarray]] = [[] for _ in self.specs]
        self.keep = keep
        self.lock = threading.Lock()

    def take(self) -> list[np.ndarray]:
        """An array per result, nobody else's until :meth:`give` hands it back."""
        if not self.recycles:
            return [np.empty(shape, dtype=dtype) for shape, dtype, _ in self.specs]
        taken = []
        with self.lock:
            for (shape, dtype, big), kept in zip(self.specs, self.kept, strict=True):
                for i in range(len(kept) if big else 0):
                    # Referenced by ``kept`` only (and as made: a caller may have
                    # set its shape or flags in place).
                    if _references(kept, i) == _ALONE and _pristine(
                        kept[i], shape, dtype
                    ):
                        taken.append(kept.pop(i))
                        break
                else:
                    taken.append(np.empty(shape, dtype=dtype))
        return taken

    def give(self, arrays: Sequence[np.ndarray]) -> None:
        """Keep the big ones of ``arrays`` (once returned, they are reused when the
        caller drops them)."""
        if not self.recycles:
            return
        with self.lock:
            for array, (_, _, big), kept in zip(
                arrays, self.specs, self.kept, strict=True
            ):
                if not big:
                    continue
                if len(kept) < self.keep:
                    kept.append(array)
                    continue
                for i in range(len(kept)):
                    if _references(kept, i) != _ALONE:  # a caller holds it
                        kept[i] = array
                        break


class _Handout:
    """Arrays a call wrote into, each handed to the caller once, then copied."""

    __slots__ = ("arrays", "given")

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.given = [False] * len(arrays)

    def hand_out(self, slot: int, shape: tuple[int, ...]) -> np.ndarray:
        array = self.arrays[slot]
        if self.given[slot]:
            return np.array(array, copy=True).reshape(shape)
        self.given[slot] = True
        return array if array.shape == shape else array.reshape(shape)


class _Context:
    """What one call writes: the workspace, the pointer tables and the views of the
    workspace that results are copied from. A call holds a context to itself."""

    def __init__(self, runtime: Runtime) -> None:
        plan, ffi, dtype = runtime.plan, runtime.ffi, runtime.dtype
        # One aligned block; zero pages are only touched when written.
        raw = np.zeros(plan.workspace + _ALIGN_BYTES, dtype=dtype)
        skip = (-raw.ctypes.data % _ALIGN_BYTES) // dtype.itemsize
        self.workspace = raw[skip : skip + plan.workspace]
        self.ws = ffi.from_buffer("real[]", self.workspace)
        self.io = ffi.new(
            "real *[]", max(runtime.first_constant + len(plan.constants), 1)
        )
        for slot, buffer in enumerate(runtime.keep, start=runtime.first_constant):
            self.io[slot] = buffer
        self.og = ffi.new("real *[]", max(len(plan.seeds) + len(plan.result_shapes), 1))
        self.output_views = [
            (key, runtime.view(self.workspace, where))
            for key, where in plan.outputs.items()
        ]
        self.grad_views = [
            (key, None if where is None else runtime.view(self.workspace, where))
            for key, where in plan.grads.items()
        ]


class Runtime:
    """Calls into one compiled model; safe to use from several threads at once.

    Each call takes a context (workspace and pointer tables) from a pool and gives it
    back: concurrent calls get their own (allocated on demand, then kept), a lone
    caller reuses one. The C runs without the GIL. A model whose workspace holds
    state between calls (a dropout RNG) has one context and its calls take turns.
    """

    def __init__(
        self, module: ModuleType, plan: Plan, dtype: np.dtype, threads: int = 1
    ) -> None:
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
        self.first_output = len(plan.input_keys)
        self.first_constant = self.first_output + len(plan.output_shapes)
        self.constants = [np.ascontiguousarray(c) for c in plan.constants]
        self.keep = [self._pointer(c) for c in self.constants]
        self.outputs_spec = tuple(
            (shape, np.dtype(name), np.dtype(name) == dtype)
            for shape, name in zip(plan.output_shapes, plan.output_dtypes, strict=True)
        )
        self.produced = _Recycler([(shape, dt) for shape, dt, _ in self.outputs_spec])
        self.gradients = _Recycler([(shape, dtype) for shape in plan.result_shapes])
        largest = max((int(np.prod(s)) for s in plan.seed_shapes), default=0)
        # Missing output gradients read these zeros; the C never writes to og[].
        self.zeros = np.zeros(max(largest, 1), dtype=dtype)
        self.zeros.flags.writeable = False
        self.zero_buffer = self._pointer(self.zeros)
        self.pool = [_Context(self)]
        self.contexts = len(self.pool)
        self.turns = threading.Lock() if plan.stateful else None
        self.threads = threads
        self.set_threads = self.lib.mc_set_threads

    def _acquire(self) -> _Context:
        """A context for this call; also sets the calling thread's team size: the
        model's threads, shared out among the calls in flight (so that concurrent
        callers do not oversubscribe the cores)."""
        if self.turns is not None:
            self.turns.acquire()
            self.set_threads(self.threads)
            return self.pool[0]
        try:
            context = self.pool.pop()  # atomic under the GIL
        except IndexError:
            context = _Context(self)
            self.contexts += 1
        # A snapshot, not a lock: a stale count only shifts threads between calls.
        busy = max(self.contexts - len(self.pool), 1)
        self.set_threads(max(self.threads // busy, 1))
        return context

    def _release(self, context: _Context) -> None:
        if self.turns is not None:
            self.turns.release()
        else:
            self.pool.append(context)

    def view(
        self,
        workspace: np.ndarray,
        where: tuple[Loc, tuple[int, ...], str] | np.ndarray,
    ) -> Any:
        """A workspace or constant view, or (kind, slot, shape) resolved per call."""
        if isinstance(where, np.ndarray):
            return where
        loc, shape, dtype = where
        if loc.kind == "ws":
            size = int(np.prod(shape))
            start = loc.index * self.dtype.itemsize
            data = workspace.view(np.uint8)[start:]
            return data[: size * np.dtype(dtype).itemsize].view(dtype).reshape(shape)
        if loc.kind == "io" and loc.index >= self.first_constant:
            return self.constants[loc.index - self.first_constant].reshape(shape)
        if loc.kind == "io" and loc.index >= self.first_output:
            return ("out", loc.index - self.first_output, shape)
        return (loc.kind, loc.index, shape)

    def _bind(
        self, context: _Context, inputs: Mapping[str, Any], outputs: list[np.ndarray]
    ) -> list[Any]:
        """Check every input and point io[] at the inputs and ``outputs``. The
        arrays returned must stay alive until the C call returns."""
        alive = []
        io = context.io
        from_buffer = self.ffi.from_buffer
        for slot, (key, shape, dtype, real) in enumerate(self.items):
            array = self._checked(inputs, key, shape, "input", dtype)
            alive.append(array)
            io[slot] = from_buffer("real[]", array) if real else self._pointer(array)
        first = self.first_output
        for slot, (array, (_, _, real)) in enumerate(
            zip(outputs, self.outputs_spec, strict=True), start=first
        ):
            io[slot] = from_buffer("real[]", array) if real else self._pointer(array)
        return alive

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
        self,
        view: Any,
        inputs: list[Any],
        produced: _Handout,
        seeds: list[Any],
        written: _Handout | None = None,
    ) -> np.ndarray:
        """The array returned for one key: arrays the C wrote into (``produced``,
        ``written``) as they are, once; a copy for a second key of the same value,
        and for anything read from an input, an output gradient or the workspace."""
        if not isinstance(view, tuple):
            return view.copy()
        kind, slot, shape = view
        if kind == "out":
            return produced.hand_out(slot, shape)
        if kind == "og" and slot >= len(seeds):
            assert written is not None
            return written.hand_out(slot - len(seeds), shape)
        source = inputs[slot] if kind == "io" else seeds[slot]
        return np.array(source, copy=True).reshape(shape)

    def _outputs(
        self, context: _Context, inputs: list[Any], produced: _Handout
    ) -> dict[str, Any]:
        return {
            k: self._result(v, inputs, produced, []) for k, v in context.output_views
        }

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        context = self._acquire()
        produced = self.produced.take()
        try:
            alive = self._bind(context, inputs, produced)
            self._call(self.lib.mc_forward(context.io, context.ws))
            return self._outputs(context, alive, _Handout(produced))
        finally:
            self.produced.give(produced)
            self._release(context)

    def forward_backward(
        self, inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        unknown = set(output_gradients) - set(self.plan.seeds)
        if unknown:
            msg = (
                f"output_gradients has keys {sorted(unknown)} that are not "
                f"differentiable outputs; expected a subset of {list(self.plan.seeds)}."
            )
            raise InputKeyError(msg)
        context = self._acquire()
        produced = self.produced.take()
        written = self.gradients.take()
        try:
            alive = self._bind(context, inputs, produced)
            first = len(self.plan.seeds)
            for slot, array in enumerate(written, start=first):
                context.og[slot] = self.ffi.from_buffer("real[]", array)
            seeds: list[Any] = []
            for slot, (key, shape) in enumerate(
                zip(self.plan.seeds, self.plan.seed_shapes, strict=True)
            ):
                if key in output_gradients:
                    array = self._checked(
                        output_gradients, key, shape, "output gradient"
                    )
                    context.og[slot] = self.ffi.from_buffer("real[]", array)
                else:
                    array = self.zeros[: int(np.prod(shape))].reshape(shape)
                    context.og[slot] = self.zero_buffer
                seeds.append(array)
            self._call(self.lib.mc_forward_train(context.io, context.ws))
            self._call(self.lib.mc_backward(context.io, context.og, context.ws))
            handout = _Handout(produced)
            outputs = self._outputs(context, alive, handout)
            returned = _Handout(written)
            grads = {
                k: None
                if v is None
                else self._result(v, alive, handout, seeds, returned)
                for k, v in context.grad_views
            }
            return outputs, grads
        finally:
            self.produced.give(produced)
            self.gradients.give(written)
            self._release(context)


def _pristine(array: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> bool:
    flags = array.flags
    return (
        array.shape == shape
        and array.dtype == dtype
        and flags.writeable
        and flags.c_contiguous
    )


def _fits(array: np.ndarray) -> bool:
    return array.dtype.itemsize < 8 or array.dtype.kind == "i"
