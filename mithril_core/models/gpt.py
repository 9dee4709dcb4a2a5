"""GPT-2 with the parameter names and layouts of ``transformers``' GPT2LMHeadModel."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from mithril_core.errors import MithrilTypeError
from mithril_core.logical import shapes as sh
from mithril_core.logical.connection import Connection, IOKey
from mithril_core.logical.model import Model
from mithril_core.logical.types import Tensor
from mithril_core.models.attention import attend, merge_heads, split_heads
from mithril_core.models.composites import (
    Linear,
    symbolic_size,
    template_dim,
    tie_dim,
)
from mithril_core.models.norms import LayerNorm
from mithril_core.primitives import Buffer, Gelu, Split
from mithril_core.primitives.nn import Embedding


class Conv1D(Model):
    """Hugging Face's ``Conv1D`` (a linear layer with transposed weight):
    ``output = input @ weight + bias`` with ``weight`` ``[in, dimension]`` and ``bias``
    ``[dimension]``."""

    def __init__(self, dimension: int | Connection, name: str | None = None) -> None:
        super().__init__(name=name)
        self.dimension = dimension
        size = symbolic_size(self, "dimension", dimension)
        dim = sh.Dim(template_dim(size))
        x = IOKey("input", shape=[("B", ...), None])
        weight = IOKey("weight", shape=[None, dim])
        tie_dim(self, weight, 1, size)
        y = x @ weight
        self |= Buffer()(y + IOKey("bias", shape=[dim]), output=IOKey("output"))
        self._cin = self._conns["input"]


def _sequence_input(
    model: Model, n_embd: int | Connection, n_head: int | Connection
) -> tuple[Connection, int | Connection, int | Connection]:
    """The ``input`` ``[B, T, n_embd]`` of a GPT-2 block or attention layer, with its
    sizes made inputs of ``model`` when symbolic (see :func:`symbolic_size`)."""
    n_embd = symbolic_size(model, "n_embd", n_embd)
    n_head = symbolic_size(model, "n_head", n_head)
    x = IOKey("input", shape=[None, None, template_dim(n_embd)])
    tie_dim(model, x, -1, n_embd)
    return x, n_embd, n_head


class GPT2Attention(Model):
    """Causal self-attention of GPT-2: fused ``c_attn`` (``[E, 3E]``) computing query,
    key and value, heads of ``E // n_head``, scale ``1 / sqrt(E // n_head)``, and
    ``c_proj`` (``[E, E]``)."""

    def __init__(
        self,
        n_embd: int | Connection,
        n_head: int | Connection,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        x, n_embd, n_head = _sequence_input(self, n_embd, n_head)
        qkv = Conv1D(3 * n_embd, name="c_attn")(x)
        parts = Split(split_size=n_embd, axis=-1)(qkv)  # type: ignore[arg-type]
        q, k, v = (split_heads(parts[i], n_head) for i in range(3))
        # ``None`` is the same 1 / sqrt(head dim), taken from the shapes at compile.
        scale = None
        if isinstance(n_embd, int) and isinstance(n_head, int):
            scale = (n_embd // n_head) ** -0.5
        heads = attend(q, k, v, is_causal=True, scale=scale)
        self |= Conv1D(n_embd, name="c_proj")(
            input=merge_heads(heads), output=IOKey("output")
        )
        self._cin = self._conns["input"]


class GPT2Block(Model):
    """``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``, the MLP being ``c_fc``
    (``[E, 4E]``), tanh-approximated GELU, ``c_proj`` (``[4E, E]``)."""

    def __init__(
        self,
        n_embd: int | Connection,
        n_head: int | Connection,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        x, n_embd, n_head = _sequence_input(self, n_embd, n_head)
        x = x + GPT2Attention(n_embd, n_head, name="attn")(LayerNorm(name="ln_1")(x))
        mlp = Model(name="mlp")
        # The sublayer is a model of its own: a symbolic size enters it as its input.
        n_embd = symbolic_size(mlp, "n_embd", n_embd)
        mlp |= Conv1D(4 * n_embd, name="c_fc")(input=IOKey("input"), output="hidden")
        mlp |= Gelu(approximate=True)(input="hidden", output="activated")
        mlp |= Conv1D(n_embd, name="c_proj")(input="activated", output=IOKey("output"))
        x = x + mlp(input=LayerNorm(name="ln_2")(x))
        self |= Buffer()(x, output=IOKey("output"))
        self._cin = self._conns["input"]


class PositionEmbedding(Model):
    """Rows ``0 .. T-1`` of ``weight`` (``[block_size, n_embd]``), ``T`` being
    ``input.shape[1]`` (``input``: token ids ``[B, T]``); ``T`` must be known at compile
    time and at most ``block_size``."""

    def __init__(
        self,
        block_size: int | Connection,
        n_embd: int | Connection,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        block_size = symbolic_size(self, "block_size", block_size)
        n_embd = symbolic_size(self, "n_embd", n_embd)
        tokens = IOKey("input", shape=[None, None])
        shape = [template_dim(block_size), template_dim(n_embd)]
        weight = IOKey("weight", shape=shape)
        tie_dim(self, weight, 0, block_size)
        tie_dim(self, weight, 1, n_embd)
        length = tokens.shape[1]
        # Split's first chunk is weight[:T], with T symbolic until shapes are known.
        split = Split(split_size=length, axis=0)  # type: ignore[arg-type]
        rows = split(weight)[0]
        self |= Buffer()(rows, output=IOKey("output"))
        self._cin = self._conns["input"]


def gpt2(
    vocab_size: int,
    block_size: int,
    n_layer: int,
    n_head: int,
    n_embd: int,
    name: str | None = "gpt2",
) -> Model:
    """GPT-2 language model: ``input`` (int token ids ``[B, T]``, ``T <= block_size``
    known at compile) -> ``logits`` ``[B, T, vocab_size]``.

    Parameter keys are a ``transformers`` ``GPT2LMHeadModel`` state dict's keys with
    ``.`` replaced by ``_``, with the same shapes (Hugging Face ``Conv1D`` layout:
    weight ``[in, out]``, ``y = x @ W + b``): ``transformer_wte_weight``,
    ``transformer_wpe_weight``, ``transformer_h_{i}_ln_1_weight``/``_bias``,
    ``transformer_h_{i}_attn_c_attn_weight`` ``[n_embd, 3 * n_embd]``/``_bias``,
    ``transformer_h_{i}_attn_c_proj_*``, ``transformer_h_{i}_ln_2_*``,
    ``transformer_h_{i}_mlp_c_fc_*``, ``transformer_h_{i}_mlp_c_proj_*``,
    ``transformer_ln_f_*`` and ``lm_head_weight`` ``[vocab_size, n_embd]``.

    Hugging Face ties ``lm_head.weight`` to ``transformer.wte.weight``; its state dict
    still holds both, so here ``lm_head_weight`` is a separate parameter: load both keys
    (the same tensor) for GPT-2's tied behaviour; training updates them separately.

    Loading: ``pm.load_weights(hf_model.state_dict())``; for a checkpoint file (which
    may lack ``lm_head.weight`` or the ``transformer.`` prefix, or hold old causal-mask
    buffers) ``pm.load_weights(gpt2_state_dict("model.safetensors"))``.
    """
    sizes = {
        "vocab_size": vocab_size,
        "block_size": block_size,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
    }
    for argument, size in sizes.items():
        if isinstance(size, Connection):
            # n_layer counts Python-built blocks; the others would have to enter
            # three nested models and the embedding primitive as symbolic inputs.
            msg = (
                f"gpt2: {argument} must be a plain int, got the symbolic {size!r}. "
                "Build the model from GPT2Block, GPT2Attention, PositionEmbedding "
                "and Conv1D, which take symbolic sizes."
            )
            raise MithrilTypeError(msg)
    transformer = Model(name="transformer")
    tokens = IOKey("input", shape=[None, None], type=Tensor[int])
    tok_emb = Embedding(vocab_size, n_embd, name="wte")(input=tokens)
    pos_emb = PositionEmbedding(block_size, n_embd, name="wpe")(input=tokens)
    blocks = Model(name="h")
    x: Connection = IOKey("input", shape=[None, None, n_embd])
    for i in range(n_layer):
        x = GPT2Block(n_embd, n_head, name=str(i))(x)
    blocks |= Buffer()(x, output=IOKey("output"))
    hidden = blocks(input=tok_emb + pos_emb)
    transformer |= LayerNorm(name="ln_f")(input=hidden, output=IOKey("output"))
    model = Model(name=name)
    model |= transformer(input=IOKey("input"), output="hidden")
    model |= Linear(vocab_size, use_bias=False, name="lm_head")(
        input="hidden", output=IOKey("logits")
    )
    return model


def gpt2_state_dict(
    source: Mapping[str, Any] | str | os.PathLike[str],
) -> dict[str, Any]:
    """A ``transformers`` GPT-2 checkpoint as a ``GPT2LMHeadModel`` state dict that
    ``pm.load_weights`` takes for a :func:`gpt2` model: keys of a ``GPT2Model``
    (``h.0.attn.c_attn.weight``) get the ``transformer.`` prefix, the causal-mask
    buffers of older checkpoints (``attn.bias``, ``attn.masked_bias``) are dropped, and
    a missing ``lm_head.weight`` is the tied ``transformer.wte.weight``.

    :param source: A state dict, or a ``.safetensors`` / ``.pt`` / ``.bin`` file path.
    :returns: Key -> tensor, with PyTorch's dotted keys.
    """
    from mithril_core.weights import read_weights

    state: dict[str, Any] = {}
    for key, value in read_weights(source).items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if not key.startswith(("transformer.", "lm_head.")):
            key = f"transformer.{key}"
        state[key] = value
    if "lm_head.weight" not in state and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


__all__ = [
    "Conv1D",
    "GPT2Attention",
    "GPT2Block",
    "PositionEmbedding",
    "gpt2",
    "gpt2_state_dict",
]
