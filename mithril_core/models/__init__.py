"""The user-facing model API: ``Model``, ``Operator``, ``IOKey``, primitives, composites."""

from mithril_core.logical.connection import Connection, IOKey
from mithril_core.logical.model import BaseModel, Model, Operator, Primitive
from mithril_core.logical.types import Tensor
from mithril_core.models.composites import MLP, Linear
from mithril_core.models.norms import BatchNorm2D, GroupNorm, LayerNorm, RMSNorm
from mithril_core.primitives import *  # noqa: F403 - re-export every core primitive
from mithril_core.primitives import CORE_PRIMITIVES

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
    *(cls.__name__ for cls in CORE_PRIMITIVES),
]
