"""ONNX export and an onnxruntime inference backend for mithril_core (distribution
``mithril-onnx``).

Importing this package imports neither onnx nor onnxruntime; exporting does.
"""

from __future__ import annotations

from mithril_onnx.backend import OnnxBackend
from mithril_onnx.export import export_graph, export_model

__all__ = ["OnnxBackend", "export_graph", "export_model"]
