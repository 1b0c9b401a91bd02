"""nanoGPT's configure_optimizers (issue 16): two parameter groups of torch's AdamW split by `p.dim() >= 2`
(decay / no decay) become one optax.adamw whose weight decay is masked by the same test over the nnx state
(passes/parameter_groups.py), the rate injected so that a script can set it every iteration as nanoGPT's
train.py does through param_groups. Checked against torch's AdamW step by step on fixtures/gpt/model.py."""

import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from porter import convert_source
from porter.check.modelspec import import_file
from porter.weights.loader import load_torch_state_dict

GPT_FILE = Path(__file__).resolve().parent.parent / "fixtures" / "gpt" / "model.py"
CONFIG = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    conversion = convert_source(GPT_FILE.read_text(), filename=str(GPT_FILE))
    path = tmp_path_factory.mktemp("gpt") / "converted_gpt_groups.py"
    path.write_text(conversion.code)
    return conversion, import_file(GPT_FILE), import_file(path)


def test_configure_optimizers_converts_clean(gpt):
    conversion, _, _ = gpt
    lines = GPT_FILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines, 1) if "def configure_optimizers" in line)
    end = next(i for i, line in enumerate(lines, 1) if "def estimate_mfu" in line)
    inside = [d for d in conversion.diagnostics if start <= d.line < end]
    assert not [d for d in inside if d.severity.name == "ERROR"], inside
    assert any(d.code == "PT007" and "masked" in d.message for d in inside)
    assert any(d.code == "PT007" and "fused" in d.message and "False" in d.message for d in inside)
    code = conversion.code
    assert "param_dict = nnx.state(self, nnx.Param)" in code
    assert "mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)" in code
    assert "optim_groups" not in code and "requires_grad" not in code and "**extra_args" not in code
    assert "import torch" not in code


def _lr(step):  # a changing rate, set before every step as nanoGPT's train.py does
    return 3e-3 * (0.5 + 0.5 * np.cos(np.pi * step / 8))


@pytest.mark.parametrize("weight_decay", [0.1, 0.5])
def test_groups_step_like_torch_adamw(gpt, weight_decay, capsys):
    _, T, F = gpt
    torch.manual_seed(0)
    original = T.GPT(T.GPTConfig(**CONFIG))
    converted = F.GPT(F.GPTConfig(**CONFIG), rngs=nnx.Rngs(0))
    assert load_torch_state_dict(converted, original.state_dict()).ok
    capsys.readouterr()
    torch_optimizer = original.configure_optimizers(weight_decay, 3e-3, (0.9, 0.95), "cpu")
    printed_by_torch = capsys.readouterr().out
    optimizer = converted.configure_optimizers(weight_decay, 3e-3, (0.9, 0.95), "cpu")
    assert capsys.readouterr().out == printed_by_torch  # the groups' counts are torch's (the tie counted once)
    assert isinstance(optimizer, nnx.Optimizer)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda model: model(x, y)[1])(model)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(1)
    for step in range(6):
        x = rng.integers(0, CONFIG["vocab_size"], (4, CONFIG["block_size"]))
        y = rng.integers(0, CONFIG["vocab_size"], (4, CONFIG["block_size"]))
        for group in torch_optimizer.param_groups:
            group["lr"] = _lr(step)
        optimizer.opt_state.hyperparams["learning_rate"][...] = _lr(step)
        torch_optimizer.zero_grad()
        _, torch_loss = original(torch.from_numpy(x), torch.from_numpy(y))
        torch_loss.backward()
        torch_optimizer.step()
        loss = train_step(converted, optimizer, x, y)
        np.testing.assert_allclose(float(loss), torch_loss.item(), rtol=1e-5)
        expected = {k: v.detach().numpy() for k, v in original.state_dict().items()}
        wte = np.asarray(converted.transformer.wte.embedding[...])
        np.testing.assert_allclose(wte, expected["transformer.wte.weight"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(converted.transformer.h[0].attn.c_attn.kernel[...]),
                                   expected["transformer.h.0.attn.c_attn.weight"].T, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(converted.transformer.h[1].ln_1.weight[...]),
                                   expected["transformer.h.1.ln_1.weight"], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(converted.transformer.ln_f.bias[...]),
                                   expected["transformer.ln_f.bias"], rtol=1e-4, atol=1e-6)
    # every parameter, after the last step (the full state against torch's, through the weights loader's names);
    # the key projection's bias has a gradient of zero in exact arithmetic (softmax ignores a constant per query):
    # Adam normalises both frameworks' rounding noise there to steps of the learning rate's size, hence atol
    reference = F.GPT(F.GPTConfig(**CONFIG), rngs=nnx.Rngs(1))
    assert load_torch_state_dict(reference, original.state_dict()).ok
    for (path, a), (_, b) in zip(jax.tree.leaves_with_path(nnx.state(converted, nnx.Param)),
                                 jax.tree.leaves_with_path(nnx.state(reference, nnx.Param))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=2e-5, err_msg=str(path))


def test_decay_is_masked_to_the_matrices(gpt):
    """A vector (bias, norm scale) under a gradient of zero stays as it is; a matrix shrinks by lr * wd."""
    _, _, F = gpt
    model = F.GPT(F.GPTConfig(**CONFIG), rngs=nnx.Rngs(0))
    optimizer = model.configure_optimizers(0.5, 0.1, (0.9, 0.95), "cpu")
    before = nnx.state(model, nnx.Param)
    before = jax.tree.map(np.asarray, before)
    zeros = jax.tree.map(lambda p: np.zeros_like(p), nnx.state(model, nnx.Param))
    optimizer.update(model, zeros)
    after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    for (path, b), a in zip(jax.tree.leaves_with_path(before), jax.tree.leaves(after)):
        expected = b * (1 - 0.1 * 0.5) if b.ndim >= 2 else b
        np.testing.assert_allclose(a, expected, rtol=1e-6, err_msg=str(path))


GROUPS = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)

    def forward(self, x):
        return self.fc(x)

    def configure_optimizers(self, lr):
        params = {n: p for n, p in self.named_parameters()}
        big = [p for n, p in params.items() if p.dim() >= 2]
        small = [p for n, p in params.items() if p.dim() < 2]
        groups = [{'params': big, 'weight_decay': 0.1}, {'params': small, 'weight_decay': {other}}]
        return torch.optim.AdamW(groups, lr=lr)
'''


def test_groups_it_cannot_mask_stay_reported():
    """Two decays (not one group with none) are not a mask: left to the optimizer builder, which reports."""
    conversion = convert_source(textwrap.dedent(GROUPS.replace("{other}", "0.01")))
    assert any(d.severity.name == "ERROR" for d in conversion.diagnostics)
    conversion = convert_source(textwrap.dedent(GROUPS.replace("{other}", "0.0")))
    assert not any(d.severity.name == "ERROR" for d in conversion.diagnostics), conversion.diagnostics
    assert "return nnx.Optimizer(self, optax.inject_hyperparams(optax.adamw" in conversion.code
