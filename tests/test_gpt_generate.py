"""nanoGPT's top-k filter in generate: `logits, _ = self(idx)` unpacks the model's outputs, which may be
tensors, so `logits[logits < v[:, [-1]]] = -float('Inf')` becomes jnp.where (porter/convert/inplace.py),
checked against torch on real inputs."""

import textwrap

import numpy as np
import torch
from flax import nnx

from porter import convert_source
from porter.check.modelspec import import_file
from porter.weights.loader import load_torch_state_dict

SOURCE = '''
import torch
import torch.nn as nn
from torch.nn import functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 9)

    def forward(self, x):
        return self.fc(x), None

    def top_k_probs(self, x, top_k, temperature=0.8):
        logits, _ = self(x)
        logits = logits / temperature
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float('Inf')
        return F.softmax(logits, dim=-1)
'''


def test_the_top_k_mask_converts_and_matches_torch(tmp_path):
    conversion = convert_source(textwrap.dedent(SOURCE), filename="net.py")
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"], conversion.diagnostics
    assert "logits = jnp.where(logits < v[:, [-1]]" in conversion.code
    (tmp_path / "t.py").write_text(SOURCE)
    (tmp_path / "f.py").write_text(conversion.code)
    torch.manual_seed(0)
    original = import_file(tmp_path / "t.py").Net().eval()
    converted = import_file(tmp_path / "f.py").Net(rngs=nnx.Rngs(0))
    assert load_torch_state_dict(converted, original.state_dict()).ok
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for k in (1, 3, 20):
        with torch.no_grad():
            expected = original.top_k_probs(torch.from_numpy(x), k).numpy()
        got = np.asarray(converted.top_k_probs(x, k))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
        assert ((got > 0).sum(-1) == min(k, 9)).all()


def test_unpacking_another_call_stays_unknown():
    source = SOURCE.replace("logits, _ = self(x)", "logits, _ = helper(x)")
    conversion = convert_source(textwrap.dedent(source), filename="net.py")
    assert any(d.code == "PT040" and "item assignment" in d.message for d in conversion.diagnostics)


GPT_FILE = __import__("pathlib").Path(__file__).resolve().parent.parent / "fixtures" / "gpt" / "model.py"
CONFIG = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)


def test_generate_with_top_k_1_gives_torchs_greedy_tokens(tmp_path, capsys):
    """fixtures/gpt/model.py's generate converted (context crop, temperature, top-k mask, softmax,
    torch.multinomial -> jax.random.categorical with the method's rngs argument, the module's by default,
    torch.cat): with top_k=1 each step's distribution is one token, so the tokens are torch's exactly, past the
    block size too (cropping)."""
    conversion = convert_source(GPT_FILE.read_text(), filename=str(GPT_FILE))
    generate_lines = conversion.code.split("def generate(")[1]
    assert generate_lines.startswith("self, idx, max_new_tokens, temperature=1.0, top_k=None, *, "
                                     "rngs: nnx.Rngs | None = None):")
    assert "rngs = self.rngs if rngs is None else rngs" in generate_lines
    assert "jax.random.categorical(rngs(), jnp.log(probs), axis=-1)[..., None]" in generate_lines
    path = tmp_path / "converted_gpt.py"
    path.write_text(conversion.code)
    T, F = import_file(GPT_FILE), import_file(path)
    torch.manual_seed(0)
    original = T.GPT(T.GPTConfig(**CONFIG)).eval()
    converted = F.GPT(F.GPTConfig(**CONFIG), rngs=nnx.Rngs(0))
    assert load_torch_state_dict(converted, original.state_dict()).ok
    converted.eval()
    prompt = np.random.default_rng(0).integers(0, CONFIG["vocab_size"], (2, 3))
    expected = original.generate(torch.from_numpy(prompt), 12, temperature=0.9, top_k=1).numpy()
    got = np.asarray(converted.generate(prompt, 12, temperature=0.9, top_k=1))
    np.testing.assert_array_equal(got, expected)


def test_generate_takes_its_key_from_an_rngs_argument(tmp_path, capsys):
    """generate(..., rngs=nnx.Rngs(s)): the same samples for the same seed whatever the module's own Rngs did
    before, other samples for another seed; without the argument, new draws from the module's Rngs each call."""
    conversion = convert_source(GPT_FILE.read_text(), filename=str(GPT_FILE))
    path = tmp_path / "converted_gpt_keys.py"
    path.write_text(conversion.code)
    F = import_file(path)
    model = F.GPT(F.GPTConfig(**CONFIG), rngs=nnx.Rngs(0))
    model.eval()
    prompt = np.zeros((4, 1), np.int32)
    first = np.asarray(model.generate(prompt, 10, temperature=2.0, rngs=nnx.Rngs(7)))
    model.generate(prompt, 3)  # advances the module's own Rngs
    again = np.asarray(model.generate(prompt, 10, temperature=2.0, rngs=nnx.Rngs(7)))
    other = np.asarray(model.generate(prompt, 10, temperature=2.0, rngs=nnx.Rngs(8)))
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    own = [np.asarray(model.generate(prompt, 10, temperature=2.0)) for _ in range(2)]
    assert (own[0] != own[1]).any()


SAMPLER = '''
import torch
import torch.nn as nn


class Sampler(nn.Module):
    def forward(self, probs):
        return torch.multinomial(probs, num_samples=1), torch.multinomial(probs, 4, replacement=True)
'''


def test_multinomial_draws_from_torchs_distribution(tmp_path):
    conversion = convert_source(SAMPLER, filename="s.py")
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"], conversion.diagnostics
    (tmp_path / "s.py").write_text(conversion.code)
    weights = np.array([0.1, 0.0, 2.0, 0.5, 1.4], np.float32)  # not normalised, one impossible
    probs = np.tile(weights, (20000, 1))
    one, four = import_file(tmp_path / "s.py").Sampler(rngs=nnx.Rngs(3))(probs)
    assert one.shape == (20000, 1) and four.shape == (20000, 4)
    torch.manual_seed(0)
    reference = torch.multinomial(torch.from_numpy(probs), 1).numpy()
    expected = weights / weights.sum()
    for draws in (np.asarray(one), np.asarray(four), reference):
        frequencies = np.bincount(draws.ravel(), minlength=5) / draws.size
        np.testing.assert_allclose(frequencies, expected, atol=0.012)
        assert frequencies[1] == 0


def test_several_samples_without_replacement_are_refused():
    conversion = convert_source(SAMPLER.replace("4, replacement=True", "4"), filename="s.py")
    assert any(d.code == "PT004" and "without replacement" in d.message for d in conversion.diagnostics)


STATIC_DRAW = '''
import torch
import torch.nn as nn


class Crop(nn.Module):
    @staticmethod
    def get_params(h, th):
        return torch.randint(0, h - th + 1, size=(1,)).item()

    def forward(self, x):
        return x
'''


def test_a_static_method_gets_no_rngs_argument_that_would_read_self():
    conversion = convert_source(STATIC_DRAW, filename="s.py")
    assert "rngs = self.rngs if rngs is None else rngs" not in conversion.code
    assert "def get_params(h, th):" in conversion.code
