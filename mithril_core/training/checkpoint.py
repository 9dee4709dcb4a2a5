"""Save and restore params and optimizer state as one ``.safetensors`` file.

Tensors are stored under ``params/<key>`` and ``optimizer/<slot>/<key>``; numbers
(optimizer step count, epoch, user metadata) go to the safetensors metadata as JSON.
Arrays round-trip bit for bit, so training resumes exactly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from mithril_core.training.optimizers import Optimizer

__all__ = ["load_checkpoint", "save_checkpoint"]

_FORMAT = "mithril_core.training/1"


def save_checkpoint(
    path: str | os.PathLike[str],
    params: Mapping[str, Any],
    optimizer: Optimizer | None = None,
    *,
    backend: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``params`` (and ``optimizer``'s state) to ``path`` (``.safetensors``).

    :param backend: converts arrays to NumPy (``backend.to_numpy``); without it arrays
        go through ``numpy.asarray`` (fine for CPU arrays of any framework).
    :param metadata: JSON-serializable values stored alongside (e.g. ``{"epoch": 3}``);
        :func:`load_checkpoint` returns them.
    """
    from safetensors.numpy import save_file

    def to_numpy(value: Any) -> np.ndarray:
        array = backend.to_numpy(value) if backend is not None else np.asarray(value)
        return np.ascontiguousarray(array)

    tensors: dict[str, np.ndarray] = {
        f"params/{key}": to_numpy(value) for key, value in params.items()
    }
    header: dict[str, Any] = {"format": _FORMAT, "user": dict(metadata or {})}
    if optimizer is not None:
        state = optimizer.state_dict()
        header["optimizer"] = {
            "class": type(optimizer).__name__,
            "step_count": state["step_count"],
            "hyperparameters": _jsonable(optimizer.hyperparameters()),
        }
        for slot, values in state["state"].items():
            for key, value in values.items():
                tensors[f"optimizer/{slot}/{key}"] = to_numpy(value)
    save_file(tensors, os.fspath(path), metadata={"mithril": json.dumps(header)})


def load_checkpoint(
    path: str | os.PathLike[str],
    backend: Any,
    optimizer: Optimizer | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns ``(params, metadata)``: params as ``backend`` arrays with their saved
    dtypes, and the ``metadata`` given at save. When ``optimizer`` is given, its state
    and step count are restored in place (its class must match the saved one).
    """
    from safetensors import safe_open

    params: dict[str, Any] = {}
    slots: dict[str, dict[str, Any]] = {}
    with safe_open(os.fspath(path), framework="numpy") as handle:
        raw = (handle.metadata() or {}).get("mithril")
        if raw is None:
            msg = f"{os.fspath(path)}: not a mithril_core training checkpoint."
            raise ValueError(msg)
        header = json.loads(raw)
        for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
            array = handle.get_tensor(name)
            section, _, rest = name.partition("/")
            value = backend.array(array, dtype=_dtype_name(array, backend))
            if section == "params":
                params[rest] = value
            elif section == "optimizer":
                slot, _, key = rest.partition("/")
                slots.setdefault(slot, {})[key] = value
    if optimizer is not None:
        saved = header.get("optimizer")
        if saved is None:
            msg = f"{os.fspath(path)}: the checkpoint holds no optimizer state."
            raise ValueError(msg)
        if saved["class"] != type(optimizer).__name__:
            msg = (
                f"{os.fspath(path)}: optimizer state of {saved['class']} cannot be "
                f"loaded into {type(optimizer).__name__}."
            )
            raise ValueError(msg)
        optimizer.load_state_dict({"step_count": saved["step_count"], "state": slots})
    return params, header.get("user", {})


def _dtype_name(array: np.ndarray, backend: Any) -> str | None:
    """The saved dtype where the backend has it, else its default (float) dtype."""
    name = str(array.dtype)
    supported = getattr(backend, "supported_dtypes", ())
    return name if name in supported else None


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in values.items():
        if callable(value):
            result[key] = repr(value)
        elif isinstance(value, tuple):
            result[key] = list(value)
        else:
            result[key] = value
    return result
