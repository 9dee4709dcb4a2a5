"""Backend-agnostic optimizers: ``SGD``, ``Adam``, ``AdamW``.

State lives in arrays of the params' own backend (NumPy, PyTorch, JAX, MLX) and every
update uses only the arrays' arithmetic (``+ - * /``, ``**``; square roots are
``x ** 0.5``), so one implementation runs on every backend, arrays stay on their device
and keep their dtype. The update rules are PyTorch's (``torch.optim``), step for step.

```python
optimizer = Adam(lr=1e-3)
params = optimizer.step(params, grads)     # a new params dict; arrays are not mutated
```
Keys of ``params`` without a gradient (state such as running statistics) are passed
through unchanged. ``state_dict()`` / ``load_state_dict()`` give the state (arrays and
numbers) for checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["SGD", "Adam", "AdamW", "Optimizer"]

LearningRate = float | Callable[[int], float]


class Optimizer:
    """Base class: a per-key update rule with state, and a step counter.

    ``lr`` is a number or a schedule ``step -> lr`` (``step`` counts from 0).
    Subclasses list their per-key state arrays in ``slots`` and implement
    :meth:`update`.
    """

    slots: tuple[str, ...] = ()

    def __init__(self, lr: LearningRate) -> None:
        if not callable(lr) and lr < 0:
            msg = f"{type(self).__name__}: invalid learning rate {lr}."
            raise ValueError(msg)
        self.lr = lr
        self.step_count = 0
        self.state: dict[str, dict[str, Any]] = {slot: {} for slot in self.slots}

    def current_lr(self) -> float:
        """Learning rate of the next step."""
        lr = self.lr
        return float(lr(self.step_count)) if callable(lr) else float(lr)

    def step(
        self, params: Mapping[str, Any], grads: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Return updated params: every key of ``params`` with a gradient in ``grads``
        is updated, the others are passed through. Increments ``step_count``."""
        lr = self.current_lr()
        self.step_count += 1
        updated = dict(params)
        for key, grad in grads.items():
            if key not in params or grad is None:
                continue
            param = params[key]
            new = self.update(key, param, grad, lr)
            if isinstance(new, np.generic) and isinstance(param, np.ndarray):
                new = np.asarray(new)  # NumPy turns 0-d array arithmetic into scalars
            updated[key] = new
        return updated

    def update(self, key: str, param: Any, grad: Any, lr: float) -> Any:
        """Return the new value of ``param`` (and update this key's state)."""
        raise NotImplementedError

    def zero_state(self) -> None:
        """Forget all state (momenta) and reset the step counter."""
        self.step_count = 0
        self.state = {slot: {} for slot in self.slots}

    # -- checkpoints -------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        """Numbers that define the optimizer (saved with checkpoints for reference)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """``{"step_count": int, "state": {slot: {key: array}}}`` (arrays are the live
        state arrays; they are never mutated in place)."""
        return {
            "step_count": self.step_count,
            "state": {slot: dict(values) for slot, values in self.state.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (arrays must be of the params'
        backend)."""
        self.step_count = int(state["step_count"])
        loaded = state.get("state", {})
        unknown = set(loaded) - set(self.slots)
        if unknown:
            msg = (
                f"{type(self).__name__}.load_state_dict: unknown state slots "
                f"{sorted(unknown)}; expected {list(self.slots)}."
            )
            raise KeyError(msg)
        self.state = {slot: dict(loaded.get(slot, {})) for slot in self.slots}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent as ``torch.optim.SGD``.

    ``g = grad + weight_decay * p``; with momentum ``buf = g`` on the first step, then
    ``buf = momentum * buf + (1 - dampening) * g``, and ``g = g + momentum * buf``
    (nesterov) or ``g = buf``; finally ``p = p - lr * g``.
    """

    slots = ("momentum_buffer",)

    def __init__(
        self,
        lr: LearningRate = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ) -> None:
        super().__init__(lr)
        if nesterov and (momentum <= 0 or dampening != 0):
            msg = "SGD: nesterov momentum requires a momentum and zero dampening."
            raise ValueError(msg)
        self.momentum = momentum
        self.dampening = dampening
        self.weight_decay = weight_decay
        self.nesterov = nesterov

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "momentum": self.momentum,
            "dampening": self.dampening,
            "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
        }

    def update(self, key: str, param: Any, grad: Any, lr: float) -> Any:
        if self.weight_decay:
            grad = grad + self.weight_decay * param
        if self.momentum:
            buffers = self.state["momentum_buffer"]
            buf = buffers.get(key)
            if buf is None:
                buf = grad
            else:
                buf = self.momentum * buf + (1 - self.dampening) * grad
            buffers[key] = buf
            grad = grad + self.momentum * buf if self.nesterov else buf
        return param - lr * grad


class Adam(Optimizer):
    """Adam as ``torch.optim.Adam`` (L2 ``weight_decay`` added to the gradient).

    ``m = b1 * m + (1 - b1) * g``, ``v = b2 * v + (1 - b2) * g * g`` and
    ``p = p - lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)``.
    """

    slots = ("exp_avg", "exp_avg_sq")
    decoupled = False

    def __init__(
        self,
        lr: LearningRate = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(lr)
        beta1, beta2 = betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
            msg = f"{type(self).__name__}: betas must be in [0, 1), got {betas}."
            raise ValueError(msg)
        self.betas = (float(beta1), float(beta2))
        self.eps = eps
        self.weight_decay = weight_decay

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "betas": self.betas,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }

    def step(
        self, params: Mapping[str, Any], grads: Mapping[str, Any]
    ) -> dict[str, Any]:
        t = self.step_count + 1
        beta1, beta2 = self.betas
        self._bias1 = 1 - beta1**t
        self._bias2_sqrt = (1 - beta2**t) ** 0.5
        return super().step(params, grads)

    def update(self, key: str, param: Any, grad: Any, lr: float) -> Any:
        beta1, beta2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                param = param * (1 - lr * self.weight_decay)
            else:
                grad = grad + self.weight_decay * param
        exp_avg = self.state["exp_avg"].get(key)
        # Both moments are set together: exp_avg_sq is there when exp_avg is.
        exp_avg_sq: Any = self.state["exp_avg_sq"].get(key)
        if exp_avg is None:
            exp_avg = (1 - beta1) * grad
            exp_avg_sq = (1 - beta2) * (grad * grad)
        else:
            exp_avg = beta1 * exp_avg + (1 - beta1) * grad
            exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * (grad * grad)
        self.state["exp_avg"][key] = exp_avg
        self.state["exp_avg_sq"][key] = exp_avg_sq
        step_size = lr / self._bias1
        denom = exp_avg_sq**0.5 / self._bias2_sqrt + self.eps
        return param - step_size * (exp_avg / denom)


class AdamW(Adam):
    """AdamW as ``torch.optim.AdamW``: Adam with decoupled weight decay
    ``p = p * (1 - lr * weight_decay)`` before the Adam step (default 0.01)."""

    decoupled = True

    def __init__(
        self,
        lr: LearningRate = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ) -> None:
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
