"""nanoGPT's model methods that porter converts beyond the layers (issue 16): the flash switch
`hasattr(torch.nn.functional, 'scaled_dot_product_attention')` (a feature probe of a name porter converts:
True, with a note; passes/feature_probes.py), and `crop_block_size`: the position embedding's parameter
replaced by a slice of itself (`self.transformer.wpe.weight = nn.Parameter(...[:bs])`) and the attention
buffers sliced (`block.attn.bias = block.attn.bias[...]`), checked against torch on fixtures/gpt/model.py."""

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

from porter import convert_source
from porter.check.modelspec import import_file
from porter.weights.loader import load_torch_state_dict

GPT_FILE = Path(__file__).resolve().parent.parent / "fixtures" / "gpt" / "model.py"
CONFIG = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)


def convert(source: str):
    return convert_source(textwrap.dedent(source), filename="m.py")


PROBE = '''
import torch
import torch.nn as nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self, flash):
        super().__init__()
        self.flash = {probe} and flash

    def forward(self, q, k, v):
        if self.flash:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
'''


@pytest.mark.parametrize("probe", ["hasattr(torch.nn.functional, 'scaled_dot_product_attention')",
                                   'hasattr(F, "scaled_dot_product_attention")',
                                   "hasattr(nn.functional, 'scaled_dot_product_attention')"])
def test_a_probe_of_a_converted_function_is_true_with_a_note(probe):
    conversion = convert(PROBE.replace("{probe}", probe))
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"], conversion.diagnostics
    assert "self.flash = flash" in conversion.code and "hasattr" not in conversion.code
    note = [d for d in conversion.diagnostics if d.code == "PT007" and d.line == 10]
    assert note and "scaled_dot_product_attention" in note[0].message and "True" in note[0].message
    assert "import torch" not in conversion.code


def test_a_probe_alone_becomes_true():
    conversion = convert(PROBE.replace("{probe} and flash",
                                       "hasattr(torch.nn.functional, 'scaled_dot_product_attention')"))
    assert "self.flash = True\n" in conversion.code


@pytest.mark.parametrize("probe", ["hasattr(torch, 'export')", "hasattr(torch.nn.functional, 'no_such_op')",
                                   "hasattr(F, name)"])
def test_a_probe_of_what_porter_does_not_convert_stays_reported(probe):
    conversion = convert(PROBE.replace("{probe}", probe))
    assert any(d.severity.name == "ERROR" and d.line == 10 for d in conversion.diagnostics), conversion.diagnostics
    assert probe in conversion.code


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    conversion = convert_source(GPT_FILE.read_text(), filename=str(GPT_FILE))
    path = tmp_path_factory.mktemp("gpt") / "converted_gpt.py"
    path.write_text(conversion.code)
    return conversion, import_file(GPT_FILE), import_file(path)


def test_crop_block_size_converts(gpt):
    conversion, _, _ = gpt
    lines = GPT_FILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines, 1) if "def crop_block_size" in line)
    end = next(i for i, line in enumerate(lines, 1) if "def configure_optimizers" in line)
    assert not [d for d in conversion.diagnostics if start <= d.line < end and d.severity.name == "ERROR"]
    code = conversion.code
    assert "self.transformer.wpe.embedding = nnx.Param(self.transformer.wpe.embedding[:block_size])" in code
    assert "block.attn.bias.set_value(block.attn.bias[:, :, :block_size, :block_size])" in code


@pytest.mark.parametrize("flash", [True, False])
def test_cropped_gpt_matches_torch(gpt, flash):
    _, T, F = gpt
    torch.manual_seed(0)
    original = T.GPT(T.GPTConfig(**CONFIG, flash=flash)).eval()
    converted = F.GPT(F.GPTConfig(**CONFIG, flash=flash), rngs=nnx.Rngs(0))
    converted.eval()
    assert load_torch_state_dict(converted, original.state_dict()).ok
    original.crop_block_size(5)
    converted.crop_block_size(5)
    assert converted.transformer.wpe.embedding.shape == (5, 16)
    assert isinstance(converted.transformer.wpe.embedding, nnx.Param)
    for block in converted.transformer.h:
        assert flash or (isinstance(block.attn.bias, nnx.Variable) and block.attn.bias.shape == (1, 1, 5, 5))
    # the cropped models' states still correspond name for name, shape for shape
    assert load_torch_state_dict(converted, original.state_dict()).ok
    idx = np.random.default_rng(1).integers(0, CONFIG["vocab_size"], (2, 5))
    with torch.no_grad():
        expected, expected_loss = original(torch.from_numpy(idx), torch.from_numpy(idx))
    got, loss = converted(idx, idx)
    np.testing.assert_allclose(np.asarray(got), expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(loss), expected_loss.item(), rtol=1e-5)
    with pytest.raises(AssertionError):  # six tokens are past the cropped block size, in both
        converted(np.zeros((1, 6), dtype=np.int32))


SLICED_BUFFER = '''import torch
import torch.nn as nn


class Masked(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.register_buffer("mask", torch.tril(torch.ones(n, n)))

    def crop(self, n):
        self.mask = self.mask[:n, :n]

    def forward(self, x):
        return x @ self.mask


def shrink(model, n):
    model.mask = model.mask[:n, :n]
'''


def test_a_buffer_sliced_from_itself_keeps_its_variable_in_methods_and_scripts():
    """`self.mask = self.mask[:n, :n]` cannot be `self.mask[...] = ...` (the shape changes), and
    `model.mask = model.mask[:n, :n]` in a script's function must not turn the Buffer into a plain array:
    both become the Variable's set_value, and compute what torch computes."""
    from porter import convert_source
    conversion = convert_source(SLICED_BUFFER)
    assert "self.mask.set_value(self.mask[:n, :n])" in conversion.code
    assert "model.mask.set_value(model.mask[:n, :n])" in conversion.code
    torch_ns: dict = {}
    exec(compile(SLICED_BUFFER, "original.py", "exec"), torch_ns)
    jax_ns: dict = {}
    exec(compile(conversion.code, "converted.py", "exec"), jax_ns)
    original, converted = torch_ns["Masked"](6), jax_ns["Masked"](6)
    x = np.random.default_rng(0).standard_normal((2, 4), dtype=np.float32)
    original.crop(5), converted.crop(5)
    torch_ns["shrink"](original, 4), jax_ns["shrink"](converted, 4)
    assert isinstance(converted.mask, nnx.Variable) and converted.mask.shape == (4, 4)
    np.testing.assert_allclose(np.asarray(converted(x)), original(torch.from_numpy(x)).numpy(), rtol=1e-6)


OWN_PARAMETER = '''import torch
import torch.nn as nn


class Pos(nn.Module):
    def __init__(self, n, d):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n, d))

    def crop(self, n):
        self.w = nn.Parameter(self.w[:n])

    def forward(self, x):
        return x + self.w[:x.shape[1]]
'''


def test_a_class_own_parameter_replaced_by_a_slice_of_itself_is_a_new_param():
    """`self.w = nn.Parameter(self.w[:n])` replaces the Variable (`self.w[...] = nnx.Param(...)` was wrong: a
    Param written into the old array, whose shape cannot change); the cropped module computes torch's values."""
    conversion = convert_source(OWN_PARAMETER)
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"], conversion.diagnostics
    assert "self.w = nnx.Param(self.w[:n])" in conversion.code
    torch_ns: dict = {}
    exec(compile(OWN_PARAMETER, "original.py", "exec"), torch_ns)
    jax_ns: dict = {}
    exec(compile(conversion.code, "converted.py", "exec"), jax_ns)
    original, converted = torch_ns["Pos"](6, 3), jax_ns["Pos"](6, 3, rngs=nnx.Rngs(0))
    assert load_torch_state_dict(converted, original.state_dict()).ok
    original.crop(4), converted.crop(4)
    assert isinstance(converted.w, nnx.Param) and converted.w.shape == (4, 3)
    assert [n for n, _ in nnx.iter_graph(converted) if isinstance(_, nnx.Param)]  # still the module's parameter
    assert load_torch_state_dict(converted, original.state_dict()).ok
    x = np.random.default_rng(0).standard_normal((2, 4, 3), dtype=np.float32)
    with torch.no_grad():
        expected = original(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(converted(x)), expected, rtol=1e-6)
