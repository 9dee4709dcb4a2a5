"""The compiled model users evaluate."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mithril_core.backends.base import Backend, Evaluator, Program
from mithril_core.errors import (
    CompileError,
    DtypeError,
    IndexRangeError,
    InputKeyError,
    ShapeError,
)
from mithril_core.logical import types as ty
from mithril_core.logical.model import inspect_function
from mithril_core.physical import flat
from mithril_core.physical.flat import FlatGraph
from mithril_core.weights import DEFAULT_IGNORE, load_weights

_KIND = {"f": "float", "i": "int", "u": "int", "b": "bool"}


class PhysicalModel:
    """A model compiled for one backend: ``evaluate``, gradients and generated code."""

    def __init__(
        self,
        *,
        backend: Backend,
        graph: FlatGraph,
        path: str,
        program: Program,
        evaluator: Evaluator,
        trainable_keys: tuple[str, ...],
        state_keys: dict[str, float],
        data_keys: tuple[str, ...],
        file_path: str | None,
        inference: bool,
        float_bound: Mapping[str, str] | None = None,
    ) -> None:
        self.backend = backend
        self.graph = graph
        self.path = path  # the compiled model's path, for messages
        self.program = program
        self._evaluator = evaluator
        self.trainable_keys = trainable_keys
        self.state_keys = tuple(state_keys)
        self._state_init = state_keys
        self.data_keys = data_keys
        self.file_path = file_path
        self.inference = inference
        # Inputs that could be int but meet floats (key -> that call), for messages.
        self._float_bound = dict(float_bound or {})
        # Per tensor input: key, rank, exact shape, fixed (axis, size) pairs and
        # dtype names. Inputs with an exact shape and one dtype (parameters, most
        # data) are checked together: one list compare with ``array_info``'s answers.
        self._expected_keys = frozenset(graph.inputs)
        self._differentiable_outputs = frozenset(program.differentiable_outputs)
        self._checks: dict[str, tuple[Any, ...]] = {}
        self._exact_keys: list[str] = []
        self._exact: list[tuple[tuple[int | None, ...], str]] = []
        for key, value in graph.inputs.items():
            if not value.types <= ty.TENSORS:
                continue
            shape = value.shape()
            fixed = tuple((i, d) for i, d in enumerate(shape or ()) if d is not None)
            exact = tuple(shape) if shape is not None and None not in shape else None
            rank = None if shape is None else len(shape)
            dtypes = self._dtypes(value.types)
            self._checks[key] = (rank, exact, fixed, dtypes)
            if exact is not None and len(dtypes) == 1:
                self._exact_keys.append(key)
                self._exact.append((exact, next(iter(dtypes))))
        exact_keys = set(self._exact_keys)
        self._general = [key for key in self._checks if key not in exact_keys]
        # Int inputs that index (embedding ids, class targets): range-checked before
        # dispatch, since jitted backends cannot raise from inside the computation.
        self._index_checks = tuple(flat.index_checks(graph))
        # Per differentiable output: its rank (None: unknown) and the dims evaluate
        # can know before running (sizes, or dims of inputs), for output_gradients.
        self._gradient_shapes: dict[str, tuple[int | None, list[Any]]] = {}
        for key in program.differentiable_outputs:
            value = graph.outputs[key]
            shape = value.shape()
            if shape is None:
                self._gradient_shapes[key] = (None, [])
            else:
                self._gradient_shapes[key] = (
                    len(shape),
                    flat.shape_sources(graph, value),
                )

    # -- introspection -----------------------------------------------------------------
    @property
    def input_keys(self) -> tuple[str, ...]:
        """Every input: trainable parameters, state and data."""
        return self.program.input_keys

    @property
    def output_keys(self) -> tuple[str, ...]:
        return self.program.output_keys

    @property
    def code(self) -> str:
        """The generated source (exactly what ``file_path`` holds)."""
        return self.program.source

    @property
    def shapes(self) -> dict[str, list[int | None] | None]:
        """Shape of every input, output and internal named value (``None`` if not a
        tensor)."""
        result: dict[str, list[int | None] | None] = {}
        for key in (*self.input_keys, *self.output_keys):
            value = self.graph.inputs.get(key) or self.graph.outputs[key]
            result[key] = value.shape()
        for node in self.graph.nodes:
            result.setdefault(node.output.name, node.output.shape())
        return result

    def to_dot(self) -> str:
        """Graphviz DOT of the flat graph (inputs, primitive calls, outputs)."""
        dot: str = inspect_function("physical_to_dot")(self)
        return dot

    def summary(self) -> str:
        """A table of the compiled calls: op, shapes and estimated FLOPs, with the
        total, inputs, outputs and parameter count. Returned, not printed (as
        :meth:`Model.summary`)."""
        text: str = inspect_function("physical_summary")(self)
        return text

    def flop_counts(self) -> dict[str, int | None]:
        """Estimated FLOPs of each compiled call in one forward evaluation, by node
        path (``None`` where a shape is unknown); their sum is the summary's total."""
        counts: dict[str, int | None] = inspect_function("physical_flops")(self)
        return counts

    # -- parameters --------------------------------------------------------------------
    def randomize_params(self, seed: int = 0) -> dict[str, Any]:
        """Random values for every trainable key (and the initial value of every state
        key, e.g. running means 0 and variances 1), from one counter-based generator so
        the same seed gives the same numbers on every backend. Weights of rank >= 2 are
        uniform in ``±1/sqrt(fan_in)`` (PyTorch's Linear/Conv default), vectors likewise
        with the fan-in of their layer when known, else in ``±0.1``."""
        generator = np.random.Generator(np.random.Philox(seed))
        params: dict[str, Any] = {}
        unknown = []
        for key in self.trainable_keys:
            shape = self.graph.inputs[key].shape()
            dims = _known(shape)
            if dims is None:
                unknown.append(f"{key}: {shape}")
                continue
            fan_in = int(np.prod(dims[1:])) if len(dims) >= 2 else 0
            bound = 1.0 / np.sqrt(fan_in) if fan_in else 0.1
            values = generator.uniform(-bound, bound, size=dims)
            params[key] = self.backend.array(values, dtype=self.backend.dtype)
        for key, init in self._state_init.items():
            shape = self.graph.inputs[key].shape()
            dims = _known(shape)
            if dims is None:
                unknown.append(f"{key}: {shape}")
                continue
            params[key] = self.backend.array(
                np.full(dims, init), dtype=self.backend.dtype
            )
        if unknown:
            msg = (
                "Cannot randomize parameters whose shapes are not known: "
                + "; ".join(unknown)
                + ". Give their shapes (or the input shapes) to compile(shapes=...)."
            )
            raise ShapeError(msg)
        return params

    def load_weights(
        self,
        source: Mapping[str, Any] | str | os.PathLike[str],
        *,
        rename: Mapping[str, str] | Callable[[str], str | None] | None = None,
        strict: bool = True,
        ignore: tuple[str, ...] = DEFAULT_IGNORE,
    ) -> dict[str, Any]:
        """Params (every trainable and state key) from PyTorch-style weights: a mapping
        of tensors / arrays or a ``.safetensors`` / ``.pt`` file, keys mapped through
        ``rename`` and then ``.`` -> ``_``. Missing, unexpected and shape-mismatched
        keys are reported by name (an error when ``strict``, else a warning); source
        keys ending with a suffix in ``ignore`` are dropped. See
        :func:`mithril_core.weights.load_weights`."""
        return load_weights(self, source, rename=rename, strict=strict, ignore=ignore)

    # -- evaluation --------------------------------------------------------------------
    def evaluate(
        self,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        output_gradients: Mapping[str, Any] | None = None,
    ) -> Any:
        """Run the model. Returns the outputs dict, or ``(outputs, gradients)`` when
        ``output_gradients`` (output key -> gradient array) is given.

        Before the backend runs, every input is checked (keys, array type, shape,
        dtype: nothing is cast or broadcast silently), every output gradient likewise
        (shape and dtype of its output), and int inputs that index (embedding ids,
        class targets, also through reshape/flatten/transpose/indexing) must lie in
        ``[0, size)``: else :class:`~mithril_core.errors.IndexRangeError` names the
        key. Indices computed inside the model are checked by the NumPy and C kernels
        and by torch; JAX and MLX cannot raise there (see their backends)."""
        inputs: dict[str, Any] = {}
        if params:
            inputs.update(params)
        if data:
            inputs.update(data)
        self._check_inputs(inputs)
        if self._index_checks:
            self._check_indices(inputs)
        if output_gradients is not None:
            if self.inference:
                msg = (
                    "This model was compiled with inference=True: it has no gradients."
                )
                raise ValueError(msg)
            if not output_gradients.keys() <= self._differentiable_outputs:
                unknown = set(output_gradients) - self._differentiable_outputs
                msg = (
                    f"output_gradients has keys {sorted(unknown)} that are not "
                    f"differentiable outputs; expected a subset of "
                    f"{list(self.program.differentiable_outputs)}."
                )
                raise InputKeyError(msg)
            self._check_output_gradients(inputs, output_gradients)
            outputs, grads = self._evaluator(inputs, output_gradients)
            assert grads is not None
            for key, grad in grads.items():
                if grad is None:
                    info = self.backend.array_info(inputs[key])
                    assert info is not None  # inputs were checked to be arrays
                    grads[key] = self.backend.zeros(*info[0])
            return outputs, grads
        outputs, _ = self._evaluator(inputs, None)
        return outputs

    def _dtypes(self, types: frozenset[str]) -> frozenset[str]:
        names: set[str] = set()
        if ty.TENSOR_FLOAT in types:
            names.add(self.backend.dtype.name)
        if ty.TENSOR_INT in types:
            names.update({"int8", "int16", "int32", "int64", "uint8"})
        if ty.TENSOR_BOOL in types:
            names.add("bool")
        return frozenset(names)

    def _check_inputs(self, inputs: dict[str, Any]) -> None:
        if inputs.keys() != self._expected_keys:
            self._raise_keys(inputs)
        info = self.backend.array_info
        if [info(inputs[key]) for key in self._exact_keys] != self._exact:
            for key in self._exact_keys:
                self._check_input(key, inputs[key])
        for key in self._general:
            self._check_input(key, inputs[key])

    def _check_input(self, key: str, value: Any) -> None:
        rank, exact, fixed, dtypes = self._checks[key]
        found = self.backend.array_info(value)
        if found is None:
            msg = (
                f"{key}: expected a {self.backend.name} array, got "
                f"{type(value).__name__}. Use backend.array(...)."
            )
            raise DtypeError(msg)
        shape, dtype = found
        if exact is not None:
            bad_shape = shape != exact
        elif rank is not None:
            bad_shape = len(shape) != rank or any(shape[i] != d for i, d in fixed)
        else:
            bad_shape = False
        if bad_shape:
            expected = self.graph.inputs[key].shape()
            msg = (
                f"{key}: expected shape {expected}, got {list(shape)}. "
                "Nothing is broadcast silently."
            )
            raise ShapeError(msg)
        if dtype not in dtypes:
            self._raise_dtype(key, dtype)

    def _check_output_gradients(
        self, inputs: dict[str, Any], output_gradients: Mapping[str, Any]
    ) -> None:
        info = self.backend.array_info
        for key, grad in output_gradients.items():
            if grad is None:  # no gradient flows from this output
                continue
            where = f"output_gradients[{key!r}]"
            found = info(grad)
            if found is None:
                msg = (
                    f"{where}: expected a {self.backend.name} array, got "
                    f"{type(grad).__name__}. Use backend.array(...)."
                )
                raise DtypeError(msg)
            shape, dtype = found
            rank, sources = self._gradient_shapes[key]
            expected: list[int | None] = []
            for source in sources:
                if isinstance(source, tuple):
                    source = info(inputs[source[0]])[0][source[1]]  # type: ignore[index]
                expected.append(source)
            if rank is not None and (
                len(shape) != rank
                or any(e not in (None, d) for e, d in zip(expected, shape, strict=True))
            ):
                msg = (
                    f"{where}: expected the shape of output {key!r}, {expected}, got "
                    f"{list(shape)}. Nothing is broadcast silently."
                )
                raise ShapeError(msg)
            if dtype != self.backend.dtype.name:
                msg = (
                    f"{where}: expected dtype {self.backend.dtype.name}, got {dtype}. "
                    "Convert it with backend.array(...); nothing is cast silently."
                )
                raise DtypeError(msg)

    def _check_indices(self, inputs: dict[str, Any]) -> None:
        for check in self._index_checks:
            values = inputs[check.key]
            shape = self.backend.array_info(values)[0]  # type: ignore[index]
            if 0 in shape:
                continue
            low, high = self.backend.index_range(values)
            bound = check.bound
            if not isinstance(bound, int):
                key, axis = bound
                bound = self.backend.array_info(inputs[key])[0][axis]  # type: ignore[index]
            first = -bound if check.negative else 0
            if low < first or high >= bound:
                rule = (
                    "negative indices count from the end"
                    if check.negative
                    else "negative indices do not count from the end"
                )
                msg = (
                    f"{check.key}: {check.what} must be in [{first}, {bound}), got min "
                    f"{low} max {high} ({check.path} indexes the {bound} "
                    f"{check.indexed}; {rule}). Fix the data."
                )
                raise IndexRangeError(msg)

    def _raise_keys(self, inputs: dict[str, Any]) -> None:
        missing = [k for k in self.graph.inputs if k not in inputs]
        extra = [k for k in inputs if k not in self._expected_keys]
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if extra:
            parts.append(f"unexpected keys {extra}")
        msg = (
            "evaluate(): " + " and ".join(parts) + f". Expected exactly "
            f"{list(self.graph.inputs)} (params: {list(self.trainable_keys)}, data: "
            f"{list(self.data_keys)})."
        )
        raise InputKeyError(msg)

    def _raise_dtype(self, key: str, dtype: str) -> None:
        types = self.graph.inputs[key].types
        kind = _dtype_kind(dtype)
        if key in self._float_bound and kind != "float":
            msg = (
                f"{key}: expected dtype {self.backend.dtype.name}, got {dtype}: {key} "
                f"meets float values at {self._float_bound[key]}, so it is a float "
                f"input. Convert the data with backend.array(..., dtype="
                f"{self.backend.dtype.name!r}), or declare the input int with "
                f"IOKey({key!r}, type=Tensor[int]) (from mithril_core.models) to have "
                f"it converted in the compiled code; nothing is cast silently."
            )
        elif f"Tensor[{kind}]" not in types:
            msg = f"{key}: expected a {ty.format_type(types)} array, got dtype {dtype}."
        else:
            msg = (
                f"{key}: expected dtype {self.backend.dtype.name}, got {dtype}. "
                "Convert it with backend.array(...); nothing is cast silently."
            )
        raise DtypeError(msg)

    def __repr__(self) -> str:
        return (
            f"<PhysicalModel {self.path} on {self.backend!r}: "
            f"inputs={list(self.input_keys)}, outputs={list(self.output_keys)}>"
        )

    def export_c(
        self,
        directory: str | os.PathLike[str],
        params: Mapping[str, Any],
        *,
        inputs: tuple[str, ...] | None = None,
    ) -> Any:
        """Write this model as standalone C (no Python at run time) into
        ``directory``: ``model.c``, ``model.h`` (create / input / run / output /
        free), the kernels, a weights file holding ``params`` and a Makefile.
        Inference forward only, for the compiled shapes; only the C backend exports.

        :param directory: created if missing.
        :param params: values of every input that is not a run-time input (the
            parameters given to ``evaluate``).
        :param inputs: the run-time inputs; default ``data_keys``.
        :returns: the backend's description of the export (files, inputs, outputs,
            build command)."""
        export = getattr(self.backend, "export_c", None)
        if export is None:
            msg = (
                f"export_c: backend {self.backend.name!r} cannot export standalone C; "
                "compile the model with ml.backend('c') (pip install mithril-c) and "
                "export that."
            )
            raise CompileError(msg)
        return export(self, directory, params, inputs=inputs)

    def to_onnx(
        self,
        path: str | os.PathLike[str] | None = None,
        params: Mapping[str, Any] | None = None,
        *,
        params_as_inputs: bool = False,
        input_dtypes: Mapping[str, Any] | None = None,
    ) -> Any:
        """Export the compiled forward graph as an ONNX model (the newest opset the
        installed ``onnx`` supports) and write it to ``path`` when given.

        Inputs and outputs are named by the model's keys; unknown dims are symbolic
        (``batch`` for a first dim). Parameters and state (every key of
        ``trainable_keys`` and ``state_keys``) are initializers holding ``params``,
        in the backend's float dtype, or graph inputs with ``params_as_inputs=True``
        (then give no ``params``). An input the model allows as several kinds
        (float, int, bool) is exported as the first of those it allows, unless
        ``input_dtypes`` (key -> NumPy dtype) says. Needs the ``mithril-onnx``
        plugin.

        :returns: the ``onnx.ModelProto``.
        :raises MissingLoweringError: naming each primitive (and its model path)
            that has no ONNX lowering or that ONNX cannot express."""
        from mithril_core.errors import MissingBackendError

        try:
            from mithril_onnx.export import export_model
        except ImportError as exc:
            msg = (
                "to_onnx needs the mithril-onnx plugin: python -m pip install -e "
                f"./plugins/mithril_onnx (or pip install mithril-onnx); {exc}"
            )
            raise MissingBackendError(msg) from exc
        return export_model(
            self,
            None if path is None else os.fspath(path),
            params=params,
            params_as_inputs=params_as_inputs,
            input_dtypes=input_dtypes,
        )


def _dtype_kind(name: str) -> str:
    if "float" in name:
        return "float"
    if name == "bool":
        return "bool"
    return "int"


def _known(shape: list[int | None] | None) -> tuple[int, ...] | None:
    """``shape`` as a tuple when every dim is known, else ``None``."""
    if shape is None:
        return None
    dims = tuple(d for d in shape if d is not None)
    return dims if len(dims) == len(shape) else None
