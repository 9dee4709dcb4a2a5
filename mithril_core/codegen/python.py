"""Generate plain Python source for a flat graph: one line per primitive call.

The forward function frees each intermediate after its last use. For backends without
autograd, ``forward_backward`` adds a reverse sweep over the VJP rules that only
materialises needed gradients, assigns the first contribution and adds further ones.
"""

from __future__ import annotations

import builtins
import inspect
import keyword
import math
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mithril_core.backends.base import Backend, Program
from mithril_core.errors import CompileError
from mithril_core.logical import types as ty
from mithril_core.logical.naming import ascii_identifier_chars
from mithril_core.physical.flat import FlatGraph, Node, Value
from mithril_core.physical.gradients import backward_plan
from mithril_core.physical.model import register_program_builder
from mithril_core.primitives.lowering import as_lowering


@dataclass
class Generated:
    source: str
    namespace: dict[str, Any] = field(default_factory=dict)

    def function(self, name: str, filename: str) -> Callable[..., Any]:
        code = compile(self.source, filename, "exec")
        exec(code, self.namespace)  # noqa: S102 - executing our own generated source
        return self.namespace[name]


def accumulate(left: Any, right: Any) -> Any:
    """Sum gradients of list/tuple values element-wise (``None`` means zero)."""
    if isinstance(left, list | tuple):
        return [accumulate(a, b) for a, b in zip(left, right, strict=True)]
    if left is None:
        return right
    if right is None:
        return left
    return left + right


# Names the generated source refers to besides its locals: the builtins literals use
# (``float("inf")``, ``slice(...)``, ``Ellipsis``) and the function arguments.
_RESERVED = frozenset(
    {"float", "slice", "Ellipsis", "inputs", "output_gradients", "accumulate"}
)


class _Names:
    """Local variable names: valid ASCII identifiers, unique, that shadow neither a
    lowering nor a builtin. Keys are user strings; none reaches the source unchecked."""

    def __init__(self, reserved: set[str]) -> None:
        self.reserved = set(reserved) | _RESERVED
        self.by_value: dict[int, str] = {}
        self.used: set[str] = set()

    def __call__(self, value: Value, prefix: str = "") -> str:
        key = id(value) if not prefix else hash((prefix, id(value)))
        name = self.by_value.get(key)
        if name is None:
            name = self.by_value[key] = self.fresh(prefix + value.name)
        return name

    def fresh(self, base: str) -> str:
        """A new unique local name made from ``base``."""
        base = ascii_identifier_chars(base) or "_"
        if base[0].isdigit():
            base = f"_{base}"
        if keyword.iskeyword(base) or base in self.reserved:
            base = f"{base}_"
        name = base
        index = 1
        while name in self.used or name in self.reserved:
            name = f"{base}_{index}"
            index += 1
        self.used.add(name)
        return name


def _function_name(op: str) -> str:
    name = op.replace(".", "_")
    if not name.isidentifier() or not name.isascii() or keyword.iskeyword(name):
        msg = (
            f"Primitive op name {op!r} does not make a Python identifier; op names are "
            "letters, digits, '_' and '.' (e.g. 'example_ops.swish')."
        )
        raise CompileError(msg)
    return name


class PythonCodegen:
    """Source for ``forward(inputs)`` and
    ``forward_backward(inputs, output_gradients)``."""

    def __init__(
        self,
        graph: FlatGraph,
        lowerings: Mapping[str, Any],
        *,
        with_vjp: bool,
        convert_constant: Callable[[Any], Any],
    ) -> None:
        self.graph = graph
        self.with_vjp = with_vjp
        self.namespace: dict[str, Any] = {"accumulate": accumulate}
        self.forwards: dict[str, Any] = {}
        self.vjps: dict[str, Any] = {}
        self.vjp_takes_needs: dict[str, bool] = {}
        self.named: dict[str, bool] = {}
        for node in graph.nodes:
            fname = _function_name(node.op)
            if fname in self.named:
                continue
            lowering = as_lowering(lowerings[node.op], where=node.op)
            self.namespace[fname] = lowering.forward
            self.named[fname] = lowering.named
            if with_vjp and lowering.vjp is not None:
                self.namespace[f"{fname}_vjp"] = lowering.vjp
                self.vjp_takes_needs[fname] = (
                    "needs" in inspect.signature(lowering.vjp).parameters
                )
        self.names = _Names(set(self.namespace))
        self.convert_constant = convert_constant
        self._constants: dict[int, str] = {}

    # -- expressions -------------------------------------------------------------------
    def expr(self, value: Value) -> str:
        if not value.is_constant:
            return self.names(value)
        literal = _literal(value.constant)
        if literal is not None:
            return literal
        name = self._constants.get(id(value))
        if name is None:
            name = self.names.fresh(f"const_{len(self._constants)}_{value.name}")
            self._constants[id(value)] = name
            self.namespace[name] = self.convert_constant(value.constant)
        return name

    def call(self, node: Node) -> str:
        fname = _function_name(node.op)
        if self.named[fname]:
            args = ", ".join(
                f"{name}={self.expr(v)}"
                for name, v in zip(node.input_names, node.inputs, strict=True)
            )
            return f"{self.names(node.output)} = {fname}({args})"
        args = ", ".join(self.expr(v) for v in node.inputs)
        return f"{self.names(node.output)} = {_function_name(node.op)}({args})"

    # -- forward -----------------------------------------------------------------------
    def forward_lines(self, keep: set[int]) -> list[str]:
        """Forward body; values in ``keep`` are never freed."""
        graph = self.graph
        lines = [f"{self.names(v)} = inputs[{k!r}]" for k, v in graph.inputs.items()]
        last_use: dict[int, int] = {}
        for i, node in enumerate(graph.nodes):
            for v in node.inputs:
                last_use[id(v)] = i
        outputs = {id(v) for v in graph.outputs.values()}
        values = {id(v): v for n in graph.nodes for v in n.inputs}
        frees: dict[int, list[Value]] = {}
        for vid, index in last_use.items():
            value = values[vid]
            if vid in outputs or vid in keep or value.is_constant:
                continue
            frees.setdefault(index, []).append(value)
        for i, node in enumerate(graph.nodes):
            lines.append(self.call(node))
            dead = frees.get(i)
            if dead:
                lines.append("del " + ", ".join(self.names(v) for v in dead))
        return lines

    def outputs_dict(self) -> str:
        items = ", ".join(
            f"{k!r}: {self.expr(v)}" for k, v in self.graph.outputs.items()
        )
        return "{" + items + "}"

    def forward_source(self) -> str:
        body = self.forward_lines(keep=set())
        body.append(f"return {self.outputs_dict()}")
        return (
            "def forward(inputs):\n" + "\n".join("    " + line for line in body) + "\n"
        )

    # -- forward + backward ------------------------------------------------------------
    def backward_source(
        self, grad_keys: tuple[str, ...], seeded: tuple[str, ...], name: str
    ) -> str:
        graph = self.graph
        # Only nodes between grad keys and seeded outputs (shared with C).
        plan = backward_plan(graph, grad_keys, seeded, _is_float)
        active, requires = plan.active, plan.requires
        grad_ids = {id(graph.inputs[k]) for k in grad_keys}
        keep = {id(v) for n in active for v in (*n.inputs, n.output)}
        lines = self.forward_lines(keep=keep)
        grad_name: dict[int, str] = {}
        for key in seeded:
            value = graph.outputs[key]
            if id(value) not in requires:
                continue
            gname = self.names(value, "g_")
            if id(value) in grad_name:
                lines.append(
                    f"{grad_name[id(value)]} = {grad_name[id(value)]} + "
                    f"output_gradients[{key!r}]"
                )
            else:
                lines.append(f"{gname} = output_gradients[{key!r}]")
                grad_name[id(value)] = gname
        # Last backward use of each forward value, to free it early.
        last_use: dict[int, int] = {}
        for i, node in enumerate(active):
            for v in (*node.inputs, node.output):
                last_use[id(v)] = i
        outputs = {id(v) for v in graph.outputs.values()}
        for i, node in enumerate(active):
            out_grad = grad_name.get(id(node.output))
            if out_grad is None:
                continue
            fname = _function_name(node.op)
            if fname not in self.vjp_takes_needs:
                msg = (
                    f"{node.path}: primitive {node.op!r} has no VJP in this backend's "
                    "lowering table, so no gradient can flow through it."
                )
                raise CompileError(msg)
            needs = plan.needs(node)
            args = [
                out_grad,
                self.expr(node.output),
                *(self.expr(v) for v in node.inputs),
            ]
            if self.vjp_takes_needs[fname]:
                args.append(f"needs={needs!r}")
            targets = [(j, v) for j, v in enumerate(node.inputs) if needs[j]]
            result = self.names.fresh(f"_vjp_{i}")
            lines.append(f"{result} = {fname}_vjp({', '.join(args)})")
            for j, v in targets:
                existing = grad_name.get(id(v))
                if existing is None:
                    gname = self.names(v, "g_")
                    lines.append(f"{gname} = {result}[{j}]")
                    grad_name[id(v)] = gname
                elif _is_sequence(v):
                    lines.append(f"{existing} = accumulate({existing}, {result}[{j}])")
                else:
                    lines.append(f"{existing} = {existing} + {result}[{j}]")
            dead = [result, out_grad]
            dead += [
                self.names(v)
                for v in (*node.inputs, node.output)
                if last_use.get(id(v)) == i
                and not v.is_constant
                and id(v) not in outputs
                and id(v) not in grad_ids
            ]
            lines.append("del " + ", ".join(dict.fromkeys(dead)))
            del grad_name[id(node.output)]
        grads = []
        for key in grad_keys:
            value = graph.inputs[key]
            known = grad_name.get(id(value))
            grads.append(f"{key!r}: {known if known else 'None'}")
        lines.append(f"return {self.outputs_dict()}, {{{', '.join(grads)}}}")
        header = f"def {name}(inputs, output_gradients):\n"
        return header + "\n".join("    " + line for line in lines) + "\n"


def _is_float(value: Value) -> bool:
    return bool(value.types & {ty.TENSOR_FLOAT, ty.FLOAT, ty.LIST, ty.TUPLE})


def _is_sequence(value: Value) -> bool:
    return bool(value.types & {ty.LIST, ty.TUPLE}) and not value.types & ty.TENSORS


def _literal(value: Any) -> str | None:
    # Exact types only: a subclass (an IntEnum, a str with its own __repr__) goes to
    # the namespace as a constant, never through its repr into the source.
    kind = type(value)
    if value is None or kind in (bool, int, str) or value is Ellipsis:
        return repr(value)
    if kind is float:
        if math.isfinite(value):
            return repr(value)
        return f"float({str(value)!r})"
    if kind is slice:
        parts = [_literal(p) for p in (value.start, value.stop, value.step)]
        return None if None in parts else f"slice({', '.join(parts)})"  # type: ignore[arg-type]
    if kind in (tuple, list):
        parts = [_literal(v) for v in value]
        if None in parts:
            return None
        if kind is list:
            return "[" + ", ".join(parts) + "]"  # type: ignore[arg-type]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"  # type: ignore[arg-type]
    if isinstance(value, np.generic):
        return _literal(value.item())
    return None


# -- the program of backends without their own code generator ---------------------
def python_program(
    graph: FlatGraph,
    lowerings: Mapping[str, Any],
    backend: Backend,
    grad_keys: tuple[str, ...],
    differentiable_outputs: tuple[str, ...],
    inference: bool,
    file_path: str | None,
) -> Program:
    input_keys = tuple(graph.inputs)
    codegen = PythonCodegen(
        graph,
        lowerings,
        with_vjp=not backend.has_autograd,
        convert_constant=lambda value: to_backend(value, backend),
    )
    source = codegen.forward_source()
    with_gradients = not backend.has_autograd and not inference
    backward = ""
    if with_gradients:
        backward = codegen.backward_source(
            grad_keys, differentiable_outputs, "forward_backward"
        )
    full_source = source + "\n\n" + backward if backward else source
    filename = _write_source(full_source, file_path)
    namespace = codegen.namespace
    exec(compile_source(source, filename, "exec"), namespace)  # noqa: S102 - our code
    forward_backward = None
    if with_gradients:
        # Compiled at the first call that asks for gradients (half the code, and
        # most of the time Python's compiler takes); padded so that its line numbers
        # are those of the file written.
        padded = "\n" * (source.count("\n") + 2) + backward
        forward_backward = _BackwardCache(
            codegen, grad_keys, filename, namespace, differentiable_outputs, padded
        )
    return Program(
        forward=namespace["forward"],
        forward_backward=forward_backward,
        input_keys=input_keys,
        output_keys=tuple(graph.outputs),
        grad_keys=grad_keys,
        differentiable_outputs=differentiable_outputs,
        source=full_source,
    )


compile_source = builtins.compile


class _BackwardCache:
    """Compiles (once per set of seeded outputs, at its first call) the
    forward+backward function."""

    def __init__(
        self,
        codegen: PythonCodegen,
        grad_keys: tuple[str, ...],
        filename: str,
        namespace: dict[str, Any],
        differentiable_outputs: tuple[str, ...],
        source: str,
    ) -> None:
        self.codegen = codegen
        self.grad_keys = grad_keys
        self.filename = filename
        self.namespace = namespace
        self.functions: dict[frozenset[str], Any] = {}
        self.sources = {frozenset(differentiable_outputs): (source, filename)}
        self.lock = threading.Lock()

    def __call__(
        self, inputs: Mapping[str, Any], output_gradients: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        key = frozenset(output_gradients)
        function = self.functions.get(key)
        if function is None:
            with self.lock:
                function = self.functions.get(key)
                if function is None:
                    function = self.functions[key] = self._compile(key)
        return function(inputs, output_gradients)

    def _compile(self, key: frozenset[str]) -> Any:
        known = self.sources.get(key)
        if known is None:
            seeded = tuple(k for k in self.codegen.graph.outputs if k in key)
            source = self.codegen.backward_source(
                self.grad_keys, seeded, "forward_backward"
            )
            known = (source, self.filename + f":{sorted(key)}")
        scope: dict[str, Any] = {}
        code = compile_source(known[0], known[1], "exec")
        exec(code, self.namespace, scope)  # noqa: S102 - our code
        return scope["forward_backward"]


def _write_source(source: str, file_path: str | None) -> str:
    if file_path is None:
        return f"<mithril generated {abs(hash(source)):x}>"
    directory = os.path.dirname(os.path.abspath(file_path))
    os.makedirs(directory, exist_ok=True)
    with open(file_path, "w", encoding="utf-8") as handle:
        handle.write(source)
    return os.path.abspath(file_path)


def to_backend(value: Any, backend: Backend) -> Any:
    if isinstance(value, np.ndarray):
        return backend.array(value, dtype=_dtype_for(value, backend))
    return value


def _dtype_for(value: np.ndarray, backend: Backend) -> str:
    if value.dtype.kind == "f":
        return backend.dtype.name
    if value.dtype.kind == "b":
        return "bool"
    return "int64" if "int64" in backend.supported_dtypes else "int32"


register_program_builder(python_program)
