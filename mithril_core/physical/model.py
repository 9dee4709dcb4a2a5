"""``compile``: logical model -> flat graph -> generated code ->
:class:`PhysicalModel`."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mithril_core.backends.base import Backend, Program
from mithril_core.errors import (
    CompileError,
    InputKeyError,
    ShapeError,
)
from mithril_core.logical import shapes as sh
from mithril_core.logical import types as ty
from mithril_core.logical.connection import NOVALUE, Connection
from mithril_core.logical.model import BaseModel, Model, solve
from mithril_core.physical import flat
from mithril_core.plugins import get_registry

if TYPE_CHECKING:
    from mithril_core.physical.physical_model import PhysicalModel

logger = logging.getLogger("mithril_core.compile")

#: Builds the program of backends that generate no code of their own (NumPy, Torch,
#: JAX, MLX): the Python code generator registers it from the layer above
#: (``mithril_core.codegen.python``; ``ml.compile`` imports it).
_PROGRAM_BUILDERS: list[Callable[..., Program]] = []


def register_program_builder(builder: Callable[..., Program]) -> None:
    """Make ``builder(graph, lowerings, backend, grad_keys, differentiable_outputs,
    inference, file_path)`` the default program builder of :func:`compile`."""
    _PROGRAM_BUILDERS[:] = [builder]


def _program_builder() -> Callable[..., Program]:
    if not _PROGRAM_BUILDERS:
        msg = (
            "No Python code generator is registered: import mithril_core.codegen."
            "python (mithril_core.compile does) before compiling."
        )
        raise CompileError(msg)
    return _PROGRAM_BUILDERS[0]


def compile(  # noqa: A001 - the public name the SPEC fixes
    model: BaseModel,
    backend: Backend,
    *,
    shapes: Mapping[str, Iterable[int | None]] | None = None,
    data_keys: Iterable[str] | None = None,
    constant_keys: Mapping[str, Any] | None = None,
    trainable_keys: Iterable[str] | None = None,
    discard_keys: Iterable[str] | None = None,
    inference: bool = False,
    jit: bool = True,
    file_path: str | None = None,
    shardings: Mapping[str, Iterable[str | None]] | None = None,
) -> PhysicalModel:
    """Compile ``model`` for ``backend``.

    :param shapes: key -> shape (``None`` for an unknown dim) applied before solving.
    :param data_keys: inputs given at evaluate as data (no gradient).
    :param constant_keys: key -> value fixed at compile time (folded into the code).
    :param trainable_keys: inputs that get gradients (default: every float input that
        is neither data nor constant).
    :param discard_keys: outputs not to return.
    :param inference: compile without gradient support (and with layers such as
        Dropout/BatchNorm in inference mode).
    :param jit: let the backend jit the generated function.
    :param file_path: also write the generated source there.
    :param shardings: key -> mesh-axis name (or ``None``) per dim, e.g.
        ``{"input": ("data", None), "weight": (None, "model")}``, for backends created
        with a ``device_mesh`` (JAX, Torch).
    """
    if not isinstance(model, BaseModel):
        msg = f"compile() expects a model, got {type(model).__name__}."
        raise TypeError(msg)
    if not isinstance(backend, Backend):
        msg = (
            "compile() expects a backend instance (e.g. ml.NumpyBackend()), "
            f"got {backend!r}."
        )
        raise TypeError(msg)
    model.ensure_built()
    if model.parent_model is not None:
        msg = f"{model.path()} is part of a larger model; compile the top model."
        raise CompileError(msg)
    timer = _PhaseTimer(model.path(), backend.name)
    # Compile specialises the model (shapes, constants, inference flags, types) in a
    # scratch: the IR copies what it needs, then every change is undone, so the
    # user's model is left as it was and nothing is deep-copied.
    with sh.scratch():
        settings = _Settings(
            data_keys, constant_keys, trainable_keys, shapes, discard_keys, inference
        )
        graph, states, trainable_set, data, float_bound = _specialise(
            model, backend, settings, timer
        )
    path = model.path()
    timer.done("restore model")
    registry = get_registry()
    lowerings = registry.lowerings(backend.name)
    flat.check_lowerings(
        graph,
        lowerings,
        f"Backend {backend.name!r} has no lowering",
        "Install or write a plugin providing them (see `python -m mithril_core ops`).",
    )
    timer.done("lowering check")
    numpy_lowerings = registry.lowerings("numpy")
    graph = flat.fold_constants(
        graph, lambda node, args: _fold(node, args, numpy_lowerings)
    )
    graph = flat.prune(graph)
    graph = flat.cast_promoted_floats(graph, backend.dtype.name)
    timer.done("constant fold", graph)

    input_keys = tuple(graph.inputs)
    state_keys = tuple(k for k in input_keys if k in states)
    grad_keys = tuple(k for k in input_keys if k in trainable_set)
    for k in input_keys:
        if k in data and graph.inputs[k].differentiable:
            grad_keys += (k,)

    # A state's new value (running statistics) is no function to differentiate: no
    # output gradient is taken for it, and backends compile no backward pass from it.
    state_updates = {f"{k}_updated" for k in state_keys}
    differentiable_outputs = tuple(
        k
        for k, v in graph.outputs.items()
        if ty.TENSOR_FLOAT in v.types and k not in state_updates
    )
    native = backend.build_program(
        graph,
        lowerings,
        grad_keys=grad_keys,
        differentiable_outputs=differentiable_outputs,
        inference=inference,
        file_path=file_path,
    )
    if native is not None:
        program = native
    else:
        program = _program_builder()(
            graph,
            lowerings,
            backend,
            grad_keys,
            differentiable_outputs,
            inference,
            file_path,
        )
    timer.done("codegen")
    program.shardings = _check_shardings(shardings, graph, backend)
    evaluator = backend.build_evaluator(program, jit=jit and backend.supports_jit)
    timer.done("backend build")
    timer.finish(graph)
    from mithril_core.physical.physical_model import PhysicalModel

    return PhysicalModel(
        backend=backend,
        graph=graph,
        path=path,
        program=program,
        evaluator=evaluator,
        trainable_keys=tuple(k for k in input_keys if k in trainable_set),
        state_keys={k: states[k] for k in state_keys},
        data_keys=tuple(k for k in input_keys if k in data),
        file_path=os.path.abspath(file_path) if file_path else None,
        inference=inference,
        float_bound=float_bound,
    )


class _Settings:
    """What compile was given, keys as the user wrote them."""

    def __init__(
        self,
        data_keys: Iterable[str] | None,
        constant_keys: Mapping[str, Any] | None,
        trainable_keys: Iterable[str] | None,
        shapes: Mapping[str, Iterable[int | None]] | None,
        discard_keys: Iterable[str] | None,
        inference: bool,
    ) -> None:
        self.data_keys = list(data_keys or ())
        self.constant_keys = dict(constant_keys or {})
        self.trainable_keys = None if trainable_keys is None else list(trainable_keys)
        self.shapes = {k: list(v) for k, v in (shapes or {}).items()}
        self.discard_keys = list(discard_keys or ())
        self.inference = inference


def _specialise(
    model: BaseModel, backend: Backend, settings: _Settings, timer: _PhaseTimer
) -> tuple[flat.Graph, dict[str, float], set[str], set[str], dict[str, str]]:
    """Apply compile's settings to ``model`` (inside a scratch), solve, and flatten
    it into the pruned IR. Returns the IR, state key -> initial value, the trainable
    keys, the data keys and the float-bound inputs."""
    top = _as_model(model)
    aliases: dict[str, str] = {}
    names = flat.assign_names(top, aliases)
    by_name = {names[id(c.find())]: c.find() for c in _all_connections(top)}
    # Names given as written ("a.b") mean their keys ("a_b").
    data = {aliases.get(k, k) for k in settings.data_keys}
    constants = {aliases.get(k, k): v for k, v in settings.constant_keys.items()}
    trainable = (
        {aliases.get(k, k) for k in settings.trainable_keys}
        if settings.trainable_keys is not None
        else None
    )
    shapes = {aliases.get(k, k): v for k, v in settings.shapes.items()}
    discard_keys = {aliases.get(k, k) for k in settings.discard_keys}
    for key in (*data, *constants, *(trainable or ()), *shapes):
        if key not in by_name:
            msg = (
                f"{top.path()}: unknown key {key!r} given to compile; known keys: "
                f"{', '.join(sorted(k for k in by_name if not _internal(by_name[k])))}."
            )
            raise InputKeyError(msg)
    for what, keys in (
        ("constant_keys", constants),
        ("data_keys", data),
        ("trainable_keys", trainable or ()),
    ):
        for key in keys:
            producer = by_name[key].producer
            if producer is not None:
                # A value for a computed connection would silently replace its result.
                msg = (
                    f"{top.path()}.{key}: given in {what}, but {producer.path()} "
                    f"computes it: {what} name inputs only."
                )
                raise InputKeyError(msg)
    for primitive, _ in top.primitives():
        flag = primitive.connections().get("inference")
        if flag is not None and flag.find().value is NOVALUE:
            flag.set_value(settings.inference)
    states = _collect_states(top, names)
    for key, shape in shapes.items():
        _apply_shape(by_name[key], key, shape)
    for key, value in constants.items():
        conn = by_name[key]
        try:
            conn.set_value(_constant_value(value, backend))
            solve()
        except sh.ShapeConflict as exc:
            sh.clear_queue()
            msg = f"{top.path()}.{key}: constant does not fit: {exc}"
            raise ShapeError(msg) from None
    solve()
    # Inputs are given at evaluate as arrays: one that may be a tensor is a tensor.
    for conn in {id(c.find()): c.find() for c in by_name.values()}.values():
        if conn.producer is None and conn.value is NOVALUE and conn.types & ty.TENSORS:
            conn.restrict_type(conn.types & ty.TENSORS)
    solve()
    timer.done("solve")

    flattened = flat.flatten(top, names)
    outputs = _outputs(top, flattened, names, discard_keys)
    if not settings.inference:
        for key, (_, updated) in states.items():
            if updated is not None:
                outputs[f"{key}_updated"] = flattened.value(updated)
    graph = flattened.graph.evolve(outputs=outputs)
    graph = flat.topological_order(graph)
    timer.done("flatten", graph)
    graph = flat.remove_buffers(graph)
    graph = flat.prune(graph)
    graph = flat.deduplicate(graph)
    timer.done("prune", graph)

    float_inputs = {k for k, v in graph.inputs.items() if ty.TENSOR_FLOAT in v.types}
    if trainable is None:
        trainable_set = {
            k
            for k in float_inputs
            if k not in data
            and k not in states
            and graph.inputs[k].differentiable is not False
        }
    else:
        trainable_set = trainable
    for key in graph.inputs:
        if key not in trainable_set and key not in states:
            data.add(key)
    connection = flattened.connection_of
    for key in graph.inputs:
        if key in trainable_set:  # parameters are float tensors
            connection[id(graph.inputs[key])].restrict_type(
                frozenset({ty.TENSOR_FLOAT})
            )
    solve()  # spread what that settles (e.g. the type of what a parameter feeds)
    # An input that may be int or float but meets floats is a float input: int data
    # there would be computed in whatever float type the framework picks.
    float_bound = flat.float_bound_inputs(flattened.refresh(graph))
    for key in float_bound:
        connection[id(graph.inputs[key])].restrict_type(frozenset({ty.TENSOR_FLOAT}))
    solve()
    graph = flattened.refresh(graph)
    return graph, {k: v[0] for k, v in states.items()}, trainable_set, data, float_bound


class _PhaseTimer:
    """Logs each compile phase at INFO as it ends, so a long compile is never
    silent."""

    def __init__(self, path: str, backend: str) -> None:
        self.path = path
        logger.info("compiling %s for backend %r", path, backend)
        self.start = self.last = time.perf_counter()

    def done(self, phase: str, graph: flat.FlatGraph | None = None) -> None:
        now = time.perf_counter()
        nodes = "" if graph is None else f" ({len(graph.nodes)} nodes)"
        logger.info("compile %s: %.1f ms%s", phase, (now - self.last) * 1e3, nodes)
        self.last = now

    def finish(self, graph: flat.FlatGraph) -> None:
        logger.info(
            "compiled %s: %d nodes in %.1f ms",
            self.path,
            len(graph.nodes),
            (time.perf_counter() - self.start) * 1e3,
        )


def _as_model(model: BaseModel) -> Model:
    if isinstance(model, Model):
        return model
    wrapper = Model()
    names = model.terminal_names()
    wrapper |= model(**{n: n for n in names if n != "output"}, output=_io("output"))
    return wrapper


def _io(name: str) -> Any:
    from mithril_core.logical.connection import IOKey

    return IOKey(name)


def _all_connections(model: Model) -> list[Connection]:
    conns: list[Connection] = list(model.connections().values())
    for primitive, _ in model.primitives():
        conns.extend(primitive.connections().values())
    stack: list[BaseModel] = list(model.children)
    while stack:
        child = stack.pop()
        if isinstance(child, Model):
            conns.extend(child.connections().values())
            stack.extend(child.children)
    return conns


def _check_shardings(
    shardings: Mapping[str, Iterable[str | None]] | None,
    graph: flat.FlatGraph,
    backend: Backend,
) -> dict[str, tuple[str | None, ...]]:
    if not shardings:
        return {}
    if not backend.supports_sharding:
        msg = (
            f"{type(backend).__name__} does not support shardings; use a backend "
            "created with a device_mesh (JaxBackend, TorchBackend)."
        )
        raise CompileError(msg)
    result: dict[str, tuple[str | None, ...]] = {}
    for key, spec in shardings.items():
        value = graph.inputs.get(key) or graph.outputs.get(key)
        if value is None:
            msg = (
                f"shardings: unknown key {key!r}; inputs: {list(graph.inputs)}, "
                f"outputs: {list(graph.outputs)}."
            )
            raise InputKeyError(msg)
        spec = tuple(spec)
        shape = value.shape()
        if shape is not None and len(spec) != len(shape):
            msg = (
                f"shardings[{key!r}] = {spec} has {len(spec)} entries for a value of "
                f"shape {shape}; give one mesh axis (or None) per dim."
            )
            raise ShapeError(msg)
        result[key] = spec
    return result


def _collect_states(
    model: Model, names: dict[int, str]
) -> dict[str, tuple[float, Connection | None]]:
    states: dict[str, tuple[float, Connection | None]] = {}
    stack: list[BaseModel] = [model]
    while stack:
        current = stack.pop()
        if isinstance(current, Model):
            for name, init, updated in current.states():
                key = names[id(current.connections()[name].find())]
                states[key] = (init, updated)
            stack.extend(current.children)
    return states


def _internal(conn: Connection) -> bool:
    return conn.producer is not None or conn.value is not NOVALUE


def _apply_shape(conn: Connection, key: str, shape: list[int | None]) -> None:
    before = repr(conn.shape_node)
    try:
        sh.unify_with_dims(conn.shape_node, shape)
        solve()
    except sh.ShapeConflict as exc:
        sh.clear_queue()
        sources = "; ".join(dict.fromkeys(conn.sources))
        where = f" (connected at {sources})" if sources else ""
        msg = (
            f"{key}: shape {shape} given to compile "
            f"conflicts with {before} ({exc}){where}"
        )
        raise ShapeError(msg) from None


def _constant_value(value: Any, backend: Backend) -> Any:
    if isinstance(value, int | float | bool | tuple | list | str) or value is None:
        return value
    info = backend.array_info(value)
    if info is not None:
        return backend.to_numpy(value)
    return np.asarray(value)


def _outputs(
    model: Model, flattened: flat.Flattened, names: dict[int, str], discard: set[str]
) -> dict[str, flat.Value]:
    outputs: dict[str, flat.Value] = {}
    for name, conn in model.exposed().items():
        root = conn.find()
        if root.producer is None:  # an input or a constant: never an output
            continue
        key = names[id(root)]
        if name.startswith("__unnamed_") or key in discard:
            continue
        outputs[name] = flattened.value(root)
    if not outputs:
        cout = model.last_output
        if cout is not None and cout.find().producer is not None:
            root = cout.find()
            key = names[id(root)]
            if key not in discard:
                outputs[key] = flattened.value(root)
    if not outputs:
        msg = (
            f"{model.path()}: the model has no outputs; expose one with IOKey('name')."
        )
        raise CompileError(msg)
    unknown = discard - {names[id(c.find())] for c in _all_connections(model)}
    if unknown:
        msg = (
            f"{model.path()}: discard_keys {sorted(unknown)} are not keys of the model."
        )
        raise InputKeyError(msg)
    return outputs


def _fold(node: flat.Node, args: list[Any], numpy_lowerings: Mapping[str, Any]) -> Any:
    entry = numpy_lowerings.get(node.op)
    if entry is None:
        msg = (
            f"{node.path}: cannot fold {node.op!r} at compile time (no NumPy lowering)."
        )
        raise CompileError(msg)
    return flat.forward_of(entry)(*args)
