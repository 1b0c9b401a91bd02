"""Random numbers: where the key comes from (constructor rngs, a Rngs kept on the module, a fixed key
elsewhere, reported), and that the converted modules draw fresh numbers with torch's distributions' shapes."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from porter import convert_source

SOURCE = '''\
import torch
import torch.nn as nn


class Noisy(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = nn.Linear(d, d)
        self.pos = nn.Parameter(torch.randn(1, d) * 0.02)

    def forward(self, x):
        noise = torch.randn_like(x) * 0.1
        keep = x.new_empty(x.shape[0], 1).bernoulli_(0.9)
        perm = torch.randperm(x.shape[0])
        return self.proj(x + noise + self.pos)[perm] * keep


def sample(n):
    return torch.rand(n, 2)
'''


def _convert():
    conversion = convert_source(SOURCE)
    assert not [d for d in conversion.diagnostics if d.severity.value == "error"], conversion.diagnostics
    namespace: dict = {}
    exec(conversion.code, namespace)
    return conversion, namespace


def test_keys_come_from_the_constructor_the_module_or_a_reported_fixed_key():
    conversion, _ = _convert()
    code = conversion.code
    assert "jax.random.normal(rngs.params(), (1, d))" in code  # __init__: the constructor's rngs
    assert code.count("self.rngs = rngs") == 1  # one Rngs kept for every draw in forward
    assert "jax.random.normal(self.rngs(), x.shape, x.dtype)" in code
    assert "jax.random.bernoulli(self.rngs(), 0.9, (x.shape[0], 1)).astype(x.dtype)" in code
    assert "jax.random.permutation(self.rngs(), x.shape[0])" in code
    assert "jax.random.uniform(jax.random.key(0), (n, 2))" in code
    infos = [d for d in conversion.diagnostics if d.code == "PT007"]
    assert any("jax.random.key(0)" in d.message and d.line == 19 for d in infos)


def test_converted_module_draws_fresh_numbers_each_call():
    _, namespace = _convert()
    model = namespace["Noisy"](4, rngs=nnx.Rngs(0))
    x = jnp.ones((8, 4))
    first, second = model(x), model(x)
    assert first.shape == second.shape == (8, 4)
    assert not np.allclose(np.asarray(first), np.asarray(second))  # the stored Rngs advances
    assert model.pos[...].shape == (1, 4)
    jitted = nnx.jit(lambda m, v: m(v))
    assert not np.allclose(np.asarray(jitted(model, x)), np.asarray(jitted(model, x)))
    values = np.asarray(namespace["sample"](1000))
    assert values.shape == (1000, 2) and values.min() >= 0 and values.max() < 1
    assert abs(values.mean() - 0.5) < 0.05
    assert isinstance(jax.random.key(0), jax.Array)
