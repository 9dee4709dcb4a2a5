"""Recurrent layers with PyTorch's parameter names and layouts: RNNCell, LSTMCell, and
RNN/LSTM unrolled over a fixed number of steps (many-to-one)."""

from __future__ import annotations

from mithril_core.errors import MithrilTypeError
from mithril_core.logical import shapes as sh
from mithril_core.logical.connection import Connection, IOKey
from mithril_core.logical.model import Model
from mithril_core.models.composites import symbolic_size
from mithril_core.primitives import Buffer, DimFromValue, Sigmoid, Split, Tanh


class _Weights:
    """``weight_ih [G*H, I]``, ``weight_hh [G*H, H]``, ``bias_ih``/``bias_hh [G*H]``
    IOKeys of one layer (``suffix`` ``"_l0"`` for ``torch.nn.RNN``/``LSTM`` names).

    ``hidden`` is an int or a symbolic size (a connection of ``model``, from
    :meth:`Model.symbolic`); a symbolic one fixes ``H`` and ``G*H`` when its value is
    known, through ``DimFromValue`` children of ``model``."""

    def __init__(
        self,
        model: Model,
        gates: int,
        hidden: int | Connection,
        bias: bool,
        suffix: str = "",
    ) -> None:
        self.hidden = hidden
        size: sh.Dim | int
        stacked: sh.Dim | int
        if isinstance(hidden, Connection):
            size = sh.Dim(name="H")
            stacked = size if gates == 1 else sh.Dim()
        else:
            size, stacked = hidden, gates * hidden
        #: ``H``, for the shapes of the states.
        self.size = size
        self.weight_ih = IOKey(f"weight_ih{suffix}", shape=[stacked, None])
        self.weight_hh = IOKey(f"weight_hh{suffix}", shape=[stacked, size])
        self.bias_ih = IOKey(f"bias_ih{suffix}", shape=[stacked]) if bias else None
        self.bias_hh = IOKey(f"bias_hh{suffix}", shape=[stacked]) if bias else None
        if isinstance(hidden, Connection):
            model |= DimFromValue(axis=1)(input=self.weight_hh, value=hidden)
            if gates > 1:
                total = hidden * gates
                model |= DimFromValue(axis=0)(input=self.weight_hh, value=total)

    def pre_activation(self, x: Connection, h: Connection | None) -> Connection:
        """``x @ W_ih^T + b_ih + h @ W_hh^T + b_hh`` (``h`` ``None``: zeros)."""
        out = x @ self.weight_ih.T
        if self.bias_ih is not None:
            out = out + self.bias_ih
        if h is not None:
            out = out + h @ self.weight_hh.T
        if self.bias_hh is not None:
            out = out + self.bias_hh
        return out


def _rnn_step(w: _Weights, x: Connection, h: Connection | None) -> Connection:
    return Tanh()(w.pre_activation(x, h))


def _lstm_step(
    w: _Weights, x: Connection, h: Connection | None, c: Connection | None
) -> tuple[Connection, Connection]:
    # A symbolic split_size becomes a bound terminal, as in PositionEmbedding.
    split = Split(split_size=w.hidden, axis=-1)  # type: ignore[arg-type]
    gates = split(w.pre_activation(x, h))
    i, f = Sigmoid()(gates[0]), Sigmoid()(gates[1])
    g, o = Tanh()(gates[2]), Sigmoid()(gates[3])
    c_new = i * g if c is None else f * c + i * g
    return o * Tanh()(c_new), c_new


class RNNCell(Model):
    """Elman cell ``h_new = tanh(input @ weight_ih.T + bias_ih + h_prev @ weight_hh.T +
    bias_hh)`` (as ``torch.nn.RNNCell``): ``input`` ``[B, I]``, ``h_prev`` ``[B, H]`` ->
    ``h_new`` ``[B, H]``; ``weight_ih`` ``[H, I]``, ``weight_hh`` ``[H, H]``."""

    def __init__(
        self, hidden_size: int | Connection, bias: bool = True, name: str | None = None
    ) -> None:
        super().__init__(name=name)
        w = _Weights(self, 1, symbolic_size(self, "hidden_size", hidden_size), bias)
        batch = sh.Dim(name="B")
        x = IOKey("input", shape=[batch, None])
        h_prev = IOKey("h_prev", shape=[batch, w.size])
        self |= Buffer()(_rnn_step(w, x, h_prev), output=IOKey("h_new"))
        self._cin = self._conns["input"]
        self._cout = self._exposed["h_new"]


class LSTMCell(Model):
    """LSTM cell as ``torch.nn.LSTMCell``: ``input`` ``[B, I]``, ``h_prev`` and
    ``c_prev`` ``[B, H]`` -> ``h_new``, ``c_new`` ``[B, H]``.

    ``weight_ih`` ``[4H, I]``, ``weight_hh`` ``[4H, H]``, ``bias_ih``/``bias_hh``
    ``[4H]``, gates stacked in the order input, forget, cell (g), output::

        gates = input @ weight_ih.T + bias_ih + h_prev @ weight_hh.T + bias_hh
        i, f, g, o = split(gates, hidden_size, axis=-1)
        c_new = sigmoid(f) * c_prev + sigmoid(i) * tanh(g)
        h_new = sigmoid(o) * tanh(c_new)
    """

    def __init__(
        self, hidden_size: int | Connection, bias: bool = True, name: str | None = None
    ) -> None:
        super().__init__(name=name)
        w = _Weights(self, 4, symbolic_size(self, "hidden_size", hidden_size), bias)
        batch = sh.Dim(name="B")
        x = IOKey("input", shape=[batch, None])
        h_prev = IOKey("h_prev", shape=[batch, w.size])
        c_prev = IOKey("c_prev", shape=[batch, w.size])
        h_new, c_new = _lstm_step(w, x, h_prev, c_prev)
        self |= Buffer()(h_new, output=IOKey("h_new"))
        self |= Buffer()(c_new, output=IOKey("c_new"))
        self._cin = self._conns["input"]
        self._cout = self._exposed["h_new"]


class _ManyToOne(Model):
    _gates = 1

    def __init__(
        self,
        hidden_size: int | Connection,
        num_steps: int,
        masked: bool = False,
        bias: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        if not isinstance(num_steps, int):
            # The steps are unrolled in Python at construction.
            msg = (
                f"{type(self).__name__}: num_steps must be a plain int, got "
                f"{num_steps!r}; hidden_size may be symbolic, num_steps may not."
            )
            raise MithrilTypeError(msg)
        if num_steps < 1:
            msg = f"{type(self).__name__}: num_steps must be >= 1, got {num_steps}."
            raise ValueError(msg)
        self.hidden_size, self.num_steps = hidden_size, num_steps
        batch = sh.Dim(name="B")
        x = IOKey("input", shape=[batch, num_steps, None])
        mask = IOKey("mask", shape=[batch, num_steps]) if masked else None
        hidden = symbolic_size(self, "hidden_size", hidden_size)
        w = _Weights(self, self._gates, hidden, bias, suffix="_l0")
        h: Connection | None = None
        c: Connection | None = None
        for t in range(num_steps):
            h_new, c_new = self._step(w, x[:, t, :], h, c)
            if mask is not None:
                keep = mask[:, t : t + 1]
                h_new = _blend(keep, h_new, h)
                c_new = _blend(keep, c_new, c) if c_new is not None else None
            h, c = h_new, c_new
        assert h is not None
        self |= Buffer()(h, output=IOKey("output"))
        self._cin = self._conns["input"]

    def _step(
        self, w: _Weights, x: Connection, h: Connection | None, c: Connection | None
    ) -> tuple[Connection, Connection | None]:
        return _rnn_step(w, x, h), None


def _blend(keep: Connection, new: Connection, old: Connection | None) -> Connection:
    """``keep * new + (1 - keep) * old`` (``old`` ``None``: zeros)."""
    if old is None:
        return keep * new
    return keep * new + (1.0 - keep) * old


class RNN(_ManyToOne):
    """Single-layer tanh RNN unrolled over ``num_steps`` (many-to-one): ``input``
    ``[B, num_steps, I]`` -> ``output``, the final hidden state ``[B, H]``, starting
    from zeros. Parameters as ``torch.nn.RNN``: ``weight_ih_l0`` ``[H, I]``,
    ``weight_hh_l0``, ``bias_ih_l0``, ``bias_hh_l0``.

    With ``masked=True`` the input ``mask`` ``[B, num_steps]`` (1.0 for real steps, 0.0
    for padding) keeps the previous state on padded steps
    (``h = m * h_new + (1 - m) * h_prev``), so right-padded sequences of different
    lengths give each sequence's last real hidden state, as a packed ``torch.nn.RNN``.
    """


class LSTM(_ManyToOne):
    """Single-layer LSTM unrolled over ``num_steps`` (many-to-one): ``input``
    ``[B, num_steps, I]`` -> ``output``, the final hidden state ``[B, H]``, starting
    from zero hidden and cell states. Parameters as ``torch.nn.LSTM`` (gate order i,
    f, g, o): ``weight_ih_l0`` ``[4H, I]``, ``weight_hh_l0`` ``[4H, H]``,
    ``bias_ih_l0``, ``bias_hh_l0``, so its state dict loads as is.

    With ``masked=True`` the input ``mask`` ``[B, num_steps]`` (1.0 for real steps, 0.0
    for padding) keeps the previous hidden and cell state on padded steps
    (``h = m * h_new + (1 - m) * h_prev``), so right-padded sequences of different
    lengths give the same result as a ``torch.nn.LSTM`` over packed sequences (``h_n``).
    """

    _gates = 4

    def _step(
        self, w: _Weights, x: Connection, h: Connection | None, c: Connection | None
    ) -> tuple[Connection, Connection | None]:
        return _lstm_step(w, x, h, c)
