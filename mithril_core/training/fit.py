"""``fit``: a training loop over a compiled :class:`TrainModel` (or any physical model
with a scalar cost output), with a progress bar, validation, early stopping, a metric
history and checkpoints."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mithril_core.training.checkpoint import load_checkpoint, save_checkpoint
from mithril_core.training.optimizers import Optimizer

__all__ = ["FitResult", "fit"]

Batches = Iterable[Mapping[str, Any]] | Callable[[int], Iterable[Mapping[str, Any]]]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``params``: the trained params (the best ones when ``restore_best``);
    ``history``: per-epoch means of every scalar output (``final_cost``, metrics and
    named losses) and, with validation data, the same with a ``val_`` prefix;
    ``epoch``: epochs completed in total (``initial_epoch`` + those run here);
    ``stopped_early``; ``best_epoch`` / ``best_value``: the monitored value's best (an
    epoch number counted from 1).
    """

    params: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: int = 0
    stopped_early: bool = False
    best_epoch: int | None = None
    best_value: float | None = None


def fit(
    pm: Any,
    params: Mapping[str, Any],
    data: Batches,
    optimizer: Optimizer,
    epochs: int = 1,
    *,
    cost_key: str = "final_cost",
    validation_data: Batches | None = None,
    validation_model: Any = None,
    monitor: str | None = None,
    mode: str = "min",
    patience: int | None = None,
    min_delta: float = 0.0,
    restore_best: bool = False,
    initial_epoch: int = 0,
    history: Mapping[str, list[float]] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], Any] | None = None,
) -> FitResult:
    """Train ``params`` of ``pm`` with ``optimizer`` from epoch ``initial_epoch`` up to
    epoch ``epochs`` (Keras' convention: ``epochs`` is the last epoch number).

    :param pm: a compiled model whose output ``cost_key`` is a scalar (a compiled
        :class:`~mithril_core.training.TrainModel` has ``final_cost``).
    :param data: batches (mappings of data key -> array) re-iterated every epoch, or a
        function ``epoch -> batches`` (epoch counted from 0) for per-epoch shuffling.
        NumPy arrays are converted with ``pm.backend.array`` (floats to the backend's
        dtype); backend arrays are used as they are.
    :param validation_data: batches evaluated (forward only) after each epoch with
        ``validation_model`` (default ``pm``); scalar outputs are averaged into
        ``val_<key>``.
    :param monitor: history key watched by early stopping / ``restore_best``
        (default ``val_<cost_key>`` with validation data, else ``cost_key``);
        ``mode`` ``"min"`` or ``"max"``.
    :param patience: stop after this many epochs without an improvement larger than
        ``min_delta`` (``None``: never stop early).
    :param restore_best: return the params of the best monitored epoch.
    :param history: a previous history to extend (when resuming by hand).
    :param checkpoint_path: save params, optimizer state, epoch and history there
        (``.safetensors``) after every epoch.
    :param resume: continue from ``checkpoint_path`` if it exists (params, optimizer
        state, epoch and history are read from it; ``params`` is ignored then).
    :param progress: show a progress bar (``tqdm`` when installed, else a printed line
        per epoch).
    :param on_epoch_end: called with ``(epoch, logs)`` after each epoch (``epoch``
        counted from 1); returning ``True`` stops training.
    """
    if mode not in ("min", "max"):
        msg = f"fit: mode must be 'min' or 'max', got {mode!r}."
        raise ValueError(msg)
    if cost_key not in pm.output_keys:
        msg = (
            f"fit: the model has no output {cost_key!r}; outputs are "
            f"{list(pm.output_keys)}. Compile a TrainModel or pass cost_key=..."
        )
        raise KeyError(msg)
    backend = pm.backend
    params = dict(params)
    logs_history: dict[str, list[float]] = {
        k: list(v) for k, v in (history or {}).items()
    }
    if resume and checkpoint_path is not None and os.path.exists(checkpoint_path):
        params, saved = load_checkpoint(checkpoint_path, backend, optimizer)
        initial_epoch = int(saved.get("epoch", initial_epoch))
        logs_history = {k: list(v) for k, v in saved.get("history", {}).items()}
    if monitor is None:
        monitor = f"val_{cost_key}" if validation_data is not None else cost_key
    sign = 1.0 if mode == "min" else -1.0
    result = FitResult(params=params, history=logs_history, epoch=initial_epoch)
    best_params = params
    best: float | None = None
    waited = 0
    seed = {cost_key: backend.ones(())}
    state_updates = [
        (key, f"{key}_updated")
        for key in getattr(pm, "state_keys", ())
        if f"{key}_updated" in pm.output_keys
    ]
    bar = _ProgressFactory(progress)
    for epoch in range(initial_epoch, epochs):
        sums: dict[str, Any] = {}
        steps = 0
        batches = _batches(data, epoch)
        reporter = bar(batches, epoch + 1, epochs)
        with reporter as iterator:
            for batch in iterator:
                inputs = _to_backend(batch, backend)
                outputs, grads = pm.evaluate(params, inputs, output_gradients=seed)
                params = optimizer.step(params, grads)
                for key, updated in state_updates:
                    if key in params:
                        params[key] = outputs[updated]
                _accumulate(sums, outputs, backend)
                steps += 1
                if steps % 10 == 0 and iterator.wants_postfix:
                    iterator.set_postfix(
                        cost=float(backend.to_numpy(outputs[cost_key]))
                    )
        if steps == 0:
            msg = f"fit: epoch {epoch + 1} got no batches from the data."
            raise ValueError(msg)
        logs = {k: float(backend.to_numpy(v)) / steps for k, v in sums.items()}
        if validation_data is not None:
            val_model = validation_model or pm
            logs.update(_validate(val_model, params, validation_data, epoch, backend))
        for key, logged in logs.items():
            logs_history.setdefault(key, []).append(logged)
        result.epoch = epoch + 1
        reporter.finish(logs)
        value = logs.get(monitor)
        if value is None:
            msg = (
                f"fit: monitor {monitor!r} is not among the epoch's values "
                f"{sorted(logs)}."
            )
            raise KeyError(msg)
        if not math.isnan(value) and (
            best is None or sign * (best - value) > min_delta
        ):
            best, waited = value, 0
            result.best_epoch, result.best_value = epoch + 1, value
            best_params = params
        else:
            waited += 1
        if checkpoint_path is not None:
            save_checkpoint(
                checkpoint_path,
                params,
                optimizer,
                backend=backend,
                metadata={"epoch": epoch + 1, "history": logs_history},
            )
        stop = on_epoch_end(epoch + 1, logs) if on_epoch_end is not None else False
        if patience is not None and waited >= patience:
            result.stopped_early = True
            break
        if stop is True:
            result.stopped_early = True
            break
    result.params = best_params if restore_best else params
    return result


def _batches(data: Batches, epoch: int) -> Iterable[Mapping[str, Any]]:
    if callable(data) and not hasattr(data, "__iter__"):
        return data(epoch)
    return data


def _to_backend(batch: Mapping[str, Any], backend: Any) -> dict[str, Any]:
    converted = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray | np.generic | list | float | int):
            info = backend.array_info(value)
            float_kind = np.asarray(value).dtype.kind == "f"
            if info is None or (float_kind and info[1] != backend.dtype.name):
                value = backend.array(np.asarray(value))  # noqa: PLW2901
        converted[key] = value
    return converted


def _accumulate(sums: dict[str, Any], outputs: Mapping[str, Any], backend: Any) -> None:
    """Add every float scalar output to ``sums`` (as backend arrays: no sync)."""
    for key, value in outputs.items():
        info = backend.array_info(value)
        if info is not None:
            scalar = info[0] == () and "float" in info[1]
        else:
            scalar = isinstance(value, float | np.floating)
        if scalar:
            sums[key] = value if key not in sums else sums[key] + value


def _validate(
    pm: Any, params: Mapping[str, Any], data: Batches, epoch: int, backend: Any
) -> dict[str, float]:
    expected = set(pm.input_keys)
    sums: dict[str, Any] = {}
    steps = 0
    for batch in _batches(data, epoch):
        inputs = _to_backend(batch, backend)
        given = {k: v for k, v in params.items() if k in expected}
        outputs = pm.evaluate(given, inputs)
        _accumulate(sums, outputs, backend)
        steps += 1
    if steps == 0:
        return {}
    return {f"val_{k}": float(backend.to_numpy(v)) / steps for k, v in sums.items()}


def _format_logs(logs: Mapping[str, float]) -> str:
    return "  ".join(f"{k} {v:.5g}" for k, v in logs.items())


class _NoBar:
    """Iterates the batches; reports each finished epoch as one printed line (or not
    at all when ``quiet``)."""

    wants_postfix = False

    def __init__(
        self, iterable: Iterable[Any], epoch: int, epochs: int, quiet: bool
    ) -> None:
        self.iterable = iterable
        self.epoch, self.epochs, self.quiet = epoch, epochs, quiet
        self.start = time.perf_counter()

    def __iter__(self) -> Any:
        return iter(self.iterable)

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def set_postfix(self, **values: Any) -> None:
        return None

    def finish(self, logs: Mapping[str, float]) -> None:
        if self.quiet:
            return
        seconds = time.perf_counter() - self.start
        line = f"epoch {self.epoch}/{self.epochs}  {_format_logs(logs)}"
        print(
            f"{line}  ({seconds:.2f} s)",
            file=sys.stderr,
            flush=True,
        )


class _TqdmBar(_NoBar):
    """A ``tqdm`` bar per epoch, left on screen with the epoch's logs."""

    wants_postfix = True

    def __init__(self, iterable: Iterable[Any], epoch: int, epochs: int) -> None:
        from tqdm.auto import tqdm

        total = len(iterable) if hasattr(iterable, "__len__") else None  # type: ignore[arg-type]
        # Updated by hand: a bar that iterates closes itself before the logs are known.
        self.bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}")
        super().__init__(iterable, epoch, epochs, quiet=False)

    def __iter__(self) -> Any:
        for item in self.iterable:
            yield item
            self.bar.update(1)

    def __exit__(self, *exc: object) -> None:
        if exc and exc[0] is not None:
            self.bar.close()

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_postfix(values, refresh=False)

    def finish(self, logs: Mapping[str, float]) -> None:
        self.bar.set_postfix_str(_format_logs(logs), refresh=False)
        self.bar.close()


class _ProgressFactory:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tqdm = False
        if enabled:
            try:
                import tqdm  # noqa: F401
            except ImportError:
                self.tqdm = False
            else:
                self.tqdm = True

    def __call__(self, iterable: Iterable[Any], epoch: int, epochs: int) -> _NoBar:
        if self.enabled and self.tqdm:
            return _TqdmBar(iterable, epoch, epochs)
        return _NoBar(iterable, epoch, epochs, quiet=not self.enabled)
