"""C backend: arrays are NumPy arrays; each compiled model is generated C (cffi).

Runtime contract (documented for users):

- Inputs must match the compiled shapes and dtypes exactly (checked in Python before
  any C runs): float tensors the backend dtype, bool tensors bool, int tensors int64
  (narrower ints are widened exactly, in a copy). Non-contiguous or misaligned arrays
  are copied to a contiguous array first; contiguous ones are passed to C without
  copying.
- Shapes (or tensor dtype kinds) the compile could not infer are taken from the first
  evaluate: the C code is generated and built then, once per distinct set of input
  shapes and dtype kinds (each cached). Until then ``pm.code`` says so; afterwards it
  holds the latest specialisation's source (also written to ``file_path``).
- Outputs and gradients are NumPy arrays no other live result shares: the C writes
  them where they are returned (values only the workspace holds are copied out). A
  big one (64 KiB or more) that the caller has dropped, with every view of it, is
  written into again by a later call instead of new memory (no page faults, no copy
  of a training step's gradients).
- Threads may evaluate one compiled model at once: each concurrent call gets a
  workspace of its own (allocated on first need, then reused; a lone caller reuses
  one) and the C runs without the GIL. A model whose workspace keeps state between
  calls (dropout's RNG) has one workspace, and its calls take turns.
- Missing output gradients count as zeros.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from mithril_core.backends.base import Backend, Evaluator, Program
from mithril_core.dtypes import Dtype
from mithril_core.errors import CompileError, DtypeError, InputKeyError, ShapeError
from mithril_core.logical.model import solve

_DTYPE_NAMES = {
    np.dtype(name): name
    for name in ("float16", "float32", "float64", "int8", "int16", "int32", "int64")
    + ("uint8", "bool")
}
_REAL = {"float32": "float", "float64": "double"}
_SPECIALIZING = threading.Lock()


class CBackend(Backend):
    """Runs compiled models as generated C (cffi, OpenBLAS) on the CPU.

    :param dtype: ``float32`` or ``float64``: the element type of every tensor the
        compiled C touches.
    :param extra_cflags: additional compiler flags (e.g. sanitizers); part of the cache
        key. ``extra_ldflags`` likewise for the link.
    :param threads: how many threads one evaluate may use (OpenMP teams in the kernels
        and generated loops; matrix products are split into one OpenBLAS call per
        thread). ``None``: ``$MITHRIL_C_THREADS``, else the number of physical cores
        this process may run on. Concurrent evaluates share them out. Work is split
        over independent outputs only (no sum is split), so results match one
        thread's up to the rounding of matrix products split into blocks.
    """

    name = "c"
    has_autograd = False
    supports_jit = False
    supported_dtypes = frozenset(
        {"float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"}
    )

    def __init__(
        self,
        device: str = "cpu",
        dtype: Dtype | str = "float32",
        *,
        extra_cflags: tuple[str, ...] = (),
        extra_ldflags: tuple[str, ...] = (),
        threads: int | None = None,
    ) -> None:
        if device != "cpu":
            msg = f"CBackend runs on 'cpu' only, not {device!r}."
            raise CompileError(msg)
        super().__init__(device=device, dtype=dtype)
        if self.dtype.name not in _REAL:
            msg = (
                f"CBackend computes in float32 or float64, not {self.dtype.name!r}; "
                "pass dtype=ml.float32 or ml.float64."
            )
            raise DtypeError(msg)
        self.extra_cflags = tuple(extra_cflags)
        self.extra_ldflags = tuple(extra_ldflags)
        self.threads = _threads(threads)

    def array(self, data: Any, dtype: Dtype | str | None = None) -> np.ndarray:
        if hasattr(data, "detach"):  # a torch tensor handed over directly
            data = data.detach().cpu().numpy()
        result = np.array(data)
        if dtype is not None:
            return result.astype(self._check_dtype(dtype).name)
        if result.dtype.kind == "f":
            return result.astype(self.dtype.name)
        if result.dtype.kind in "iu" and result.dtype != np.int64:
            return result.astype(np.int64)
        return result

    def to_numpy(self, array: Any) -> np.ndarray:
        return np.asarray(array)

    def array_info(self, value: Any) -> tuple[tuple[int, ...], str] | None:
        if isinstance(value, np.ndarray):
            dtype = value.dtype
            name = _DTYPE_NAMES.get(dtype)
            return value.shape, name if name is not None else dtype.name
        return None

    def build_program(
        self,
        graph: Any,
        lowerings: Mapping[str, Any],
        *,
        grad_keys: tuple[str, ...],
        differentiable_outputs: tuple[str, ...],
        inference: bool,
        file_path: str | None,
    ) -> Program:
        from mithril_c._emit import comment_text
        from mithril_c._plan import unresolved
        from mithril_c._specialize import assumed, specialize

        # compile restricts the trainable inputs to float tensors last: propagate it.
        solve()
        options = {
            "grad_keys": grad_keys,
            "differentiable_outputs": differentiable_outputs,
            "inference": inference,
        }
        lazy = _Specializations(self, graph, lowerings, options, file_path)
        program = lazy.program = Program(
            forward=lazy.forward,
            forward_backward=None if inference else lazy.forward_backward,
            input_keys=tuple(graph.inputs),
            output_keys=tuple(graph.outputs),
            grad_keys=grad_keys,
            differentiable_outputs=differentiable_outputs,
        )
        # Inputs that may hold several tensor kinds are compiled as floats (else ints);
        # an array of another kind gets its own specialisation at evaluate.
        kinds, ambiguous = assumed(graph)
        known = tuple(k for k in kinds if k is not None)
        specialised = graph
        if ambiguous and len(known) == len(kinds):
            try:
                specialised = specialize(graph, lazy.keys, known)
            except ShapeError:
                # The assumed kinds contradict the graph (ids that reach an embedding
                # through an add are int): generate from the data's kinds instead.
                specialised = graph
        unknown = unresolved(specialised, lowerings)
        if not unknown:
            lazy.default = self._runtime(specialised, lowerings, options, file_path)
            lazy.ambiguous = [
                (key, kinds, lazy.default.items[lazy.keys.index(key)][2].kind)
                for key, kinds in ambiguous.items()
            ]
            program.source = lazy.default.plan.source
            if not ambiguous:  # the runtime's own checks suffice: no wrapper
                program.forward = lazy.default.forward
                if not inference:
                    program.forward_backward = lazy.default.forward_backward
                return program
        else:
            listed = comment_text(", ".join(unknown[:8]))
            program.source = (
                "/* mithril_c: not generated yet. The shapes or dtypes of "
                f"{listed}{' ...' if len(unknown) > 8 else ''} are "
                "known only from the data: the C code is generated (and built) at the "
                "first evaluate, once per set of input shapes and dtypes; this then "
                "holds the latest. Give compile(shapes=...) to generate it at compile "
                "time. */\n"
            )
            if file_path is not None:
                _write(file_path, program.source)
        return program

    def _runtime(
        self,
        graph: Any,
        lowerings: Mapping[str, Any],
        options: Mapping[str, Any],
        file_path: str | None,
    ) -> Any:
        from mithril_c._build import build
        from mithril_c._codegen import generate
        from mithril_c._runtime import Runtime

        real = _REAL[self.dtype.name]
        plan = generate(
            graph, dict(lowerings), real=real, threads=self.threads, **options
        )
        if file_path is not None:
            _write(file_path, plan.source)
        module, _ = build(
            plan.source,
            real=real,
            functions=plan.functions,
            extra_cflags=self.extra_cflags,
            extra_ldflags=self.extra_ldflags,
        )
        return Runtime(module, plan, np.dtype(self.dtype.name), self.threads)

    def build_evaluator(self, program: Program, *, jit: bool) -> Evaluator:
        forward = program.forward
        forward_backward = program.forward_backward

        def evaluate(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
            if output_gradients is None:
                return forward(inputs), None
            if forward_backward is None:
                msg = (
                    "This model was compiled with inference=True: it has no gradients."
                )
                raise ValueError(msg)
            return forward_backward(inputs, output_gradients)

        return evaluate

    def export_c(
        self,
        model: Any,
        directory: str | os.PathLike[str],
        params: Mapping[str, Any],
        *,
        inputs: tuple[str, ...] | None = None,
    ) -> Any:
        """Write ``model`` (compiled for this backend, every shape known) as
        standalone C into ``directory``: ``model.c`` (the generated forward and the
        API), ``model.h`` (the documented API: ``model_create(weights_path)``,
        ``model_input``, ``model_run``, ``model_output``, ``model_free``), the
        kernels, ``model.weights`` (``params`` and the model's constants) and a
        ``Makefile`` linking OpenBLAS. Inference forward only; nothing of Python or
        cffi runs in the result.

        :param model: the compiled model (``pm``).
        :param directory: created if missing; the files above are overwritten.
        :param params: a value for every input that is not a run-time input (the
            parameters given to ``evaluate``), stored in the weights file.
        :param inputs: the run-time inputs, set through ``model_input`` before each
            ``model_run``; default the compile's ``data_keys``.
        :returns: a :class:`mithril_c._export.CExport`: the files, the inputs and
            outputs (names, shapes, dtypes) and the one ``cc`` command.
        """
        from mithril_c._export import export

        return export(self, model, directory, params, inputs)


class _Specializations:
    """Generates, builds and caches the C code per input signature (shapes and dtype
    kinds) of a model whose shapes or dtypes are known only at evaluate."""

    def __init__(
        self,
        backend: CBackend,
        graph: Any,
        lowerings: Mapping[str, Any],
        options: Mapping[str, Any],
        file_path: str | None,
    ) -> None:
        self.backend = backend
        self.graph = graph
        self.lowerings = lowerings
        self.options = options
        self.file_path = file_path
        self.program: Program
        self.keys = tuple(graph.inputs)
        self.runtimes: dict[Any, Any] = {}
        self.default: Any = None
        # (key, the dtype kinds it takes, the kind the default runtime takes)
        self.ambiguous: list[tuple[str, frozenset[str], str]] = []

    def _other_kind(self, inputs: Mapping[str, Any]) -> bool:
        """Whether an input of several possible kinds got an array of a kind other
        than the default runtime's."""
        for key, kinds, expected in self.ambiguous:
            array = inputs.get(key)
            if isinstance(array, np.ndarray):
                kind = array.dtype.kind
                if kind != expected and kind in kinds:
                    return True
        return False

    def _runtime(self, inputs: Mapping[str, Any]) -> Any:
        from mithril_c._specialize import signature, specialize

        for key in self.keys:
            if key not in inputs:
                msg = f"{key}: missing input."
                raise InputKeyError(msg)
            if not isinstance(inputs[key], np.ndarray):
                kind = type(inputs[key]).__name__
                msg = f"{key}: expected a NumPy array for backend 'c', got {kind}."
                raise DtypeError(msg)
        sig = signature(self.keys, inputs)
        runtime = self.runtimes.get(sig)
        if runtime is None:
            # Threads meeting a new signature at once build it once; specialising
            # re-solves shared logical-model state.
            with _SPECIALIZING:
                runtime = self.runtimes.get(sig)
                if runtime is None:
                    graph = specialize(self.graph, self.keys, sig)
                    runtime = self.backend._runtime(
                        graph, self.lowerings, self.options, self.file_path
                    )
                    self.runtimes[sig] = runtime
        return self._show(runtime)

    def _show(self, runtime: Any) -> Any:
        """Make ``runtime``'s source the one ``pm.code`` (and ``file_path``) hold."""
        if self.program.source is not runtime.plan.source:
            self.program.source = runtime.plan.source
            if self.file_path is not None:
                _write(self.file_path, runtime.plan.source)
        return runtime

    def _select(self, inputs: Mapping[str, Any]) -> Any:
        if self.default is not None and not self._other_kind(inputs):
            return self._show(self.default)
        return self._runtime(inputs)

    def forward(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        return self._select(inputs).forward(inputs)

    def forward_backward(
        self, inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        runtime = self._select(inputs)
        return runtime.forward_backward(inputs, output_gradients)


def _threads(threads: int | None) -> int:
    """The thread count: ``threads``, else ``$MITHRIL_C_THREADS``, else the physical
    cores this process may run on."""
    import os

    where, given = "CBackend(threads=...)", repr(threads)
    if threads is None:
        text = os.environ.get("MITHRIL_C_THREADS", "").strip()
        if not text:
            return physical_cores()
        where, given = "MITHRIL_C_THREADS", repr(text)
        threads = int(text) if text.isdigit() else 0
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        msg = (
            f"{where}: expected a whole number of threads >= 1, got {given}; "
            "unset it (or pass threads=None) for one per physical core."
        )
        raise CompileError(msg)
    return threads


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on: distinct (package,
    core) pairs in /sys/devices/system/cpu/cpu<N>/topology. Where that is not
    readable (not Linux, a restricted /sys), every allowed logical CPU counts."""
    import os

    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in allowed:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id", encoding="ascii") as handle:
                package = handle.read().strip()
            with open(f"{topology}/core_id", encoding="ascii") as handle:
                core = handle.read().strip()
        except OSError:
            return len(allowed) or 1
        cores.add((package, core))
    return len(cores) or 1


def _write(file_path: str, source: str) -> None:
    import os

    directory = os.path.dirname(os.path.abspath(file_path))
    os.makedirs(directory, exist_ok=True)
    with open(file_path, "w", encoding="utf-8") as handle:
        handle.write(source)


__all__ = ["CBackend"]
