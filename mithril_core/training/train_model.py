"""``TrainModel``: a model plus losses, regularizations and metrics, with a
``final_cost`` output to differentiate.

```python
tm = TrainModel(model)                      # model's keys are kept unchanged
tm.add_loss(SquaredError(), input="output", target="target")   # mean by default
tm.add_regularization(L2(), coef=1e-4, keys=r".*_weight")
tm.add_metric(AbsoluteError(), key_name="mae", input="output", target="target")
pm = ml.compile(tm, backend, data_keys={"input", "target"}, ...)
outputs, grads = pm.evaluate(params, data,
                             output_gradients={"final_cost": backend.ones(())})
```

``final_cost = sum_i coef_i * reduce_i(loss_i) + sum_j coef_j * reg_j(param_j)``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from mithril_core.errors import MithrilError, ModelConnectionError, ShapeError
from mithril_core.logical.connection import NOVALUE, Connection, IOKey
from mithril_core.logical.model import BaseModel, Model, Primitive, inspect_function
from mithril_core.logical.naming import assign_names
from mithril_core.primitives import Absolute, Buffer, Mean, Multiply, Sum

__all__ = ["L1", "L2", "TrainModel"]

FINAL_COST = "final_cost"


class L2(Model):
    """L2 regularization term: ``output = 0.5 * sum(input ** 2)`` (a scalar), whose
    gradient is ``input``; with ``coef`` it matches weight decay ``coef``."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self |= Multiply()(left=IOKey("input"), right="input", output="square")
        self |= Sum()(input="square", output="total")
        self |= Multiply()(left="total", right=0.5, output=IOKey("output"))
        self._cin = self._conns["input"]


class L1(Model):
    """L1 regularization term: ``output = sum(|input|)`` (a scalar)."""

    def __init__(self, name: str | None = None) -> None:
        super().__init__(name=name)
        self |= Absolute()(input=IOKey("input"), output="magnitude")
        self |= Sum()(input="magnitude", output=IOKey("output"))
        self._cin = self._conns["input"]


class TrainModel(Model):
    """Wrap ``model`` for training: add losses, regularizations and metrics, and get a
    scalar ``final_cost`` output (the sum of the reduced, weighted losses and
    regularization terms).

    ``model`` is copied (it stays usable on its own) and its children become this
    model's children, so every key (parameters, inputs, outputs) is the same as when
    ``model`` is compiled alone: params, checkpoints and weights are interchangeable.
    Its exposed outputs stay outputs (an unnamed canonical output is exposed as
    ``"output"``); pass ``discard_keys`` to ``compile`` to drop them.

    ``final_cost`` is built when the model is first compiled (or when
    ``train_model.final_cost`` is read); add every loss and regularization before.
    """

    def __init__(
        self,
        model: BaseModel,
        name: str | None = None,
        calls: list[list[Any]] | None = None,
    ) -> None:
        """``calls`` replays ``[method name, keyword arguments]`` pairs (how
        ``to_dict`` records ``add_loss``/``add_regularization``/``add_metric``)."""
        super().__init__(name=name)
        self._finalized = True  # nothing to finalize while adopting
        self._deferring = 0
        self._terms: list[tuple[Connection, float | str | Connection]] = []
        self._loss_keys: list[str] = []
        self._metric_keys: list[str] = []
        self._model_inputs: list[str] = []
        if not isinstance(model, BaseModel):
            msg = f"TrainModel expects a model, got {type(model).__name__}."
            raise TypeError(msg)
        if model.parent_model is not None:
            msg = f"TrainModel: {model.path()} is part of a larger model; wrap the top."
            raise ModelConnectionError(msg)
        model.ensure_built()
        if self.name is None:
            self.name = model.name
        self._adopt_model(_copy_model(model))
        self._finalized = False
        # Recorded for to_dict (the constructor's arguments are what it serializes).
        self._calls: list[list[Any]] = []
        self.__dict__.setdefault("_init_args", {})["calls"] = self._calls
        for method, kwargs in calls or ():
            if method not in ("add_loss", "add_regularization", "add_metric"):
                msg = f"TrainModel: cannot replay {method!r}."
                raise ValueError(msg)
            getattr(self, method)(**kwargs)

    # -- building ----------------------------------------------------------------------
    def add_loss(
        self,
        loss: BaseModel,
        reduce_steps: Sequence[BaseModel] | None = None,
        key_name: str | None = None,
        coef: float | str = 1.0,
        **connections: Any,
    ) -> Connection:
        """Add ``coef * reduce(loss(**connections))`` to ``final_cost``.

        :param loss: a loss model (e.g. ``SquaredError()``) returning per-element or
            per-sample losses.
        :param reduce_steps: reduction models applied in order to the loss output, each
            through its canonical input (default ``[Mean()]``: mean over all axes); the
            result must be a scalar.
        :param key_name: also expose the reduced loss as this output.
        :param coef: weight of this loss in ``final_cost`` (a number, or the name of an
            input given at evaluate).
        :param connections: the loss model's terminals -> names of this model's
            connections (``input="output", target="target"``; an unknown name becomes
            a new input), connections, ``IOKey``s or constants.
        :returns: the reduced loss connection.
        """
        self._check_open("add_loss")
        self._record(
            "add_loss",
            loss=loss,
            reduce_steps=None if reduce_steps is None else list(reduce_steps),
            key_name=key_name,
            coef=coef,
            **connections,
        )
        reduced = self._add_reduced(loss, reduce_steps, connections, "add_loss")
        self._check_scalar(reduced, f"add_loss({type(loss).__name__})")
        if key_name is not None:
            self._expose(reduced, key_name)
            self._loss_keys.append(key_name)
        self._terms.append((reduced, coef))
        return reduced

    def add_regularization(
        self,
        model: BaseModel,
        coef: float | str,
        reg_key: str | Connection | None = None,
        keys: str | re.Pattern[str] | Iterable[str] | None = None,
        **connections: Any,
    ) -> list[Connection]:
        """Add ``coef * model(param)`` to ``final_cost`` for each chosen parameter.

        Choose parameters either by ``reg_key`` (one key name or connection) or by
        ``keys``: a regular expression matched in full against the parameter keys of
        the wrapped model (``r".*_weight"``) or an explicit list of keys. Each chosen
        parameter goes to ``model``'s canonical input (a fresh copy of ``model`` per
        parameter); ``connections`` bind its other terminals. ``model`` must return a
        scalar (``L1()``, ``L2()``). Returns the unweighted terms.
        """
        self._check_open("add_regularization")
        if (reg_key is None) == (keys is None):
            msg = (
                "add_regularization: give exactly one of reg_key (a parameter key) or "
                f"keys (a regex or list of keys); parameters are {self._model_inputs}."
            )
            raise ModelConnectionError(msg)
        targets: list[str | Connection]
        if reg_key is not None:
            targets = [reg_key]
        else:
            assert keys is not None
            targets = list(self._match_keys(keys))
        # The keys a pattern matched are recorded, not the pattern: a model document
        # never asks its reader to run a regular expression (catastrophic backtracking).
        self._record(
            "add_regularization",
            model=model,
            coef=coef,
            reg_key=reg_key,
            keys=None if keys is None else targets,
            **connections,
        )
        model.ensure_built()
        terms = []
        for target in targets:
            instance = _copy_model(model)
            cin = instance.cin_name()
            if cin is None:
                msg = f"add_regularization: {type(model).__name__} has no input."
                raise ModelConnectionError(msg)
            with self._defer():
                self |= instance(**{cin: target}, **connections)
            term = instance.cout
            self._check_scalar(term, f"add_regularization({type(model).__name__})")
            self._terms.append((term, coef))
            terms.append(term)
        return terms

    def add_metric(
        self,
        model: BaseModel,
        key_name: str,
        reduce_steps: Sequence[BaseModel] | None = None,
        **connections: Any,
    ) -> Connection:
        """Expose ``reduce(model(**connections))`` as the output ``key_name``. Metrics
        are extra outputs: they never enter ``final_cost`` (so they get no gradient
        when ``final_cost`` is differentiated). ``reduce_steps`` defaults to
        ``[Mean()]``; pass ``[]`` to keep the metric unreduced."""
        self._check_open("add_metric")
        self._record(
            "add_metric",
            model=model,
            key_name=key_name,
            reduce_steps=None if reduce_steps is None else list(reduce_steps),
            **connections,
        )
        reduced = self._add_reduced(model, reduce_steps, connections, "add_metric")
        self._expose(reduced, key_name)
        self._metric_keys.append(key_name)
        return reduced

    @property
    def loss_keys(self) -> list[str]:
        """Output names of losses added with a ``key_name``."""
        return list(self._loss_keys)

    @property
    def metric_keys(self) -> list[str]:
        """Output names of the metrics."""
        return list(self._metric_keys)

    @property
    def parameter_keys(self) -> list[str]:
        """Input keys of the wrapped model (parameters and data inputs alike), the
        names ``keys=`` of :meth:`add_regularization` is matched against."""
        return list(self._model_inputs)

    # -- finalization ------------------------------------------------------------------
    def _ensure_built(self) -> None:
        if self.__dict__.get("_finalized", True) or self.__dict__.get("_deferring"):
            return
        self._finalize()

    def __getattr__(self, name: str) -> Connection:
        if name.startswith("_"):
            raise AttributeError(name)
        if name == FINAL_COST:
            self._ensure_built()
        conns = self.__dict__.get("_conns")
        if conns is not None and name in conns:
            return conns[name]
        msg = f"{type(self).__name__!r} object has no attribute or connection {name!r}"
        raise AttributeError(msg)

    def _finalize(self) -> None:
        if not self._terms:
            msg = (
                f"{self.path()}: TrainModel has no loss or regularization; call "
                "add_loss(...) before compiling it."
            )
            raise MithrilError(msg)
        if FINAL_COST in self._conns:
            msg = f"{self.path()}: the wrapped model already has a {FINAL_COST!r} key."
            raise ModelConnectionError(msg)
        with self._defer():
            total: Connection | None = None
            for term, coef in self._terms:
                weighted = term
                if isinstance(coef, str):
                    weighted = term * self._named(coef)
                elif isinstance(coef, Connection) or coef != 1:
                    weighted = term * coef
                total = weighted if total is None else total + weighted
            assert total is not None
            self |= Buffer()(total, output=IOKey(FINAL_COST, shape=[]))
        self._finalized = True

    def to_dict(self) -> dict[str, Any]:
        """The wrapped model and the recorded ``add_*`` calls (JSON-safe);
        ``Model.from_dict`` replays them. Connections given to ``add_*`` must be names
        (strings) or constants to be serializable."""
        for method, kwargs in self._calls:
            for key, value in kwargs.items():
                if isinstance(value, Connection):
                    msg = (
                        f"TrainModel.to_dict: {method}({key}=...) was given a "
                        "connection; give connection names (strings) to serialize."
                    )
                    raise TypeError(msg)
        return super().to_dict()

    # -- helpers -----------------------------------------------------------------------
    def _record(self, method: str, **kwargs: Any) -> None:
        if isinstance(kwargs.get("keys"), Iterable) and not isinstance(
            kwargs["keys"], str
        ):
            kwargs["keys"] = list(kwargs["keys"])
        self._calls.append([method, kwargs])

    @contextlib.contextmanager
    def _defer(self) -> Iterator[None]:
        self._deferring += 1
        try:
            yield
        finally:
            self._deferring -= 1

    def _check_open(self, what: str) -> None:
        if self._finalized:
            msg = (
                f"{self.path()}: {what}() after final_cost was built (the TrainModel "
                "was compiled or its final_cost read); add losses, regularizations and "
                "metrics first."
            )
            raise MithrilError(msg)

    def _add_reduced(
        self,
        model: BaseModel,
        reduce_steps: Sequence[BaseModel] | None,
        connections: dict[str, Any],
        what: str,
    ) -> Connection:
        if not isinstance(model, BaseModel):
            msg = f"{what}: expected a model, got {type(model).__name__}."
            raise TypeError(msg)
        # A class given for an instance is accepted too.
        steps: list[BaseModel | type[BaseModel]] = (
            [Mean()] if reduce_steps is None else list(reduce_steps)
        )
        with self._defer():
            self |= model(**connections)
            current = model.cout
            for item in steps:
                step = item() if isinstance(item, type) else item
                cin = step.cin_name()
                if cin is None:
                    msg = f"{what}: reduce step {type(step).__name__} has no input."
                    raise ModelConnectionError(msg)
                self |= step(**{cin: current})
                current = step.cout
        return current

    def _expose(self, conn: Connection, key_name: str) -> None:
        if key_name in self._conns:
            msg = f"{self.path()}: key {key_name!r} already exists; choose another."
            raise ModelConnectionError(msg)
        with self._defer():
            self |= Buffer()(conn, output=IOKey(key_name))

    def _check_scalar(self, conn: Connection, what: str) -> None:
        root = conn.find()
        try:
            shape = root.shape_node.values()
        except Exception:  # noqa: BLE001 - unknown rank
            return
        if shape:
            msg = (
                f"{self.path()}: {what} gives shape {root.shape_repr()}; terms of "
                "final_cost must be scalars (add reduce steps)."
            )
            raise ShapeError(msg)

    def _match_keys(self, keys: str | re.Pattern[str] | Iterable[str]) -> Iterator[str]:
        if isinstance(keys, str | re.Pattern):
            pattern = re.compile(keys)
            matched = [k for k in self._model_inputs if pattern.fullmatch(k)]
            if not matched:
                msg = (
                    "add_regularization: no parameter key matches "
                    f"{pattern.pattern!r}; keys are {self._model_inputs}."
                )
                raise ModelConnectionError(msg)
            yield from matched
            return
        for key in keys:
            if key not in self._conns:
                msg = (
                    f"add_regularization: unknown key {key!r}; keys are "
                    f"{self._model_inputs}."
                )
                raise ModelConnectionError(msg)
            yield key

    def _adopt_model(self, inner: BaseModel) -> None:
        """Make ``inner``'s children, connections and outputs this model's own (as
        ``Operator`` does with its inner model), then give every input of the tree a
        top-level name equal to its key, so that keys cannot change when losses and
        regularizations are connected to them."""
        if isinstance(inner, Primitive):
            wrapper = Model()
            wrapper |= inner(
                **{n: n for n in inner.input_names()}, output=IOKey("output")
            )
            inner = wrapper
        assert isinstance(inner, Model)
        self._take_over(inner)
        for conn in _tree_connections(self):
            for node in (conn, conn.find()):
                node.names = [(self if m is inner else m, n) for m, n in node.names]
                if node.model is inner:
                    node.model = self
        if not self.output_names() and self._cout is not None:
            root = self._cout.find()
            if root.producer is not None:
                self._name_canonical("output")
                name = next(n for n, c in self._conns.items() if c.find() is root)
                self._exposed[name] = self._conns[name]
        names = assign_names(self)
        for conn in _tree_connections(self):
            root = conn.find()
            if root.producer is not None or root.value is not NOVALUE:
                continue
            key = names.get(id(root))
            if key is None or key in self._model_inputs:
                continue
            self._model_inputs.append(key)
            if key not in self._conns:
                self._conns[key] = root
                root.names.append((self, key))


def _copy_model(model: BaseModel) -> BaseModel:
    """A fresh copy of ``model`` (wrapping never changes the user's model); the
    inspect layer rebuilds it from its document."""
    copied: BaseModel = inspect_function("copy_model")(model)
    return copied


def _tree_connections(model: Model) -> Iterator[Connection]:
    # Called while adopting, when TrainModel._ensure_built is a no-op (_finalized is
    # still True), so reading connections() never finalizes early.
    stack: list[BaseModel] = [model]
    while stack:
        current = stack.pop()
        if isinstance(current, Primitive):
            yield from current.connections().values()
        elif isinstance(current, Model):
            yield from list(current.connections().values())
            yield from list(current.exposed().values())
            stack.extend(reversed(current.children))
