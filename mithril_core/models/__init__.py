"""The user-facing model API: ``Model``, ``Operator``, ``IOKey``, primitives and
composites."""

from mithril_core.logical.connection import Connection, IOKey
from mithril_core.logical.model import BaseModel, Model, Operator, Primitive
from mithril_core.logical.types import Tensor
from mithril_core.models.attention import MultiHeadAttention, TransformerBlock
from mithril_core.models.composites import MLP, Linear
from mithril_core.models.gpt import gpt2
from mithril_core.models.norms import BatchNorm2D, GroupNorm, LayerNorm, RMSNorm
from mithril_core.models.recurrent import LSTM, RNN, LSTMCell, RNNCell
from mithril_core.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet18,
    resnet34,
    resnet50,
)
from mithril_core.primitives import *  # noqa: F403 - re-export every core primitive
from mithril_core.primitives import CORE_PRIMITIVES

# isort: split
# The composites (with weight and bias) deliberately shadow the primitives of the same
# name, which stay importable from mithril_core.primitives (renaming either would change
# default child names, hence parameter keys, and saved documents' class names).
from mithril_core.models.conv import (  # type: ignore[assignment]
    Convolution1D,
    Convolution2D,
)

__all__ = [
    "MLP",
    "BatchNorm2D",
    "GroupNorm",
    "LayerNorm",
    "RMSNorm",
    "BaseModel",
    "Connection",
    "IOKey",
    "Linear",
    "Model",
    "Operator",
    "Primitive",
    "Tensor",
    "MultiHeadAttention",
    "TransformerBlock",
    "gpt2",
    "LSTM",
    "LSTMCell",
    "RNN",
    "RNNCell",
    "BasicBlock",
    "Bottleneck",
    "Convolution1D",
    "Convolution2D",
    "ResNet",
    "resnet18",
    "resnet34",
    "resnet50",
    *(cls.__name__ for cls in CORE_PRIMITIVES),
]
