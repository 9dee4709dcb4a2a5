"""ONNX backend: the compiled graph is exported to ONNX and run by onnxruntime.

Arrays are NumPy arrays. It is an inference backend: forward passes only.
onnx and onnxruntime are imported when a model is compiled, not when this module is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mithril_core.backends.base import Evaluator, Program
from mithril_core.backends.numpy.backend import NumpyBackend
from mithril_core.dtypes import Dtype
from mithril_core.errors import CompileError, MissingLoweringError

if TYPE_CHECKING:
    import onnxruntime

MSG_NO_GRADIENTS = (
    "The onnx backend runs forward passes only (onnxruntime has no gradients of "
    "exported models): evaluate without output_gradients, or compile for a backend "
    "with gradients (numpy, torch, jax, mlx, c)."
)


class OnnxBackend(NumpyBackend):
    """Runs compiled models with onnxruntime on the CPU (forward passes only).

    Compiling exports the flat graph to an ONNX model (params as graph inputs) and
    ``pm.code`` shows it in ONNX's text form (``file_path`` gets that text).
    The session is made at the first ``evaluate`` for each combination of input
    dtypes (an input the model allows as int or float is exported as the dtype it
    is given). ``evaluate(..., output_gradients=...)`` raises.

    :param dtype: Default float dtype (float16, float32 or float64).
    :param threads: onnxruntime intra-op threads (``0``: its default).
    """

    name = "onnx"
    has_autograd = False
    supports_jit = False
    supports_gradients: ClassVar[bool] = False
    # supported_dtypes: NumPy's (arrays are NumPy arrays).

    def __init__(
        self, device: str = "cpu", dtype: Dtype | str = "float32", *, threads: int = 0
    ) -> None:
        if device != "cpu":
            msg = f"OnnxBackend runs on 'cpu' only (onnxruntime CPU), not {device!r}."
            raise CompileError(msg)
        super().__init__(device=device, dtype=dtype)
        self.threads = threads

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
        from mithril_onnx.export import ambiguous_inputs, export_graph

        open_keys = ambiguous_inputs(graph)
        if open_keys:
            # Exported at the first evaluate, with the dtypes given there.
            model = None
            source = (
                f"# Exported to ONNX at each evaluate with new input dtypes: inputs "
                f"{open_keys} may be several dtypes.\n"
            )
        else:
            model = export_graph(graph, lowerings, dtype=self.dtype.name)
            source = _text(model)
        if file_path is not None:
            with open(file_path, "w", encoding="utf-8") as handle:
                handle.write(source)
        runner = _Runner(self, graph, lowerings, model)
        return Program(
            forward=runner,
            forward_backward=None,
            input_keys=tuple(graph.inputs),
            output_keys=tuple(graph.outputs),
            grad_keys=grad_keys,
            differentiable_outputs=differentiable_outputs,
            source=source,
        )

    def build_evaluator(self, program: Program, *, jit: bool) -> Evaluator:
        forward = program.forward

        def evaluate(
            inputs: Mapping[str, Any], output_gradients: Mapping[str, Any] | None
        ) -> tuple[dict[str, Any], dict[str, Any] | None]:
            if output_gradients is not None:
                raise MissingLoweringError(MSG_NO_GRADIENTS)
            return forward(inputs), None

        return evaluate

    def session(self, model_bytes: bytes) -> onnxruntime.InferenceSession:
        """An onnxruntime CPU session of a serialized ONNX model."""
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        try:
            return onnxruntime.InferenceSession(
                model_bytes, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime's own classes, re-raised with context
            msg = (
                f"onnxruntime cannot run the exported model ({self.dtype.name}): "
                f"{exc}. Its CPU kernels of some ops (Conv, AveragePool, Erf) are "
                "float32 only: compile with dtype=ml.float32."
            )
            raise CompileError(msg) from exc


class _Runner:
    """The forward function: one onnxruntime session per input dtype signature."""

    def __init__(
        self, backend: OnnxBackend, graph: Any, lowerings: Mapping[str, Any], model: Any
    ) -> None:
        self.backend = backend
        self.graph = graph
        self.lowerings = lowerings
        self.keys = tuple(graph.inputs)
        self.outputs = tuple(graph.outputs)
        self.sessions: dict[tuple[Any, ...], Any] = {}
        if model is not None:
            found = {
                i.name: _numpy_type(i.type.tensor_type.elem_type)
                for i in model.graph.input
            }
            self.sessions[tuple(found[k] for k in self.keys)] = self._session(model)

    def _session(self, model: Any) -> Any:
        return self.backend.session(model.SerializeToString())

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        feeds = {k: np.asarray(inputs[k]) for k in self.keys}
        signature = tuple(feeds[k].dtype for k in self.keys)
        session = self.sessions.get(signature)
        if session is None:
            from mithril_onnx.export import export_graph

            model = export_graph(
                self.graph,
                self.lowerings,
                dtype=self.backend.dtype.name,
                input_dtypes={k: feeds[k].dtype for k in self.keys},
            )
            session = self.sessions[signature] = self._session(model)
        results = session.run(list(self.outputs), feeds)
        return dict(zip(self.outputs, results, strict=True))


def _numpy_type(onnx_type: int) -> np.dtype[Any]:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))


def _text(model: Any) -> str:
    import onnx.printer

    stripped = type(model)()
    stripped.CopyFrom(model)
    return str(onnx.printer.to_text(stripped))
