"""Composite models built from primitives: Linear, MLP."""

from __future__ import annotations

from collections.abc import Sequence

from mithril_core.logical import shapes as sh
from mithril_core.logical.connection import Connection, IOKey
from mithril_core.logical.model import BaseModel, Model
from mithril_core.primitives import Add, DimFromValue, MatrixMultiply, Transpose


def symbolic_size(model: Model, name: str, value: int | Connection) -> int | Connection:
    """``value`` unchanged when it is an int, else the input ``name`` of ``model``
    bound to it (see :meth:`Model.symbolic`): a connection of ``model`` that shape
    arithmetic (``size * 4``, ``size // heads``) and children may read."""
    size = model.symbolic(name, value)
    return model.terminal(size) if isinstance(size, str) else size


def template_dim(size: int | Connection) -> int | None:
    """``size`` as a shape-template entry: the int, or ``None`` (unknown) when
    symbolic; :func:`tie_dim` then fixes it."""
    return size if isinstance(size, int) else None


def tie_dim(model: Model, conn: Connection, axis: int, size: int | Connection) -> None:
    """Fix ``conn.shape[axis]`` to the value of a symbolic ``size`` once it is known
    (a ``DimFromValue`` child of ``model``); an int size is in the template already."""
    if isinstance(size, Connection):
        model |= DimFromValue(axis=axis)(input=conn, value=size)


class Linear(Model):
    """``output = input @ weight.T + bias`` with ``weight`` of shape ``[dimension, in]``
    (PyTorch's layout) and ``bias`` of shape ``[dimension]``."""

    def __init__(
        self,
        dimension: int | Connection | None = None,
        use_bias: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        self.dimension, self.use_bias = dimension, use_bias
        size = self.symbolic("dimension", dimension)
        # One dim for the weight's rows, the bias and the output's last axis: knowing
        # any of them (or the symbolic ``dimension``) fixes the others.
        dim = sh.Dim(size if isinstance(size, int) else None)
        weight = IOKey("weight", shape=[dim, None])
        if isinstance(size, str):
            self |= DimFromValue(axis=0)(input=weight, value=size)
        self |= Transpose(axes=None)(input=weight, output="weight_t")
        product = "product" if use_bias else IOKey("output")
        self |= MatrixMultiply()(left=IOKey("input"), right="weight_t", output=product)
        if use_bias:
            bias = IOKey("bias", shape=[dim])
            self |= Add()(left="product", right=bias, output=IOKey("output"))
        self._cin = self._conns["input"]


class MLP(Model):
    """Stack of ``Linear`` layers (``layer_0`` ...) each followed by its activation
    (``None`` for none)."""

    def __init__(
        self,
        activations: Sequence[BaseModel | None],
        dimensions: Sequence[int | Connection | None],
        use_bias: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if len(activations) != len(dimensions):
            msg = (
                f"MLP: {len(activations)} activations given for {len(dimensions)} "
                "dimensions; give one per layer (None for none)."
            )
            raise ValueError(msg)
        last = len(dimensions) - 1
        # Explicit bindings, not ``+=``: a symbolic dimension pulls its shape
        # arithmetic in as extra children, which must not become the chain's output.
        previous: IOKey | str = IOKey("input")
        for i, (activation, dim) in enumerate(
            zip(activations, dimensions, strict=True)
        ):
            # A symbolic size becomes this model's input, bound when the MLP is added;
            # the layer reads that input (adopting the expression here would pull the
            # caller's connections into the MLP).
            size = self.symbolic(f"dimension_{i}", dim)
            size = self._conns[size] if isinstance(size, str) else size
            layer = Linear(size, use_bias=use_bias, name=f"layer_{i}")
            is_last = i == last and activation is None
            out: IOKey | str = IOKey("output") if is_last else f"layer_{i}_output"
            self |= layer(input=previous, output=out)
            previous = f"layer_{i}_output"
            if activation is not None:
                out = IOKey("output") if i == last else f"activation_{i}_output"
                activation.name = activation.name or f"activation_{i}"
                self |= activation(input=previous, output=out)
                previous = f"activation_{i}_output"
        self._cin = self._conns["input"]
        self._cout = self._conns["output"]
