"""Exceptions raised by mithril_core; each also subclasses the builtin it means."""

from __future__ import annotations


class MithrilError(Exception):
    """Base class of every error mithril_core raises on purpose."""


class ShapeError(MithrilError, ValueError):
    """Two shapes that must agree do not, or a shape is needed but unknown."""


class MithrilTypeError(MithrilError, TypeError):
    """A value's type (tensor dtype kind or Python type) contradicts what is
    required."""


class ModelConnectionError(MithrilError, ValueError):
    """A model is connected in a way that cannot work (two producers, unknown
    key...)."""


class InputKeyError(MithrilError, KeyError):
    """A key given to compile/evaluate is missing or unexpected."""

    def __str__(self) -> str:
        # KeyError quotes its argument; we want the message as written.
        return str(self.args[0]) if self.args else ""


class DtypeError(MithrilError, TypeError):
    """An array has a dtype other than the one the compiled model expects."""


class IndexRangeError(MithrilError, IndexError):
    """An int index (embedding id, class target) is negative or not less than the
    size of what it indexes."""


class PluginError(MithrilError, ImportError):
    """A plugin could not be loaded, or two plugins provide the same name."""


class MissingBackendError(PluginError):
    """The requested backend is not installed."""


class MissingLoweringError(MithrilError, NotImplementedError):
    """A primitive has no lowering for the chosen backend."""


class CompileError(MithrilError, RuntimeError):
    """Compilation failed for a reason other than shapes or types."""


class ModelDocumentError(MithrilError, ValueError):
    """A model document (``Model.from_dict`` / ``from_json``) is malformed, exceeds a
    size limit, or names a class that is not registered."""


MSG_INSTALL_BACKEND = (
    "Backend {name!r} is not installed (installed backends: {installed}). {hint}"
)

# The backend plugins are not on a public index: they are installed from a checkout
# of the repository, from its root.
MSG_INSTALL_PLUGIN = (
    "Its plugin is the distribution 'mithril-{name}' in plugins/mithril_{name} of "
    "this checkout; install it from the checkout's root with "
    "`python -m pip install -e ./plugins/mithril_{name}` (every backend: "
    "`python -m pip install -r requirements-dev.txt`)."
)

MSG_NO_PLUGIN = (
    "No plugin of the mithril_core checkout provides it (a 'mithril-{name}' "
    "distribution would be plugins/mithril_{name}). The repository's backends are "
    "installed from the root of its checkout with "
    "`python -m pip install -e ./plugins/mithril_<name>`, "
    "all of them with `python -m pip install -r requirements-dev.txt`; any other "
    "backend comes from its own package with a `mithril` entry point."
)

MSG_MISSING_DEPENDENCY = (
    "{error}: a package this command needs is not installed. Install it from the "
    "root of the mithril_core checkout with `{command}`."
)

MSG_UNREGISTERED_CLASS = (
    "{path}: class {name!r} is not registered for model documents, so it is not "
    "built. Documents may name the models and primitives of mithril_core and of "
    "installed plugins (their `mithril_operators` hook); pass your own classes "
    "explicitly: `Model.from_json(source, classes=[{short}])`."
)
