"""The plugin manager: builtin and installed packages contribute through one set of
hooks."""

from __future__ import annotations

import os
import traceback
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import pluggy

from mithril_core import hookspecs
from mithril_core.errors import (
    MSG_INSTALL_BACKEND,
    MSG_INSTALL_PLUGIN,
    MSG_NO_PLUGIN,
    MissingBackendError,
    PluginError,
)
from mithril_core.primitives.lowering import Lowering, as_lowering

PROJECT = "mithril"
DEFAULT_PLUGINS = (
    "mithril_core.primitives.plugin",
    "mithril_core.backends.numpy.plugin",
)
# Modules whose public model classes (composites, blocks, training wrappers) model
# documents may name; primitives come from the ``mithril_operators`` hook.
CORE_MODEL_PACKAGES = ("mithril_core.models", "mithril_core.training")


def create_manager(*, load_entry_points: bool = True) -> pluggy.PluginManager:
    """A fresh manager with the builtin plugins and (optionally) installed entry points.

    ``MITHRIL_DISABLE_PLUGINS=torch,c`` blocks entry points by name;
    ``MITHRIL_PLUGINS=torch`` loads only the named ones.
    """
    import importlib

    manager = pluggy.PluginManager(PROJECT)
    manager.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        _load_entry_points(manager)
    manager.check_pending()
    return manager


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    disabled = {
        n for n in os.environ.get("MITHRIL_DISABLE_PLUGINS", "").split(",") if n
    }
    only = {n for n in os.environ.get("MITHRIL_PLUGINS", "").split(",") if n}
    for entry_point in metadata.entry_points(group=PROJECT):
        if entry_point.name in disabled or (only and entry_point.name not in only):
            manager.set_blocked(entry_point.name)
            continue
        if manager.get_plugin(entry_point.name) is not None:
            continue
        try:
            plugin = entry_point.load()
        except Exception as exc:
            dist = entry_point.dist.name if entry_point.dist else entry_point.value
            msg = (
                f"Plugin {entry_point.name!r} from distribution {dist!r} "
                "failed to import: "
                f"{exc}\n{traceback.format_exc()}"
            )
            raise PluginError(msg) from exc
        manager.register(plugin, name=entry_point.name)
        _DISTRIBUTIONS[entry_point.name] = (
            entry_point.dist.name if entry_point.dist else "?"
        )


_DISTRIBUTIONS: dict[str, str] = {}


@cache
def get_manager() -> pluggy.PluginManager:
    """The process-wide manager, created (and entry points loaded) on first use."""
    return create_manager()


class Registry:
    """Backends, primitives and lowerings contributed through a plugin manager."""

    def __init__(self, manager: pluggy.PluginManager) -> None:
        self.manager = manager
        self._backends: dict[str, type] | None = None
        self._operators: dict[str, type] | None = None
        self._model_classes: dict[str, type] | None = None
        self._lowerings: dict[str, dict[str, Lowering]] = {}

    def _merge(
        self, results: Sequence[tuple[str, Mapping[str, Any]]], what: str
    ) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for plugin_name, mapping in results:
            for key, value in mapping.items():
                if key in merged:
                    msg = (
                        f"{what} {key!r} is provided by both {owner[key]!r} and "
                        f"{plugin_name!r}; uninstall or block one "
                        "(MITHRIL_DISABLE_PLUGINS)."
                    )
                    raise PluginError(msg)
                merged[key] = value
                owner[key] = plugin_name
        return merged

    def _call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        results = []
        for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
            value = impl.function(**kwargs)
            if value is not None:
                results.append((impl.plugin_name, value))
        return results

    @property
    def backends(self) -> dict[str, type]:
        if self._backends is None:
            self._backends = self._merge(self._call("mithril_backends"), "Backend")
        return self._backends

    @property
    def operators(self) -> dict[str, type]:
        if self._operators is None:
            results = [
                (name, {cls.op_name: cls for cls in classes})
                for name, classes in self._call("mithril_operators")
            ]
            self._operators = self._merge(results, "Operator")
        return self._operators

    @property
    def model_classes(self) -> dict[str, type]:
        """``"module:qualname"`` -> class, for every class a model document may name:
        the public models of :data:`CORE_MODEL_PACKAGES` and every operator."""
        if self._model_classes is None:
            classes = [*_core_model_classes(), *self.operators.values()]
            self._model_classes = {document_name(cls): cls for cls in classes}
        return self._model_classes

    def lowerings(self, backend: str) -> dict[str, Lowering]:
        """Every package's lowerings for ``backend``, each as a :class:`Lowering`
        whatever form its hook returned."""
        table = self._lowerings.get(backend)
        if table is None:
            merged = self._merge(
                self._call("mithril_lowerings", backend=backend), "Lowering"
            )
            table = {
                op: as_lowering(entry, where=f"{backend} lowering of {op!r}")
                for op, entry in merged.items()
            }
            self._lowerings[backend] = table
        return table

    def backend_class(self, name: str) -> type:
        backends = self.backends
        if name not in backends:
            msg = MSG_INSTALL_BACKEND.format(
                name=name,
                installed=", ".join(sorted(backends)) or "none",
                hint=install_hint(name),
            )
            raise MissingBackendError(msg)
        return backends[name]


def install_hint(name: str) -> str:
    """How to install the plugin of backend ``name``: the command for its folder when
    this checkout has ``plugins/mithril_<name>``, else where backends come from."""
    root = Path(__file__).resolve().parent.parent
    if name.isidentifier() and (root / "plugins" / f"mithril_{name}").is_dir():
        return MSG_INSTALL_PLUGIN.format(name=name)
    return MSG_NO_PLUGIN.format(name=name)


def document_name(cls: type) -> str:
    """The ``"module:qualname"`` string a model document names ``cls`` by."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _core_model_classes() -> list[type]:
    import importlib
    import pkgutil

    from mithril_core.logical.model import BaseModel, Model, Operator, Primitive

    found: list[type] = []
    for package_name in CORE_MODEL_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if info.name.rpartition(".")[2].startswith("_"):
                continue
            module = importlib.import_module(info.name)
            found.extend(
                value
                for name, value in vars(module).items()
                if isinstance(value, type)
                and issubclass(value, BaseModel)
                and value.__module__ == module.__name__
                and not name.startswith("_")
                and value not in (Model, Operator, Primitive)
            )
    return found


@cache
def get_registry() -> Registry:
    return Registry(get_manager())


def distributions() -> dict[str, str]:
    """Entry-point name -> distribution, for the plugins loaded so far."""
    get_manager()
    return dict(_DISTRIBUTIONS)
