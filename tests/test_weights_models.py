"""Small torch models and hand-written converted-style Flax NNX mirrors, for the weights/check tests.

Not a test module itself: tests/test_weights.py and tests/test_check.py load
it by path (porter.check.modelspec.import_file), so it works whatever import
mode pytest runs in. The mirrors follow the converter's structure contract:
same attribute names, nnx.Sequential/List/Dict, ChannelsFirstConv, Buffer.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
from flax import nnx

from porter.emitted import Buffer, ChannelsFirstConv, max_pool_nchw

# ---------------------------------------------------------------- torch originals


class TBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(torch.relu(self.ln(x)))


class TNet(nn.Module):
    """Conv2d/BatchNorm2d/Sequential/ModuleList/ModuleDict/Parameter/buffers; input (N, 3, 8, 8)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 4, 3, bias=False),
        )
        self.proj = nn.Linear(4 * 2 * 2, 16)
        self.blocks = nn.ModuleList([TBlock(16), TBlock(16)])
        self.heads = nn.ModuleDict({"cls": nn.Linear(16, 5), "reg": nn.Linear(16, 1)})
        self.scale = nn.Parameter(torch.ones(16))
        self.register_buffer("shift", torch.zeros(16))
        self.register_buffer("mask", torch.ones(16), persistent=False)

    def forward(self, x):
        h = self.features(x)
        h = self.proj(h.flatten(1))
        h = h * self.scale + self.shift * self.mask
        for block in self.blocks:
            h = block(h)
        return {"cls": self.heads["cls"](h), "reg": self.heads["reg"](h)}


class TTok(nn.Module):
    """Embedding + LayerNorm + Linear on token ids; returns a tuple."""

    def __init__(self, vocab=50, d=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)

    def forward(self, ids):
        h = self.norm(self.embed(ids))
        return self.out(h), h


class TTied(nn.Module):
    """A language-model head tied to the embedding (`head.weight = embed.weight`, as GPT-2 does)."""

    def __init__(self, vocab=40, d=12):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.norm(self.embed(ids)))


class TShared(nn.Module):
    """Two Linear layers sharing one weight (an autoencoder with tied encoder/decoder)."""

    def __init__(self, d=6):
        super().__init__()
        self.enc = nn.Linear(d, d)
        self.dec = nn.Linear(d, d)
        self.dec.weight = self.enc.weight

    def forward(self, x):
        return self.dec(torch.tanh(self.enc(x)))


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter and buffer (BatchNorm/LayerNorm defaults are too regular)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                tensor.fill_(7)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)
    return model


# ---------------------------------------------------------------- converted-style mirrors


class FBlock(nnx.Module):
    def __init__(self, d, *, rngs: nnx.Rngs, act=jax.nn.relu):
        self.ln = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
        self.fc = nnx.Linear(d, d, rngs=rngs)
        self.act = act

    def __call__(self, x):
        return x + self.fc(self.act(self.ln(x)))


class FNet(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs, act=jax.nn.relu, stop_grad=False, swap_blocks=False):
        self.features = nnx.Sequential(
            ChannelsFirstConv(3, 8, kernel_size=(3, 3), padding=((1, 1), (1, 1)), rngs=rngs),
            nnx.BatchNorm(8, axis=1, momentum=0.9, epsilon=1e-5, rngs=rngs),
            jax.nn.relu,
            partial(max_pool_nchw, window_shape=(2, 2), strides=(2, 2)),
            ChannelsFirstConv(8, 4, kernel_size=(3, 3), padding=((0, 0), (0, 0)), use_bias=False, rngs=rngs),
        )
        self.proj = nnx.Linear(4 * 2 * 2, 16, rngs=rngs)
        self.blocks = nnx.List([FBlock(16, rngs=rngs, act=act), FBlock(16, rngs=rngs)])
        self.heads = nnx.Dict({"cls": nnx.Linear(16, 5, rngs=rngs), "reg": nnx.Linear(16, 1, rngs=rngs)})
        self.scale = nnx.Param(jnp.ones(16))
        self.shift = Buffer(jnp.zeros(16))
        self.mask = Buffer(jnp.ones(16), persistent=False)
        self.stop_grad = stop_grad
        self.swap_blocks = swap_blocks

    def __call__(self, x):
        h = self.features(x)
        h = self.proj(h.reshape(h.shape[0], -1))
        scale = jax.lax.stop_gradient(self.scale[...]) if self.stop_grad else self.scale[...]
        h = h * scale + self.shift[...] * self.mask[...]
        blocks = list(self.blocks)[::-1] if self.swap_blocks else self.blocks
        for block in blocks:
            h = block(h)
        return {"cls": self.heads["cls"](h), "reg": self.heads["reg"](h)}


class FTok(nnx.Module):
    def __init__(self, vocab=50, d=12, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.norm = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
        self.out = nnx.Linear(d, vocab, rngs=rngs)

    def __call__(self, ids):
        h = self.norm(self.embed(ids))
        return self.out(h), h


class FTied(nnx.Module):
    """The converted TTied: the head is the embedding's transpose (`embed.attend`), one variable."""

    def __init__(self, vocab=40, d=12, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.norm = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)

    def __call__(self, ids):
        return self.embed.attend(self.norm(self.embed(ids)))


class FShared(nnx.Module):
    """The converted TShared: one nnx.Param shared by both layers."""

    def __init__(self, d=6, *, rngs: nnx.Rngs):
        self.enc = nnx.Linear(d, d, rngs=rngs)
        self.dec = nnx.Linear(d, d, rngs=rngs)
        self.dec.kernel = self.enc.kernel

    def __call__(self, x):
        return self.dec(jnp.tanh(self.enc(x)))


def net_input(seed=0, batch=2):
    return np.random.default_rng(seed).standard_normal((batch, 3, 8, 8)).astype(np.float32)
