"""Random numbers: where the key comes from (constructor rngs, a Rngs kept on the module, a module-level
Rngs seeded as torch.manual_seed seeds elsewhere), and that the converted code draws fresh numbers with
torch's distributions' shapes."""

import textwrap

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


def test_keys_come_from_the_constructor_the_module_or_the_module_level_rngs():
    conversion, _ = _convert()
    code = conversion.code
    assert "jax.random.normal(rngs.params(), (1, d))" in code  # __init__: the constructor's rngs
    assert code.count("self.rngs = rngs") == 1  # one Rngs kept for every draw in forward
    assert "jax.random.normal(self.rngs(), x.shape, x.dtype)" in code
    assert "jax.random.bernoulli(self.rngs(), 0.9, (x.shape[0], 1)).astype(x.dtype)" in code
    assert "jax.random.permutation(self.rngs(), x.shape[0])" in code
    assert "jax.random.uniform(_rngs(), (n, 2))" in code  # outside modules: the module-level Rngs
    assert "_rngs = nnx.Rngs(0)" in code and "jax.random.key(0)" not in code
    infos = [d for d in conversion.diagnostics if d.code == "PT007"]
    assert any("_rngs" in d.message and "from 0" in d.message and d.line == 19 for d in infos)


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


GET_BATCH = """\
import numpy as np
import torch

data = np.arange(1000, dtype=np.int64)
block_size, batch_size = 8, 4
torch.manual_seed(SEED)


def get_batch():
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([torch.from_numpy(data[i:i + block_size]) for i in ix])
    return ix, x


def noise(n):
    return torch.randn(n, 3), torch.rand(n), torch.randperm(n)
"""


def _run(source: str) -> dict:
    namespace: dict = {}
    exec(compile(source, "<get_batch>", "exec"), namespace)
    return namespace


def _converted(seed: int) -> tuple:
    conversion = convert_source(GET_BATCH.replace("SEED", str(seed)))
    assert not conversion.has_errors, conversion.diagnostics
    return conversion, _run(conversion.code)


def test_draws_outside_modules_are_fresh_on_every_call():
    """nanoGPT's get_batch once drew from jax.random.key(0): the same batch forever."""
    conversion, namespace = _converted(1337)
    assert "jax.random.key(0)" not in conversion.code
    assert "torch.manual_seed(1337)\nnnx.reseed(_rngs, default=1337)\n" in conversion.code
    (first, x1), (second, x2) = namespace["get_batch"](), namespace["get_batch"]()
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    torch = __import__("torch")
    original = _run(GET_BATCH.replace("SEED", "1337"))
    expected_ix, expected_x = original["get_batch"]()
    assert np.asarray(first).shape == tuple(expected_ix.shape) and np.asarray(x1).shape == tuple(expected_x.shape)
    assert jnp.issubdtype(first.dtype, jnp.integer) and not expected_ix.dtype.is_floating_point
    draws = np.concatenate([np.asarray(namespace["get_batch"]()[0]) for _ in range(200)])
    assert draws.min() >= 0 and draws.max() < 1000 - 8 and abs(draws.mean() - 496) < 30  # uniform over [0, 992)
    normal, uniform, perm = namespace["noise"](500)
    t_normal, t_uniform, t_perm = original["noise"](500)
    assert normal.shape == tuple(t_normal.shape) and normal.dtype == jnp.float32 and t_normal.dtype == torch.float32
    assert abs(float(normal.mean())) < 0.2 and abs(float(normal.std()) - 1) < 0.1
    assert uniform.shape == tuple(t_uniform.shape) and 0 <= float(uniform.min()) and float(uniform.max()) < 1
    assert sorted(np.asarray(perm).tolist()) == list(range(500))


def test_the_same_seed_gives_the_same_draws_across_runs():
    _, one = _converted(7)
    _, again = _converted(7)
    _, other = _converted(8)
    runs = [[np.asarray(n["get_batch"]()[0]) for _ in range(3)] for n in (one, again, other)]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_a_seed_inside_a_function_reseeds_the_module_level_rngs():
    source = textwrap.dedent("""\
        import torch


        def sample():
            return torch.rand(3)


        def main(seed):
            torch.manual_seed(seed)
            return sample()
    """)
    conversion = convert_source(source)
    assert "    torch.manual_seed(seed)\n    nnx.reseed(_rngs, default=seed)\n" in conversion.code
    namespace = _run(conversion.code)
    first, same, other = namespace["main"](3), namespace["main"](3), namespace["main"](4)
    assert np.array_equal(first, same) and not np.array_equal(first, other)


TRAINING = """\
import torch
import torch.nn as nn

torch.manual_seed(0)
model = nn.Linear(3, 3)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
xs = torch.ones(4, 3)
losses = []
for step in range(3):
    opt.zero_grad()
    noise = NOISE
    loss = (model(xs + noise) ** 2).mean()
    loss.backward()
    opt.step()
    losses.append(float(loss))
"""


def test_a_draw_in_a_train_step_threads_the_module_level_rngs_through_the_step():
    conversion = convert_source(TRAINING.replace("NOISE", "torch.randn_like(xs)"))
    assert not conversion.has_errors, conversion.diagnostics
    assert "def train_step(model, opt, _rngs):" in conversion.code
    assert "fast_partial(train_step, model, opt, _rngs)" in conversion.code
    losses = _run(conversion.code)["losses"]
    assert len(set(losses)) == 3  # the same input, fresh noise on every step


def test_a_drawing_function_called_inside_a_train_step_is_an_error():
    source = TRAINING.replace("NOISE", "jitter(xs)").replace(
        "torch.manual_seed(0)\n", "torch.manual_seed(0)\n\n\ndef jitter(x):\n    return torch.randn_like(x)\n\n\n")
    conversion = convert_source(source)
    errors = [d for d in conversion.diagnostics if d.code == "PT042"]
    assert len(errors) == 1 and errors[0].severity.value == "error" and "jitter()" in errors[0].message
    assert errors[0].line == source.splitlines().index("for step in range(3):") + 1


def test_in_a_notebook_the_rngs_is_defined_in_the_cell_that_imports_torch():
    import json

    from porter.convert.notebook import convert_notebook

    sources = ["import numpy as np\nx = 1\n", "import torch\n\ndef f():\n    return torch.rand(2)\n",
               "torch.manual_seed(3)\nfirst = f()\ntorch.manual_seed(3)\nsecond = f()\n"]
    cells = [{"cell_type": "code", "source": s, "metadata": {}, "outputs": [], "execution_count": None}
             for s in sources]
    converted = convert_notebook(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    namespace: dict = {}
    for cell in json.loads(converted.code)["cells"]:
        exec("".join(cell["source"]), namespace)  # cell by cell, as a kernel runs them
    assert np.array_equal(namespace["first"], namespace["second"]) and namespace["first"].shape == (2,)


def test_a_draw_from_a_torch_generator_of_its_own_is_an_error_not_a_dropped_generator():
    """`generator=g` is a seeded stream of its own: dropping it would draw from _rngs instead, silently."""
    source = textwrap.dedent('''\
        import torch
        g = torch.Generator().manual_seed(1)
        a = torch.randn(3, generator=g)
        b = torch.rand(3, generator=g)
        c = torch.randperm(4, generator=g)
        d = torch.normal(0.0, 1.0, size=(3,), generator=g)
        e = torch.randn(3, generator=None)
        ''')
    conversion = convert_source(source)
    refused = {d.line for d in conversion.diagnostics if d.code == "PT004" and "generator=g" in d.message}
    assert refused == {3, 4, 5, 6}
    assert "torch.randn(3, generator=g)" in conversion.code
    assert "e = jax.random.normal(_rngs(), (3,))" in conversion.code
