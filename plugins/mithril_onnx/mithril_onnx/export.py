"""Export a compiled model's flat graph to an ONNX ``ModelProto``.

**The ONNX lowering form.** ``mithril_lowerings("onnx")`` returns ``{op_name: fn}``
where ``fn(g, *inputs)`` takes the primitive's inputs in the order of its terminals
(as every other backend's forward does) and returns the output:

- ``g`` is the :class:`OnnxBuilder` of the export: ``g.op(op_type, *inputs, **attrs)``
  adds one ONNX node and returns its output :class:`Sym` (``outputs=n`` for several),
  ``g.const(value)`` adds an initializer, ``g.cast``, ``g.floats``, ``g.promote``,
  ``g.ints`` and ``g.dims`` cover the usual chores, and ``g.fail(reason)`` raises the
  export error naming the primitive and its model path.
- A tensor input arrives as a :class:`Sym` (``.name``, ``.dtype`` a NumPy dtype,
  ``.shape`` with ``None`` for unknown dims, or ``None`` when even the rank is
  unknown). Compile-time constants arrive as Python values (axes, shapes, dtype
  names) or NumPy arrays; ``g.op`` turns arrays and numbers it is given into
  initializers of the right dtype, so ``g.op("Add", x, 2.0)`` works.
- Values that are Python containers in the model (``split`` results, ``to_list``,
  the dims of ``shape``) are Python lists/tuples of ``Sym`` and ints.

Example, a third-party element-wise op::

    def softsign(g, input):
        return g.op("Div", input, g.op("Add", g.op("Abs", input), 1.0))

Float tensors are the model's float dtype (``dtype=``), int tensors int64.

The hook may give ``fn`` itself or ``OnnxLowering(fn)``: this package's own table
holds the latter, so that tools that run a backend's lowerings on arrays one node at a
time (``ml.check_parity``) see that these are graph builders, not array functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from mithril_core.errors import (
    DtypeError,
    InputKeyError,
    MissingLoweringError,
    ShapeError,
)
from mithril_core.logical import types as ty
from mithril_core.physical.flat import check_lowerings

if TYPE_CHECKING:
    import onnx

Lowering = Callable[..., Any]

FLOAT_KIND = "f"
INT64 = np.dtype(np.int64)
BOOL = np.dtype(np.bool_)

# ONNX ops whose output dtype is not their first input's.
_BOOL_RESULT = frozenset(
    {"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or"}
    | {"Xor", "IsInf", "IsNaN"}
)
_INT64_RESULT = frozenset({"Shape", "Size", "ArgMax", "ArgMin", "NonZero"})


@dataclass(frozen=True)
class OnnxLowering:
    """An ONNX lowering ``build(g, *inputs)`` in a lowering table: not callable, as
    it builds ONNX nodes rather than computing arrays."""

    build: Lowering


def builder_of(entry: Any) -> Lowering:
    """The ``fn(g, *inputs)`` of a table entry: a function, an :class:`OnnxLowering`,
    a ``(forward, None)`` tuple or a lowering record holding either."""
    forward = getattr(entry, "forward", entry)
    if isinstance(forward, tuple):
        forward = forward[0]
    if isinstance(forward, OnnxLowering):
        return forward.build
    return forward


@dataclass(frozen=True)
class Sym:
    """One ONNX tensor of the graph being built."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...] | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def ndim(self) -> int | None:
        return self.rank


def opset_version() -> int:
    """The ONNX opset exports target: the newest the installed ``onnx`` knows."""
    import onnx.defs

    return int(onnx.defs.onnx_opset_version())


class OnnxBuilder:
    """Collects the nodes, initializers and names of one export (see the module
    docstring for how lowerings use it)."""

    def __init__(self, float_dtype: np.dtype[Any], reserved: Iterable[str]) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.float_dtype = float_dtype
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._used: set[str] = set(reserved)
        self._constants: dict[tuple[Any, ...], Sym] = {}
        self.op_name = ""
        self.path = ""
        self.prefix = "v"

    # -- names and errors -------------------------------------------------------------
    def fresh(self, base: str) -> str:
        name = base
        index = 1
        while name in self._used:
            name = f"{base}_{index}"
            index += 1
        self._used.add(name)
        return name

    def fail(self, reason: str) -> NoReturn:
        """Raise the export error for the primitive being lowered."""
        msg = (
            f"{self.path}: primitive {self.op_name!r} cannot be exported to ONNX: "
            f"{reason}"
        )
        raise MissingLoweringError(msg)

    # -- constants --------------------------------------------------------------------
    def const(self, value: Any, dtype: Any = None) -> Sym:
        """An initializer holding ``value`` (floats in the model dtype unless
        ``dtype``)."""
        array = np.asarray(value)
        if dtype is not None:
            array = array.astype(dtype)
        elif array.dtype.kind == FLOAT_KIND:
            array = array.astype(self.float_dtype)
        elif array.dtype.kind in "iu":
            array = array.astype(INT64)
        elif array.dtype.kind != "b":
            self.fail(f"constant of NumPy dtype {array.dtype} has no ONNX tensor type")
        key = (array.dtype.str, array.shape, array.tobytes())
        found = self._constants.get(key)
        if found is not None:
            return found
        name = self.fresh(f"{self.prefix}_const")
        self.initializers.append(self._numpy_helper.from_array(array, name))
        sym = Sym(name, array.dtype, tuple(array.shape))
        self._constants[key] = sym
        return sym

    def add_initializer(self, name: str, array: np.ndarray) -> Sym:
        self.initializers.append(self._numpy_helper.from_array(array, name))
        return Sym(name, array.dtype, tuple(array.shape))

    def ints(self, values: Sequence[int]) -> Sym:
        """A 1-D int64 initializer (axes, pads, shapes)."""
        return self.const(np.asarray(list(values), dtype=INT64).reshape(-1), INT64)

    def sym(self, value: Any, like: Sym | None = None) -> Sym:
        """``value`` as a tensor: a ``Sym`` as is, a number in ``like``'s dtype where
        it fits (an int or a float next to a float tensor), an array as its own."""
        if isinstance(value, Sym):
            return value
        if like is not None and isinstance(value, bool | int | float | np.generic):
            kind = np.asarray(value).dtype.kind
            fits = (
                like.dtype.kind == FLOAT_KIND
                or (kind in "iu") == (like.dtype.kind in "iu")
                and (kind == "b") == (like.dtype.kind == "b")
            )
            if fits:
                return self.const(value, like.dtype)
        return self.const(value)

    # -- nodes ------------------------------------------------------------------------
    def op(
        self,
        op_type: str,
        *inputs: Any,
        outputs: int = 1,
        dtype: Any = None,
        shape: tuple[int | None, ...] | None = None,
        **attrs: Any,
    ) -> Any:
        """Add node ``op_type(*inputs, **attrs)``; return its output ``Sym`` (a tuple
        of ``outputs`` of them when ``outputs > 1``). ``None`` inputs are omitted
        optional inputs; numbers and arrays become initializers."""
        like = next((i for i in inputs if isinstance(i, Sym)), None)
        syms = [None if i is None else self.sym(i, like) for i in inputs]
        names = ["" if s is None else s.name for s in syms]
        if dtype is None:
            if op_type == "Cast":
                dtype = _numpy_dtype(attrs["to"])
            elif op_type in _BOOL_RESULT:
                dtype = BOOL
            elif op_type in _INT64_RESULT:
                dtype = INT64
            elif op_type == "Where":
                dtype = syms[1].dtype  # type: ignore[union-attr]
            elif like is not None:
                dtype = like.dtype
            else:
                dtype = next(s.dtype for s in syms if s is not None)
        results = [
            Sym(self.fresh(self.prefix), np.dtype(dtype), shape) for _ in range(outputs)
        ]
        self.nodes.append(
            self._helper.make_node(
                op_type,
                names,
                [r.name for r in results],
                name=self.fresh(f"{self.path or 'graph'}/{op_type}"),
                **attrs,
            )
        )
        return results[0] if outputs == 1 else tuple(results)

    def cast(self, value: Any, dtype: Any) -> Sym:
        """``value`` as ``dtype`` (a no-op when it already is)."""
        sym = self.sym(value)
        target = np.dtype(dtype)
        if sym.dtype == target:
            return sym
        return self.op("Cast", sym, to=_onnx_type(target), shape=sym.shape)

    def floats(self, value: Any) -> Sym:
        """``value`` in the model's float dtype unless it is float already."""
        sym = self.sym(value)
        if sym.dtype.kind == FLOAT_KIND:
            return sym
        return self.cast(sym, self.float_dtype)

    def promote(self, *values: Any) -> list[Sym]:
        """Tensors of one dtype, as NumPy would compute ``values`` together: float
        over int over bool; numbers take the dtype of the tensors beside them."""
        tensors = [v for v in values if isinstance(v, Sym)]
        kinds = {t.dtype.kind for t in tensors} | {
            np.asarray(v).dtype.kind for v in values if not isinstance(v, Sym)
        }
        if FLOAT_KIND in kinds:
            floats = [t.dtype for t in tensors if t.dtype.kind == FLOAT_KIND]
            target = floats[0] if floats else self.float_dtype
        elif kinds & set("iu"):
            ints = [t.dtype for t in tensors if t.dtype.kind in "iu"]
            target = ints[0] if len(set(ints)) == 1 else INT64
        else:
            target = BOOL
        return [
            self.cast(self.const(v, target) if not isinstance(v, Sym) else v, target)
            for v in values
        ]

    def dims(self, value: Sym) -> list[int | Sym]:
        """The dims of ``value``: ints where known, 0-d int64 tensors (read with
        ``Shape``) where not."""
        if value.shape is None:
            self.fail(f"the rank of {value.name} is unknown; give input shapes")
        dims: list[int | Sym] = []
        shape_of: Sym | None = None
        for axis, dim in enumerate(value.shape):
            if dim is not None:
                dims.append(dim)
                continue
            if shape_of is None:
                shape_of = self.op("Shape", value, shape=(len(value.shape),))
            dims.append(
                self.op(
                    "Gather", shape_of, self.const(np.int64(axis)), axis=0, shape=()
                )
            )
        return dims

    def shape_tensor(self, items: Sequence[Any]) -> Sym:
        """A 1-D int64 tensor of ``items`` (ints and 0-d or 1-element int tensors)."""
        if all(not isinstance(i, Sym) for i in items):
            return self.ints([int(i) for i in items])
        parts = [
            self.op("Reshape", self.cast(i, INT64), self.ints([1]), shape=(1,))
            if isinstance(i, Sym)
            else self.ints([int(i)])
            for i in items
        ]
        return self.op("Concat", *parts, axis=0, shape=(len(items),))

    def axes(self, axes: Iterable[int]) -> Sym:
        return self.ints(list(axes))

    def rename_last(self, sym: Sym, name: str, since: int) -> Sym:
        """Give ``sym`` (the output of a node added since node ``since``) the name
        ``name``."""
        for node in self.nodes[since:]:
            for i, output in enumerate(node.output):
                if output == sym.name:
                    node.output[i] = name
            for i, value in enumerate(node.input):
                if value == sym.name:
                    node.input[i] = name
        self._used.add(name)
        return Sym(name, sym.dtype, sym.shape)

    def produced_since(self, sym: Sym, since: int) -> bool:
        return any(sym.name in node.output for node in self.nodes[since:])


# -- dtypes --------------------------------------------------------------------------
def _onnx_type(dtype: Any) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _numpy_dtype(onnx_type: int) -> np.dtype[Any]:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))


def numpy_dtype(name: str) -> np.dtype[Any]:
    """The NumPy dtype of a mithril dtype name (``bfloat16`` has none)."""
    if name == "bfloat16":
        msg = (
            "ONNX export: bfloat16 models are not supported (NumPy has no bfloat16); "
            "compile with float32."
        )
        raise DtypeError(msg)
    return np.dtype(name)


def _kind_of(types: frozenset[str]) -> str | None:
    """The dtype kind (``"f"``, ``"i"``, ``"b"``) a value's types fix, or ``None``."""
    if types == {ty.TENSOR_FLOAT}:
        return FLOAT_KIND
    if types == {ty.TENSOR_INT}:
        return "i"
    if types == {ty.TENSOR_BOOL}:
        return "b"
    return None


def ambiguous_inputs(graph: Any) -> list[str]:
    """Tensor inputs whose dtype kind the model leaves open (float, int or bool)."""
    return [
        key
        for key, value in graph.inputs.items()
        if value.types <= ty.TENSORS and _kind_of(value.types) is None
    ]


def _input_dtype(
    key: str, types: frozenset[str], float_dtype: np.dtype[Any]
) -> np.dtype[Any]:
    kind = _kind_of(types)
    if kind is None:
        msg = (
            f"ONNX export: input {key!r} may be {ty.format_type(types)}; an ONNX input "
            f"has one dtype: give it, e.g. input_dtypes={{{key!r}: 'int64'}}, or "
            f"declare it with IOKey({key!r}, type=Tensor[int])."
        )
        raise DtypeError(msg)
    return {FLOAT_KIND: float_dtype, "i": INT64, "b": BOOL}[kind]


# -- export --------------------------------------------------------------------------
def export_graph(
    graph: Any,
    lowerings: Mapping[str, Lowering],
    *,
    dtype: str,
    initializers: Mapping[str, Any] | None = None,
    input_dtypes: Mapping[str, Any] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    name: str = "mithril",
) -> onnx.ModelProto:
    """The ONNX model of ``graph`` (a compiled model's flat graph): inputs and outputs
    named by the model's keys, ``initializers`` (key -> array) baked in, every other
    input a graph input.

    :param dtype: The model's float dtype name (``"float32"``).
    :param input_dtypes: key -> NumPy dtype for inputs (default: from their types).
    :param input_shapes: key -> shape replacing the compiled (possibly symbolic) one.
    :raises MissingLoweringError: naming a primitive and its model path when it has
        no ONNX lowering or ONNX cannot express it.
    """
    from onnx import helper

    float_dtype = numpy_dtype(dtype)
    initializers = dict(initializers or {})
    input_dtypes = dict(input_dtypes or {})
    input_shapes = dict(input_shapes or {})
    unknown = sorted(set(initializers) - set(graph.inputs))
    if unknown:
        msg = (
            f"ONNX export: {unknown} given as parameters are not inputs of the model; "
            f"inputs: {list(graph.inputs)}."
        )
        raise InputKeyError(msg)
    check_lowerings(
        graph,
        lowerings,
        "ONNX export: no ONNX lowering",
        "A package adds one through the mithril_lowerings hook for backend 'onnx' "
        "(see mithril_onnx.export).",
    )
    g = OnnxBuilder(float_dtype, (*graph.inputs, *graph.outputs))
    env: dict[int, Any] = {}
    graph_inputs: list[onnx.ValueInfoProto] = []
    for key, value in graph.inputs.items():
        if not value.types <= ty.TENSORS:
            msg = (
                f"ONNX export: input {key!r} is not a tensor "
                f"({ty.format_type(value.types)}); "
                "give it as a constant (compile(constant_keys=...)) to export."
            )
            raise DtypeError(msg)
        shape = value.shape()
        if key in initializers:
            array = _initializer(key, initializers[key], value, float_dtype)
            env[id(value)] = g.add_initializer(key, array)
            continue
        if key in input_shapes:
            shape = list(input_shapes[key])
        if key in input_dtypes:
            dtype_ = np.dtype(input_dtypes[key])
        else:
            dtype_ = _input_dtype(key, value.types, float_dtype)
        dims = None if shape is None else _symbolic(key, shape)
        graph_inputs.append(
            helper.make_tensor_value_info(key, _onnx_type(dtype_), dims)
        )
        env[id(value)] = Sym(key, dtype_, None if shape is None else tuple(shape))

    for node in graph.nodes:
        args = [_resolve(env, value) for value in node.inputs]
        g.op_name, g.path = node.op, node.path
        g.prefix = node.output.name
        since = len(g.nodes)
        result = builder_of(lowerings[node.op])(g, *args)
        result = _settle(g, node, result, since)
        env[id(node.output)] = result

    graph_outputs: list[onnx.ValueInfoProto] = []
    claimed: set[str] = set()
    for key, value in graph.outputs.items():
        result = _resolve(env, value)
        g.op_name, g.path, g.prefix = "output", key, key
        if not isinstance(result, Sym):
            if not isinstance(result, np.ndarray | np.generic | int | float | bool):
                msg = (
                    f"ONNX export: output {key!r} is not a tensor "
                    f"({type(result).__name__}); ONNX outputs are tensors."
                )
                raise DtypeError(msg)
            result = g.const(result)
        if result.name != key:
            own = (
                g.produced_since(result, 0)
                and result.name not in claimed
                and result.name not in graph.inputs
            )
            since = 0 if own else len(g.nodes)
            if not own:
                result = g.op("Identity", result, shape=result.shape)
            result = g.rename_last(result, key, since)
            env[id(value)] = result
        claimed.add(key)
        shape = value.shape() if value.types <= ty.TENSORS else None
        dims = None if shape is None else _symbolic(key, shape)
        graph_outputs.append(
            helper.make_tensor_value_info(key, _onnx_type(result.dtype), dims)
        )
    onnx_graph = helper.make_graph(
        g.nodes, name, graph_inputs, graph_outputs, initializer=g.initializers
    )
    model = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", opset_version())],
        producer_name="mithril_core",
    )
    _infer_output_ranks(model)
    return model


def _infer_output_ranks(model: onnx.ModelProto) -> None:
    # An output whose rank the model leaves open gets the one ONNX infers (a graph
    # output must have a shape); its unknown dims are named like the others.
    import onnx.shape_inference

    open_outputs = [
        o for o in model.graph.output if not o.type.tensor_type.HasField("shape")
    ]
    if not open_outputs:
        return
    inferred = onnx.shape_inference.infer_shapes(model)
    found = {
        o.name: o
        for o in (*inferred.graph.output, *inferred.graph.value_info)
        if o.type.tensor_type.HasField("shape")
    }
    for output in open_outputs:
        if output.name not in found:
            msg = (
                f"ONNX export: the rank of output {output.name!r} is unknown; give "
                "the input shapes to compile."
            )
            raise ShapeError(msg)
        shape = found[output.name].type.tensor_type.shape
        for axis, dim in enumerate(shape.dim):
            if not dim.HasField("dim_value"):
                dim.dim_param = "batch" if axis == 0 else f"{output.name}_dim{axis}"
        output.type.tensor_type.shape.CopyFrom(shape)


def _symbolic(key: str, shape: Sequence[int | None]) -> list[int | str]:
    # Unknown dims get names; an unknown first dim is the batch.
    return [
        d if d is not None else ("batch" if axis == 0 else f"{key}_dim{axis}")
        for axis, d in enumerate(shape)
    ]


def _initializer(
    key: str, value: Any, graph_value: Any, float_dtype: np.dtype[Any]
) -> np.ndarray:
    array = np.asarray(value)
    kind = _kind_of(graph_value.types) or array.dtype.kind
    if kind == FLOAT_KIND:
        if array.dtype.kind != FLOAT_KIND:
            msg = (
                f"ONNX export: parameter {key!r} must be a float array, got "
                f"{array.dtype}."
            )
            raise DtypeError(msg)
        array = array.astype(float_dtype)
    elif kind in "iu":
        array = array.astype(INT64)
    shape = graph_value.shape()
    if shape is not None and (
        len(shape) != array.ndim
        or any(
            d is not None and d != n for d, n in zip(shape, array.shape, strict=True)
        )
    ):
        msg = (
            f"ONNX export: parameter {key!r} has shape {list(array.shape)}, the model "
            f"expects {shape}."
        )
        raise ShapeError(msg)
    return array


def _resolve(env: dict[int, Any], value: Any) -> Any:
    found = env.get(id(value), _MISSING)
    if found is not _MISSING:
        return found
    if value.is_constant:
        return value.constant
    msg = f"ONNX export: value {value.name!r} is used before it is computed."
    raise AssertionError(msg)


_MISSING = object()


def _settle(g: OnnxBuilder, node: Any, result: Any, since: int) -> Any:
    """Check a lowering's result against the model's type and give it the model's
    shape and (for a fresh tensor) the value's name."""
    if not isinstance(result, Sym):
        return result
    kind = _kind_of(node.output.types)
    got = result.dtype.kind
    if kind is not None and (got if got != "u" else "i") != kind:
        msg = (
            f"{node.path}: the ONNX lowering of {node.op!r} produced {result.dtype}, "
            f"but the model says {ty.format_type(node.output.types)}."
        )
        raise DtypeError(msg)
    shape = node.output.shape()
    settled = Sym(
        result.name,
        result.dtype,
        tuple(shape) if shape is not None else result.shape,
    )
    if g.produced_since(result, since) and result.name != node.output.name:
        if node.output.name not in g._used:
            return g.rename_last(settled, node.output.name, since)
    return settled


def export_model(
    pm: Any,
    path: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    params_as_inputs: bool = False,
    require: Sequence[str] | None = None,
    input_dtypes: Mapping[str, Any] | None = None,
) -> onnx.ModelProto:
    """Export the compiled model ``pm`` (see :meth:`PhysicalModel.to_onnx`) and write
    it to ``path`` when given. ``params`` must hold every key of ``require``
    (default: every trainable and state key)."""
    import onnx

    from mithril_core.plugins import get_registry

    backend = pm.backend
    baked: dict[str, Any] = {}
    param_keys = (*pm.trainable_keys, *pm.state_keys) if require is None else require
    if not params_as_inputs:
        if params is None:
            msg = (
                "to_onnx(): give the parameter values, to_onnx(path, params=params), "
                "or export them as graph inputs with params_as_inputs=True."
            )
            raise InputKeyError(msg)
        missing = [k for k in param_keys if k not in params]
        if missing:
            msg = (
                f"to_onnx(): params lacks {missing}; expected every trainable and "
                f"state key: {list(param_keys)}."
            )
            raise InputKeyError(msg)
        for key, value in params.items():
            info = backend.array_info(value)
            baked[key] = (
                backend.to_numpy(value) if info is not None else np.asarray(value)
            )
    elif params:
        msg = (
            "to_onnx(): params_as_inputs=True exports parameters as inputs; give no "
            "params."
        )
        raise InputKeyError(msg)
    model = export_graph(
        pm.graph,
        get_registry().lowerings("onnx"),
        dtype=backend.dtype.name,
        initializers=baked,
        input_dtypes=input_dtypes,
    )
    if path is not None:
        onnx.save_model(model, str(path))
    return model


def to_onnx(
    model: Any,
    *,
    shapes: Mapping[str, Sequence[int | None]] | None = None,
    path: str | None = None,
    params: Mapping[str, Any] | None = None,
    params_as_inputs: bool = False,
    dtype: Any = "float32",
    **compile_options: Any,
) -> onnx.ModelProto:
    """Compile the logical ``model`` with the NumPy backend in inference mode and
    export it (see :meth:`PhysicalModel.to_onnx`).

    :param shapes: input shapes for compile (``None`` dims stay symbolic).
    :param params: key -> array for every key to bake in as an initializer (every
        parameter and state key unless ``params_as_inputs``); other inputs are
        graph inputs.
    :param dtype: the float dtype of the export (``ml.float32``).
    :param compile_options: more keyword arguments for ``compile``.
    """
    import mithril_core as ml

    backend = ml.backend("numpy", dtype=dtype)
    compile_options.setdefault("inference", True)
    pm = ml.compile(model, backend, shapes=shapes, **compile_options)
    return export_model(
        pm,
        path,
        params=params,
        params_as_inputs=params_as_inputs,
        require=None if params is None else (),
    )
