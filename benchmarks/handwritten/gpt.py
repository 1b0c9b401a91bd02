"""The seed's GPT-style transformer (fixtures/models/transformer_block.py:TinyGPT), written by hand in Flax NNX.

Attention is computed in (batch, time, head, head_dim) layout with einsums, no
head transposes; the causal mask is built from iota at trace time (a constant
to XLA, no buffer). Dropout (p=0.1 as in the original) on the attention
weights and the residual branches, as torch's module does in train mode.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .mlp import set_linear


class CausalSelfAttention(nnx.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.1, *, rngs: nnx.Rngs):
        self.n_head = n_head
        self.c_attn = nnx.Linear(n_embd, 3 * n_embd, rngs=rngs)
        self.c_proj = nnx.Linear(n_embd, n_embd, rngs=rngs)
        self.attn_dropout = nnx.Dropout(dropout, rngs=rngs)
        self.resid_dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x):
        B, T, C = x.shape
        qkv = self.c_attn(x).reshape(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(x.dtype)
        causal = jnp.tril(jnp.ones((T, T), bool))
        weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
        y = jnp.einsum("bhqk,bkhd->bqhd", self.attn_dropout(weights), v)
        return self.resid_dropout(self.c_proj(y.reshape(B, T, C)))


class MLP(nnx.Module):
    def __init__(self, n_embd: int, dropout: float = 0.1, *, rngs: nnx.Rngs):
        self.c_fc = nnx.Linear(n_embd, 4 * n_embd, rngs=rngs)
        self.c_proj = nnx.Linear(4 * n_embd, n_embd, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x):
        return self.dropout(self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=True)))


class Block(nnx.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float = 0.1, *, rngs: nnx.Rngs):
        self.ln_1 = nnx.LayerNorm(n_embd, epsilon=1e-5, rngs=rngs)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(n_embd, epsilon=1e-5, rngs=rngs)
        self.mlp = MLP(n_embd, dropout, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nnx.Module):
    def __init__(self, vocab_size: int, n_embd: int, n_head: int, n_layer: int, block_size: int, *,
                 rngs: nnx.Rngs):
        self.tok_emb = nnx.Embed(vocab_size, n_embd, rngs=rngs)
        self.pos_emb = nnx.Param(jnp.zeros((1, block_size, n_embd)))
        self.blocks = nnx.List([Block(n_embd, n_head, rngs=rngs) for _ in range(n_layer)])
        self.ln_f = nnx.LayerNorm(n_embd, epsilon=1e-5, rngs=rngs)
        self.head = nnx.Linear(n_embd, vocab_size, use_bias=False, rngs=rngs)

    def __call__(self, idx):
        x = self.tok_emb(idx) + self.pos_emb[:, : idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return jax.nn.log_softmax(self.head(self.ln_f(x)), axis=-1)


def set_layer_norm(layer: nnx.LayerNorm, state_dict, prefix: str) -> None:
    layer.scale[...] = np.asarray(state_dict[f"{prefix}.weight"])
    layer.bias[...] = np.asarray(state_dict[f"{prefix}.bias"])


def load_torch_weights(model: TinyGPT, state_dict) -> None:
    model.tok_emb.embedding[...] = np.asarray(state_dict["tok_emb.weight"])
    model.pos_emb[...] = np.asarray(state_dict["pos_emb"])
    for i, block in enumerate(model.blocks):
        p = f"blocks.{i}"
        set_layer_norm(block.ln_1, state_dict, f"{p}.ln_1")
        set_layer_norm(block.ln_2, state_dict, f"{p}.ln_2")
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            layer = getattr(getattr(block, name.split(".")[0]), name.split(".")[1])
            set_linear(layer, state_dict, f"{p}.{name}")
    set_layer_norm(model.ln_f, state_dict, "ln_f")
    set_linear(model.head, state_dict, "head")
