"""Convolution layers with weight and bias (PyTorch's ``Conv1d``/``Conv2d`` names and
layouts), built on the ``conv1d``/``conv2d`` primitives."""

from __future__ import annotations

from typing import Any

from mithril_core.logical import shapes as sh
from mithril_core.logical.connection import Connection, IOKey
from mithril_core.logical.model import Model
from mithril_core.primitives import Buffer, DimFromValue
from mithril_core.primitives import Convolution1D as _Conv1DPrimitive
from mithril_core.primitives import Convolution2D as _Conv2DPrimitive

Size = int | tuple[int, ...]


def _kernel(kernel_size: Size, rank: int) -> list[int]:
    sizes = [kernel_size] * rank if isinstance(kernel_size, int) else list(kernel_size)
    if len(sizes) != rank:
        msg = f"kernel_size {kernel_size!r}: expected an int or {rank} ints."
        raise ValueError(msg)
    return sizes


class _Convolution(Model):
    _rank = 0
    _primitive: Any = None

    def __init__(
        self,
        out_channels: int | Connection | None,
        kernel_size: Size,
        stride: Size = 1,
        padding: Size | str = 0,
        dilation: Size = 1,
        groups: int | Connection = 1,
        use_bias: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        out = self.symbolic("out_channels", out_channels)
        dim = sh.Dim(out if isinstance(out, int) else None, name="out_channels")
        weight = IOKey("weight", shape=[dim, None, *_kernel(kernel_size, self._rank)])
        if isinstance(out, str):
            self |= DimFromValue(axis=0)(input=weight, value=out)
        conv = self._primitive(
            stride=stride, padding=padding, dilation=dilation, name="conv"
        )
        result = "conv_output" if use_bias else IOKey("output")
        self |= conv(
            input=IOKey("input"),
            weight=weight,
            groups=self.symbolic("groups", groups),
            output=result,
        )
        if use_bias:
            bias = IOKey("bias", shape=[dim]).reshape(1, -1, *([1] * self._rank))
            self |= Buffer()(self.conv_output + bias, output=IOKey("output"))
        self._cin = self._conns["input"]
        self._cout = self._exposed["output"]


class Convolution1D(_Convolution):
    """1-D convolution of ``input [N, C_in, L]`` with ``weight [out_channels, C_in /
    groups, kernel_size]`` plus ``bias [out_channels]`` (when ``use_bias``), as
    ``torch.nn.Conv1d``. ``padding`` is an int or ``"same"``/``"valid"``;
    ``out_channels`` and ``groups`` may be symbolic (e.g. ``input.shape[1]``)."""

    _rank = 1
    _primitive = _Conv1DPrimitive


class Convolution2D(_Convolution):
    """2-D convolution of ``input [N, C_in, H, W]`` with ``weight [out_channels, C_in /
    groups, kh, kw]`` plus ``bias [out_channels]`` (when ``use_bias``), as
    ``torch.nn.Conv2d``. ``kernel_size``, ``stride``, ``padding`` and ``dilation`` are
    ints or pairs (``padding`` also ``"same"``/``"valid"``); ``out_channels`` and
    ``groups`` may be symbolic (e.g. ``input.shape[1]`` for a depthwise convolution)."""

    _rank = 2
    _primitive = _Conv2DPrimitive
