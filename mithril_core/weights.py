"""Load PyTorch-style weights (state dicts, ``.safetensors``, ``.pt`` files) into the
params of a compiled model."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mithril_core.errors import InputKeyError

if TYPE_CHECKING:
    from mithril_core.physical.physical_model import PhysicalModel

Rename = Mapping[str, str] | Callable[[str], str | None]

#: Key suffixes of source tensors that have no counterpart in mithril models and are
#: dropped without a report by default (PyTorch's BatchNorm counter).
DEFAULT_IGNORE: tuple[str, ...] = ("num_batches_tracked",)


class WeightsError(InputKeyError, ValueError):
    """Source weights do not match a compiled model's parameters and state."""


def read_weights(source: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """Read a mapping of tensors from ``source``: a mapping (returned as a dict), a
    ``.safetensors`` file (read with the NumPy API of ``safetensors``) or a ``.pt`` /
    ``.pth`` / ``.bin`` file (``torch.load(..., weights_only=True)``).

    :param source: A mapping of PyTorch tensors / NumPy arrays, or a file path.
    :returns: Source key -> tensor or array.
    """
    if isinstance(source, Mapping):
        return dict(source)
    if not isinstance(source, str | os.PathLike):
        msg = (
            f"load_weights: source must be a mapping of tensors or a path to a "
            f".safetensors / .pt file, got {type(source).__name__}."
        )
        raise TypeError(msg)
    path = os.fspath(source)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if suffix in {".pt", ".pth", ".bin"}:
        import torch

        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(loaded, Mapping):
            msg = (
                f"load_weights: {path} holds a {type(loaded).__name__}, not a state "
                "dict (a mapping of names to tensors). Save model.state_dict()."
            )
            raise TypeError(msg)
        return dict(loaded)
    msg = (
        f"load_weights: cannot read {path!r}: unknown file type {suffix!r}. Give a "
        ".safetensors, .pt or .pth file, or a mapping of tensors."
    )
    raise ValueError(msg)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor; NumPy has no bfloat16
        tensor = value.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(value)


def _target_key(key: str, rename: Rename | None) -> str | None:
    if rename is None:
        new: str | None = key
    elif isinstance(rename, Mapping):
        new = rename.get(key, key)
    else:
        new = rename(key)
    return None if new is None else new.replace(".", "_")


def _shape_matches(shape: tuple[int, ...], expected: list[int | None] | None) -> bool:
    if expected is None:
        return True
    return len(shape) == len(expected) and all(
        e is None or e == s for s, e in zip(shape, expected, strict=True)
    )


def load_weights(
    pm: PhysicalModel,
    source: Mapping[str, Any] | str | os.PathLike[str],
    *,
    rename: Rename | None = None,
    strict: bool = True,
    ignore: tuple[str, ...] = DEFAULT_IGNORE,
) -> dict[str, Any]:
    """Convert PyTorch-style weights into params for ``pm``.

    Each source key is first mapped through ``rename`` (a mapping of source key -> new
    key, keys it lacks unchanged; or a callable returning the new key, or ``None`` to
    drop that tensor on purpose), then ``.`` becomes ``_``: a torchvision ResNet state
    dict's ``layer1.0.bn1.running_mean`` loads into ``layer1_0_bn1_running_mean``.

    Every trainable and state key of ``pm`` must be given exactly once with its compiled
    shape. Missing keys, unexpected keys (source tensors that match no parameter or
    state, except those whose key ends with a suffix in ``ignore``, by default
    PyTorch's ``num_batches_tracked``) and shape mismatches are all reported by name in
    one :class:`WeightsError` when ``strict``; otherwise in one warning, and what
    matched is returned (a missing key then has to be supplied by the caller).

    :param pm: The compiled model.
    :param source: A mapping of PyTorch tensors / NumPy arrays, or a path to a
        ``.safetensors`` or ``.pt`` / ``.pth`` file.
    :param rename: Source key -> model key, applied before ``.`` -> ``_``.
    :param strict: Raise on any mismatch (else warn and return what matched).
    :param ignore: Key suffixes of source tensors dropped without a report; ``()``
        reports them as unexpected.
    :returns: Model key -> backend array of the backend's dtype.
    """
    tensors = read_weights(source)
    expected = (*pm.trainable_keys, *pm.state_keys)
    shapes = pm.shapes
    backend = pm.backend
    found: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}
    unexpected: list[str] = []
    duplicated: list[str] = []
    mismatched: list[str] = []
    for key, value in tensors.items():
        target = _target_key(key, rename)
        if target is None:
            continue
        if target not in expected:
            if not key.endswith(ignore):
                shown = key if target == key else f"{key} (as {target})"
                unexpected.append(shown)
            continue
        if target in found:
            duplicated.append(f"{target} (from {found[target]} and {key})")
            continue
        found[target] = key
        array = _to_numpy(value)
        if not _shape_matches(array.shape, shapes[target]):
            mismatched.append(
                f"{target}: expected {shapes[target]}, got {list(array.shape)}"
            )
            continue
        arrays[target] = array
    missing = [k for k in expected if k not in found]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches [{'; '.join(mismatched)}]")
    if duplicated:
        problems.append(f"keys given twice {duplicated}")
    if problems:
        msg = (
            f"load_weights: {len(arrays)} of {len(expected)} parameter/state keys "
            f"loaded; " + "; ".join(problems) + ". Source keys become model keys by "
            "rename (if given) and then '.' -> '_'; pass rename=... to map names, or "
            "strict=False to load what matches."
        )
        if strict:
            raise WeightsError(msg)
        warnings.warn(msg, stacklevel=2)
    return {
        key: backend.array(arrays[key], dtype=backend.dtype)
        for key in expected
        if key in arrays
    }
