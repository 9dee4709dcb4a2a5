"""Normalisation layers (PyTorch parameter names and layouts)."""

from __future__ import annotations

from mithril_core.logical import shapes as sh
from mithril_core.logical.connection import Connection, IOKey
from mithril_core.logical.model import Model
from mithril_core.primitives import Buffer, DimFromValue, ModeSwitch


def _normalize(x: Connection, axis: int | tuple[int, ...], eps: float) -> Connection:
    mean = x.mean(axis=axis, keepdim=True)
    var = x.var(axis=axis, keepdim=True)
    return (x - mean) / (var + eps).sqrt()


class LayerNorm(Model):
    """Normalise over the last axis; ``weight``/``bias`` of shape ``[dim]``."""

    def __init__(
        self,
        use_scale: bool = True,
        use_bias: bool = True,
        eps: float = 1e-5,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        dim = sh.Dim(name="dim")
        x = IOKey("input", shape=[("B", ...), dim])
        y = _normalize(x, -1, eps)
        if use_scale:
            y = y * IOKey("weight", shape=[dim])
        if use_bias:
            y = y + IOKey("bias", shape=[dim])
        self |= Buffer()(y, output=IOKey("output"))
        self._cin = self._conns["input"]


class RMSNorm(Model):
    """``x / sqrt(mean(x**2) + eps) * weight`` over the last axis."""

    def __init__(self, eps: float = 1e-6, name: str | None = None) -> None:
        super().__init__(name=name)
        dim = sh.Dim(name="dim")
        x = IOKey("input", shape=[("B", ...), dim])
        y = x / ((x * x).mean(axis=-1, keepdim=True) + eps).sqrt()
        self |= Buffer()(y * IOKey("weight", shape=[dim]), output=IOKey("output"))
        self._cin = self._conns["input"]


class GroupNorm(Model):
    """Normalise ``[N, C, H, W]`` over groups of ``C // num_groups`` channels, with
    per-channel ``weight``/``bias`` of shape ``[C]``; ``num_groups`` may be symbolic
    (e.g. ``input.shape[1] // 4``)."""

    def __init__(
        self,
        num_groups: int | Connection,
        eps: float = 1e-5,
        affine: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        groups = self.symbolic("num_groups", num_groups)
        groups = self._conns[groups] if isinstance(groups, str) else groups
        channels = sh.Dim(name="C")
        x = IOKey("input", shape=["N", channels, "H", "W"])
        n = x.shape[0]
        y = _normalize(x.reshape(n, groups, -1), -1, eps).reshape(x.shape)
        if affine:
            y = y * IOKey("weight", shape=[channels]).reshape(-1, 1, 1)
            y = y + IOKey("bias", shape=[channels]).reshape(-1, 1, 1)
        self |= Buffer()(y, output=IOKey("output"))
        self._cin = self._conns["input"]


class BatchNorm2D(Model):
    """Batch normalisation of ``[N, C, H, W]`` over N, H, W.

    Training uses batch statistics; ``running_mean``/``running_var`` (shape ``[C]``) are
    state: supplied with the params, initialised to 0 and 1, used when compiled with
    ``inference=True``, and returned updated (``momentum`` as PyTorch, unbiased
    variance) as the outputs ``<key>_updated`` when compiled for training.
    """

    def __init__(
        self,
        num_features: int | Connection | None = None,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        size = self.symbolic("num_features", num_features)
        channels = sh.Dim(size if isinstance(size, int) else None, name="C")
        x = IOKey("input", shape=["N", channels, "H", "W"])
        running_mean = IOKey("running_mean", shape=[channels])
        if isinstance(size, str):
            self |= DimFromValue(axis=0)(input=running_mean, value=size)
        running_var = IOKey("running_var", shape=[channels])
        axes = (0, 2, 3)
        batch_mean = x.mean(axis=axes)
        batch_var = x.var(axis=axes)
        mean = ModeSwitch()(training=batch_mean, inference_value=running_mean)
        var = ModeSwitch()(training=batch_var, inference_value=running_var)
        y = (x - mean.reshape(1, -1, 1, 1)) / (var.reshape(1, -1, 1, 1) + eps).sqrt()
        if affine:
            y = y * IOKey("weight", shape=[channels]).reshape(1, -1, 1, 1)
            y = y + IOKey("bias", shape=[channels]).reshape(1, -1, 1, 1)
        self |= Buffer()(y, output=IOKey("output"))
        unbiased = x.var(axis=axes, correction=1)
        new_mean = running_mean * (1 - momentum) + batch_mean * momentum
        new_var = running_var * (1 - momentum) + unbiased * momentum
        self |= Buffer()(new_mean, output="running_mean_new")
        self |= Buffer()(new_var, output="running_var_new")
        self._cin = self._conns["input"]
        self._cout = self._exposed["output"]
        self.add_state("running_mean", 0.0, self._conns["running_mean_new"])
        self.add_state("running_var", 1.0, self._conns["running_var_new"])
