"""generate()'s token loop run compiled (porter/convert/passes/decode_loops.py): the step under nnx.jit, once per
context width, the tokens written into a buffer of the final size. Checked against the loop porter converted
before (run eagerly, every token a new shape): the same tokens for the same Rngs, past the block size, with and
without top-k, in train mode with dropout drawing from the same Rngs; and against torch's greedy tokens
(tests/test_gpt_generate.py). Loops of another shape stay eager."""

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

from porter import convert_source
from porter.check.modelspec import import_file
from porter.convert import pipeline
from porter.convert.passes.decode_loops import DecodeLoops
from porter.weights.loader import load_torch_state_dict

GPT_FILE = Path(__file__).resolve().parent.parent / "fixtures" / "gpt" / "model.py"
CONFIG = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)


def eager_conversion(source: str, filename: str):
    """The conversion without the decode loops concern: the loop as porter converted it before."""
    saved = pipeline.CONCERNS
    pipeline.CONCERNS = tuple(c for c in saved if c is not DecodeLoops)
    try:
        return convert_source(source, filename=filename)
    finally:
        pipeline.CONCERNS = saved


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    out = tmp_path_factory.mktemp("decode")
    compiled = convert_source(GPT_FILE.read_text(), filename=str(GPT_FILE))
    eager = eager_conversion(GPT_FILE.read_text(), str(GPT_FILE))
    (out / "compiled_gpt.py").write_text(compiled.code)
    (out / "eager_gpt.py").write_text(eager.code)
    return compiled, import_file(out / "compiled_gpt.py"), import_file(out / "eager_gpt.py")


def build(module, torch_model, **config):
    model = module.GPT(module.GPTConfig(**config), rngs=nnx.Rngs(0))
    assert load_torch_state_dict(model, torch_model.state_dict()).ok
    return model


def torch_model(**config):
    T = import_file(GPT_FILE)
    torch.manual_seed(0)
    model = T.GPT(T.GPTConfig(**config))
    for p in model.parameters():  # far from zero: the distributions are far from uniform
        p.data.normal_(0.0, 0.3)
    return model


def test_the_loop_runs_its_step_compiled_over_a_token_buffer(modules):
    conversion, _, _ = modules
    generate = conversion.code.split("    def generate(")[1].split("\n    def ")[0]
    assert "jnp.concatenate" not in generate
    assert "idx = token_buffer(idx, max_new_tokens)" in generate
    assert 'step = fast_partial(type(self)._generate_step, self, rngs, static_argnames=("temperature", "top_k"))' \
        in generate
    assert "idx_next = step(idx_cond, temperature=temperature, top_k=top_k)" in generate
    assert '    @nnx.jit(static_argnames=("temperature", "top_k"))\n    def _generate_step(self, rngs, idx_cond, ' \
           'temperature, top_k):' in conversion.code
    assert "def token_buffer(idx, extra):" in conversion.code
    assert any(d.code == "PT007" and "generate's token loop runs its step compiled" in d.message
               for d in conversion.diagnostics)
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"]


@pytest.mark.parametrize("top_k, temperature", [(None, 1.0), (3, 0.8), (None, 2.5)])
def test_the_compiled_loop_samples_the_eager_loop_s_tokens(modules, top_k, temperature):
    """Same weights, same nnx.Rngs(seed): the same tokens, 3 prompt tokens + 14 new ones past block_size 8."""
    _, compiled, eager = modules
    original = torch_model(**CONFIG)
    prompt = np.random.default_rng(1).integers(0, CONFIG["vocab_size"], (3, 3))
    models = [build(module, original, **CONFIG) for module in (compiled, eager)]
    for model in models:
        model.eval()
    got, expected = (np.asarray(model.generate(prompt, 14, temperature=temperature, top_k=top_k,
                                               rngs=nnx.Rngs(5))) for model in models)
    assert got.shape == (3, 17)
    np.testing.assert_array_equal(got[:, :3], prompt)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(got[:, 3:])) > 2  # sampled, not one token repeated


def test_in_train_mode_dropout_and_sampling_draw_from_the_module_s_rngs_in_the_eager_order(modules):
    _, compiled, eager = modules
    config = {**CONFIG, "dropout": 0.3}
    original = torch_model(**config)
    prompt = np.zeros((2, 2), np.int32)
    models = [build(module, original, **config) for module in (compiled, eager)]
    runs = [[np.asarray(model.generate(prompt, 10, temperature=1.5)) for _ in range(2)] for model in models]
    for got, expected in zip(*runs):
        np.testing.assert_array_equal(got, expected)
    assert (runs[0][0] != runs[0][1]).any()  # the module's Rngs advanced between calls


def test_the_step_is_traced_once_per_context_width(modules):
    """The model runs (in Python) only when the step is traced: widths 3..8, then none for the later tokens,
    none at all on a second call."""
    _, compiled, _ = modules
    model = build(compiled, torch_model(**CONFIG), **CONFIG)
    model.eval()
    widths = []
    forward = compiled.GPT.__call__

    def counting(self, idx, *args, **kwargs):
        widths.append(idx.shape[1])
        return forward(self, idx, *args, **kwargs)

    compiled.GPT.__call__ = counting
    try:
        prompt = np.zeros((1, 3), np.int32)
        model.generate(prompt, 20, top_k=2, rngs=nnx.Rngs(0))
        assert widths == [3, 4, 5, 6, 7, 8]
        model.generate(prompt, 20, top_k=2, rngs=nnx.Rngs(1))
        model.generate(prompt, 40, top_k=2, rngs=nnx.Rngs(1))  # a longer buffer: the same step
        assert widths == [3, 4, 5, 6, 7, 8]
    finally:
        compiled.GPT.__call__ = forward


LOOP = '''
import torch
import torch.nn as nn
from torch.nn import functional as F


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block_size = 4
        self.emb = nn.Embedding(7, 7)

    def forward(self, idx):
        return self.emb(idx)

    def generate(self, idx, max_new_tokens, temperature=1.0):
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.block_size else idx[:, -self.block_size:]
            logits = self(idx_cond)[:, -1, :] / temperature
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx
'''


@pytest.mark.parametrize("change", [
    ("logits = self(idx_cond)", "logits = self(idx)"),  # the step reads the whole sequence
    ("temperature=1.0", "temperature"),  # an input that may be an array: not a static argument
    ("idx_next = torch", "temperature = temperature * 0.9\n            idx_next = torch"),  # carried over
    ("idx = torch.cat((idx, idx_next), dim=1)", "idx = torch.cat((idx, idx_next), dim=0)"),
    ("return idx", "return idx, logits"),  # the step's value read after the loop
    ("idx_next = torch", "self.block_size = 3\n            idx_next = torch"),  # the crop's size changes
])
def test_a_loop_of_another_shape_stays_eager(change):
    conversion = convert_source(LOOP.replace(*change), filename="net.py")
    assert "_generate_step" not in conversion.code and "jnp.concatenate((idx, idx_next)" in conversion.code


def test_the_small_loop_is_compiled_and_samples_as_before(tmp_path):
    conversion = convert_source(LOOP, filename="net.py")
    assert '@nnx.jit(static_argnames=("temperature",))' in conversion.code
    eager = eager_conversion(LOOP, "net.py")
    (tmp_path / "compiled.py").write_text(conversion.code)
    (tmp_path / "eager.py").write_text(eager.code)
    nets = [import_file(tmp_path / f"{name}.py").Net(rngs=nnx.Rngs(0)) for name in ("compiled", "eager")]
    prompt = np.array([[1, 2]], np.uint8)  # a narrow prompt: the buffer takes int32, as torch.cat promotes
    got, expected = (np.asarray(net.generate(prompt, 9, rngs=nnx.Rngs(2))) for net in nets)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype
