"""Core primitives, one declaration each (terminals, shape and type rules)."""

from mithril_core.primitives.elementwise import (
    Absolute,
    Add,
    Cast,
    Cosine,
    Divide,
    Equal,
    Exponential,
    FloorDivide,
    Gelu,
    Greater,
    GreaterEqual,
    LeakyRelu,
    Less,
    LessEqual,
    Log,
    LogicalAnd,
    LogicalNot,
    LogicalOr,
    LogicalXor,
    Maximum,
    Minimum,
    Multiply,
    Negate,
    NotEqual,
    Power,
    Relu,
    Sigmoid,
    SiLU,
    Sine,
    Softplus,
    Sqrt,
    StopGradient,
    Subtract,
    Tanh,
    Where,
)
from mithril_core.primitives.linalg import MatrixMultiply
from mithril_core.primitives.nn import LogSoftmax, Softmax
from mithril_core.primitives.reduction import (
    ArgMax,
    ArgMin,
    Max,
    Mean,
    Min,
    Sum,
    Variance,
)
from mithril_core.primitives.shape import (
    Buffer,
    Concat,
    Expand,
    Flatten,
    Indexer,
    Reshape,
    Shape,
    Split,
    Squeeze,
    ToList,
    ToTuple,
    Transpose,
    Unsqueeze,
)
from mithril_core.primitives.state import DimFromValue, ModeSwitch

CORE_PRIMITIVES = (
    Absolute, Add, Cast, Cosine, Divide, Equal, Exponential, FloorDivide, Gelu, Greater,
    GreaterEqual, LeakyRelu, Less, LessEqual, Log, LogicalAnd, LogicalNot, LogicalOr,
    LogicalXor, Maximum, Minimum, Multiply, Negate, NotEqual, Power, Relu, Sigmoid, SiLU,
    Sine, Softplus, Sqrt, StopGradient, Subtract, Tanh, Where, MatrixMultiply, LogSoftmax,
    Softmax, ArgMax, ArgMin, Max, Mean, Min, Sum, Variance, Buffer, Concat, Expand,
    Flatten, Indexer, Reshape, Shape, Split, Squeeze, ToList, ToTuple, Transpose, Unsqueeze,
    DimFromValue, ModeSwitch,
)  # fmt: skip

__all__ = [cls.__name__ for cls in CORE_PRIMITIVES] + ["CORE_PRIMITIVES"]
