"""Models shared by the benchmarks: a transformer-like block from core primitives."""

from __future__ import annotations

import math

from mithril_core.models import Buffer, Gelu, IOKey, Linear, Model, Softmax


def layer_norm(x, eps=1e-5):
    mean = x.mean(axis=-1, keepdim=True)
    var = x.var(axis=-1, keepdim=True)
    return (x - mean) / (var + eps).sqrt()


def transformer_block(dim: int, heads: int, name: str | None = None) -> Model:
    block = Model(name=name)
    x = IOKey("input", shape=[None, None, dim])
    B, T, _ = x.shape
    head_dim = dim // heads
    h = layer_norm(x)

    def split_heads(t):
        return t.reshape(B, T, heads, head_dim).transpose(0, 2, 1, 3)

    q = split_heads(Linear(dim, name="query")(h))
    k = split_heads(Linear(dim, name="key")(h))
    v = split_heads(Linear(dim, name="value")(h))
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(head_dim))
    attn = Softmax(axis=-1)(scores) @ v
    attn = attn.transpose(0, 2, 1, 3).reshape(B, T, dim)
    x2 = x + Linear(dim, name="proj")(attn)
    mlp = Linear(dim, name="fc2")(Gelu()(Linear(4 * dim, name="fc1")(layer_norm(x2))))
    block |= Buffer()(x2 + mlp, output=IOKey("output"))
    return block


def transformer_stack(n_blocks: int, dim: int = 64, heads: int = 4) -> Model:
    model = Model(name="stack")
    for i in range(n_blocks):
        block = transformer_block(dim, heads, name=f"block_{i}")
        if i == 0:
            model |= block(input="input")
        else:
            model += block
    model += Buffer()(output=IOKey("output"))
    return model


def mlp(width: int = 256, depth: int = 3) -> Model:
    from mithril_core.models import MLP, Relu

    acts = [Relu() for _ in range(depth - 1)] + [None]
    return MLP(acts, [width] * depth)
