"""Attention layers: MultiHeadAttention and a pre-norm TransformerBlock."""

from __future__ import annotations

from mithril_core.logical import shapes as sh
from mithril_core.logical.connection import Connection, IOKey
from mithril_core.logical.model import Model
from mithril_core.models.composites import (
    Linear,
    symbolic_size,
    template_dim,
    tie_dim,
)
from mithril_core.models.norms import LayerNorm
from mithril_core.primitives import Buffer, Gelu
from mithril_core.primitives.nn import Dropout, ScaledDotProduct


def split_heads(x: Connection, num_heads: int | Connection) -> Connection:
    """``[B, T, E] -> [B, num_heads, T, E // num_heads]``."""
    batch, length, embed = x.shape
    return x.reshape(batch, length, num_heads, embed // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x: Connection) -> Connection:
    """``[B, H, T, D] -> [B, T, H * D]`` (inverse of :func:`split_heads`)."""
    batch, heads, length, head_dim = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch, length, heads * head_dim)


def attend(
    query: Connection,
    key: Connection,
    value: Connection,
    *,
    is_causal: bool = False,
    scale: float | None = None,
) -> Connection:
    """``softmax(query @ key^T * scale) @ value`` over ``[B, H, T, D]`` heads, with an
    optional causal mask (the ``ScaledDotProduct`` primitive)."""
    return ScaledDotProduct(is_causal=is_causal, scale=scale)(
        query=query, key=key, value=value
    )


class MultiHeadAttention(Model):
    """Multi-head attention over batch-first ``[B, T, E]`` inputs (as
    ``torch.nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)``).

    Terminals: ``query`` ``[B, T, E]``, ``key`` and ``value`` ``[B, S, E_kv]``,
    ``output`` ``[B, T, E]``. Children ``query_proj``, ``key_proj``, ``value_proj`` and
    ``out_proj`` are :class:`Linear` layers (weight ``[E, in]``, PyTorch layout), so the
    parameters are ``query_proj_weight``, ``query_proj_bias``, ... ``out_proj_bias``.
    Heads split the projected ``E`` into ``num_heads`` chunks of ``E // num_heads``;
    scores are scaled by ``1 / sqrt(E // num_heads)``; ``is_causal`` masks key positions
    after the query position.

    Loading ``torch.nn.MultiheadAttention`` weights: its ``in_proj_weight`` ``[3E, E]``
    stacks the query, key and value projections, so split it (and ``in_proj_bias``) in
    three along axis 0::

        wq, wk, wv = sd["in_proj_weight"].chunk(3)
        bq, bk, bv = sd["in_proj_bias"].chunk(3)
        params = {"query_proj_weight": wq, "query_proj_bias": bq,
                  "key_proj_weight": wk, "key_proj_bias": bk,
                  "value_proj_weight": wv, "value_proj_bias": bv,
                  "out_proj_weight": sd["out_proj.weight"],
                  "out_proj_bias": sd["out_proj.bias"]}

    :param embed_dim: model width ``E`` (must be divisible by ``num_heads``); an int
        or symbolic (e.g. ``x.shape[2]``).
    :param num_heads: number of heads; an int or symbolic.
    :param use_bias: give the four projections biases.
    :param is_causal: apply a causal (lower-triangular) mask.
    """

    def __init__(
        self,
        embed_dim: int | Connection,
        num_heads: int | Connection,
        use_bias: bool = True,
        is_causal: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        # Symbolic sizes are checked when known: splitting the heads is a reshape of
        # ``E`` into ``[num_heads, E // num_heads]``, which refuses a remainder.
        if isinstance(embed_dim, int) and isinstance(num_heads, int):
            if embed_dim % num_heads:
                msg = (
                    f"MultiHeadAttention: embed_dim {embed_dim} is not divisible by "
                    f"num_heads {num_heads}."
                )
                raise ValueError(msg)
        self.embed_dim, self.num_heads = embed_dim, num_heads
        embed_dim = symbolic_size(self, "embed_dim", embed_dim)
        num_heads = symbolic_size(self, "num_heads", num_heads)
        batch, source = sh.Dim(name="B"), sh.Dim(name="S")
        query = IOKey("query", shape=[batch, "T", None])
        key = IOKey("key", shape=[batch, source, None])
        value = IOKey("value", shape=[batch, source, None])
        q = Linear(embed_dim, use_bias, name="query_proj")(query)
        k = Linear(embed_dim, use_bias, name="key_proj")(key)
        v = Linear(embed_dim, use_bias, name="value_proj")(value)
        heads = attend(
            split_heads(q, num_heads),
            split_heads(k, num_heads),
            split_heads(v, num_heads),
            is_causal=is_causal,
        )
        self |= Linear(embed_dim, use_bias, name="out_proj")(
            input=merge_heads(heads), output=IOKey("output")
        )
        self._cin = self._conns["query"]


class TransformerBlock(Model):
    """Pre-norm transformer block over ``[B, T, dim]``::

        x = x + dropout(attn(ln_1(x)))
        output = x + dropout(mlp(ln_2(x)))     # mlp: fc -> Gelu -> proj

    Children: ``ln_1``, ``attn`` (:class:`MultiHeadAttention`, self-attention),
    ``ln_2``, ``mlp`` (``fc`` ``[mlp_dim, dim]``, ``proj`` ``[dim, mlp_dim]``).
    Dropout is the identity when compiled with ``inference=True``.
    """

    def __init__(
        self,
        dim: int | Connection,
        num_heads: int | Connection,
        mlp_dim: int | Connection,
        dropout: float = 0.0,
        causal: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        dim = symbolic_size(self, "dim", dim)
        num_heads = symbolic_size(self, "num_heads", num_heads)
        mlp_dim = symbolic_size(self, "mlp_dim", mlp_dim)
        x: Connection = IOKey("input", shape=[None, None, template_dim(dim)])
        tie_dim(self, x, -1, dim)
        h = LayerNorm(name="ln_1")(x)
        attn = MultiHeadAttention(dim, num_heads, is_causal=causal, name="attn")
        x = x + _dropout(attn(query=h, key=h, value=h), dropout)
        mlp = Model(name="mlp")
        # The sublayer is a model of its own: symbolic sizes enter it as its inputs.
        mlp_dim = symbolic_size(mlp, "mlp_dim", mlp_dim)
        dim = symbolic_size(mlp, "dim", dim)
        mlp |= Linear(mlp_dim, name="fc")(input=IOKey("input"), output="hidden")
        mlp |= Gelu()(input="hidden", output="activated")
        mlp |= Linear(dim, name="proj")(input="activated", output=IOKey("output"))
        h = mlp(input=LayerNorm(name="ln_2")(x))
        self |= Buffer()(x + _dropout(h, dropout), output=IOKey("output"))
        self._cin = self._conns["input"]


def _dropout(x: Connection, p: float) -> Connection:
    return Dropout(p)(x) if p else x
