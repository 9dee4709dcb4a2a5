"""ResNet-18/34/50 with torchvision's module names, so that a compiled model's parameter
and state keys are torchvision's state-dict keys with ``.`` replaced by ``_``."""

from __future__ import annotations

from mithril_core.logical.connection import IOKey
from mithril_core.logical.model import Model
from mithril_core.models.composites import Linear
from mithril_core.models.conv import Convolution2D
from mithril_core.models.norms import BatchNorm2D
from mithril_core.primitives import Add, Flatten, MaxPool2D, Mean, Relu


def _downsample(channels: int, stride: int) -> Model:
    # torchvision's ``Sequential(conv1x1, BatchNorm2d)``: children named "0" and "1".
    model = Model(name="downsample")
    model += Convolution2D(
        channels, kernel_size=1, stride=stride, use_bias=False, name="0"
    )(input="input")
    model += BatchNorm2D(channels, name="1")(output=IOKey("output"))
    return model


class BasicBlock(Model):
    """torchvision's ``BasicBlock``: two 3x3 convolutions (the first with ``stride``),
    each followed by BatchNorm; the identity (or ``downsample``: 1x1 conv + BatchNorm
    when ``downsample`` is true) is added before the last ReLU."""

    expansion = 1

    def __init__(
        self,
        planes: int,
        stride: int = 1,
        downsample: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self += Convolution2D(
            planes,
            kernel_size=3,
            stride=stride,
            padding=1,
            use_bias=False,
            name="conv1",
        )(input=IOKey("input"))
        self += BatchNorm2D(planes, name="bn1")
        self += Relu()
        self += Convolution2D(
            planes, kernel_size=3, padding=1, use_bias=False, name="conv2"
        )
        self += BatchNorm2D(planes, name="bn2")(output="residual")
        _add_shortcut(self, planes, stride, downsample)


class Bottleneck(Model):
    """torchvision's ``Bottleneck`` (ResNet v1.5: the stride is on the 3x3 convolution):
    1x1 conv to ``planes``, 3x3 conv, 1x1 conv to ``planes * 4``, BatchNorm after each;
    the identity (or ``downsample``) is added before the last ReLU."""

    expansion = 4

    def __init__(
        self,
        planes: int,
        stride: int = 1,
        downsample: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self += Convolution2D(planes, kernel_size=1, use_bias=False, name="conv1")(
            input=IOKey("input")
        )
        self += BatchNorm2D(planes, name="bn1")
        self += Relu()
        self += Convolution2D(
            planes,
            kernel_size=3,
            stride=stride,
            padding=1,
            use_bias=False,
            name="conv2",
        )
        self += BatchNorm2D(planes, name="bn2")
        self += Relu()
        self += Convolution2D(
            planes * self.expansion, kernel_size=1, use_bias=False, name="conv3"
        )
        self += BatchNorm2D(planes * self.expansion, name="bn3")(output="residual")
        _add_shortcut(self, planes * self.expansion, stride, downsample)


def _add_shortcut(block: Model, channels: int, stride: int, downsample: bool) -> None:
    shortcut = "input"
    if downsample:
        block |= _downsample(channels, stride)(input="input", output="shortcut")
        shortcut = "shortcut"
    block |= Add()(left="residual", right=shortcut, output="sum")
    block |= Relu()(input="sum", output=IOKey("output"))


_DEPTHS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


class ResNet(Model):
    """ResNet-``depth`` (18, 34, 50, 101 or 152) for ``[N, 3, H, W]`` images (input
    ``input``, logits ``output`` of shape ``[N, num_classes]``) with torchvision's
    module names: ``conv1``, ``bn1``, ``maxpool``, ``layer1`` .. ``layer4`` (blocks
    ``0``, ``1``, ...), ``avgpool`` (a mean over H and W: adaptive average pooling to
    1x1), ``flatten``, ``fc``. Compile with ``inference=True`` for evaluation mode
    (BatchNorm running statistics)."""

    def __init__(
        self, depth: int, num_classes: int = 1000, name: str | None = None
    ) -> None:
        super().__init__(name=name)
        if depth not in _DEPTHS:
            msg = f"ResNet: depth {depth} is not one of {sorted(_DEPTHS)}."
            raise ValueError(msg)
        block, layers = _DEPTHS[depth]
        self += Convolution2D(
            64, kernel_size=7, stride=2, padding=3, use_bias=False, name="conv1"
        )(input=IOKey("input", shape=[None, 3, None, None]))
        self += BatchNorm2D(64, name="bn1")
        self += Relu(name="relu")
        self += MaxPool2D(kernel_size=3, stride=2, padding=1, name="maxpool")
        in_channels = 64
        for index, (planes, blocks) in enumerate(
            zip((64, 128, 256, 512), layers, strict=True)
        ):
            stride = 1 if index == 0 else 2
            layer = Model(name=f"layer{index + 1}")
            for i in range(blocks):
                block_stride = stride if i == 0 else 1
                downsample = i == 0 and (
                    stride != 1 or in_channels != planes * block.expansion
                )
                layer += block(planes, block_stride, downsample, name=str(i))
                in_channels = planes * block.expansion
            self += layer
        self += Mean(axis=(2, 3), keepdim=True, name="avgpool")
        self += Flatten(start_dim=1, name="flatten")
        self += Linear(num_classes, name="fc")(output=IOKey("output"))


def resnet18(num_classes: int = 1000) -> ResNet:
    """ResNet-18 (``BasicBlock``, layers 2-2-2-2), keys as torchvision's resnet18."""
    return ResNet(18, num_classes, name="resnet18")


def resnet34(num_classes: int = 1000) -> ResNet:
    """ResNet-34 (``BasicBlock``, layers 3-4-6-3), keys as torchvision's resnet34."""
    return ResNet(34, num_classes, name="resnet34")


def resnet50(num_classes: int = 1000) -> ResNet:
    """ResNet-50 (``Bottleneck``, layers 3-4-6-3), keys as torchvision's resnet50."""
    return ResNet(50, num_classes, name="resnet50")
