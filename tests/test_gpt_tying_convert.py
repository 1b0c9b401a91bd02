"""Weight tying converted (porter/convert/tying.py): `self.lm_head.weight = self.transformer.wte.weight`
(nanoGPT, fixtures/gpt/model.py), the reverse, and direct attributes become one variable, the head computed
by the embedding's attend; ties of another shape keep their PT006 error. Layers in an nn.ModuleDict have their
parameters read as the converted layer's (`self.transformer.wpe.weight.numel()`). Each converted model is run
against torch by porter check (outputs, gradients with the tied row, state after training steps)."""

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

from porter import convert_source
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import import_file

GPT_FILE = Path(__file__).resolve().parent.parent / "fixtures" / "gpt" / "model.py"
CONFIG = dict(block_size=8, vocab_size=11, n_layer=2, n_head=2, n_embd=16)


def convert(source: str):
    return convert_source(textwrap.dedent(source), filename="m.py")


def errors(conversion) -> list[str]:
    return [f"{d.line} {d.code} {d.message}" for d in conversion.diagnostics if d.severity.name == "ERROR"]


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    conversion = convert_source(GPT_FILE.read_text(), filename=str(GPT_FILE))
    path = tmp_path_factory.mktemp("gpt") / "converted_gpt.py"
    path.write_text(conversion.code)
    return conversion, import_file(GPT_FILE), import_file(path)


def test_the_gpt_tie_is_converted_not_refused(gpt):
    conversion, _, _ = gpt
    tie_line = next(i for i, line in enumerate(GPT_FILE.read_text().splitlines(), 1)
                    if line.strip() == "self.lm_head.weight = self.transformer.wte.weight")
    assert not [d for d in conversion.diagnostics if d.line == tie_line and d.code == "PT006"]
    assert any(d.line == tie_line and d.code == "PT007" and "attend" in d.message for d in conversion.diagnostics)
    code = conversion.code
    assert "lm_head" not in code.replace("# lm_head is tied", "").split("def crop_block_size")[0].split(
        "class GPT(")[1].replace("torch's lm_head.weight", "")
    assert code.count("self.transformer.wte.attend(") == 2
    assert "# one matrix for the token embedding and the output head" in code  # the user's comment stays
    # the ModuleDict entry's weight read as the converted layer's variable
    assert "self.transformer.wpe.embedding" in code and "wpe.weight" not in code.split("def crop_block_size")[0]


@pytest.mark.parametrize("mode, flash", [("eval", True), ("train", True), ("eval", False)])
def test_the_converted_gpt_passes_porter_check(gpt, mode, flash):
    _, T, F = gpt
    torch.manual_seed(0)
    original = T.GPT(T.GPTConfig(**CONFIG, flash=flash))
    converted = F.GPT(F.GPTConfig(**CONFIG, flash=flash), rngs=nnx.Rngs(0))
    idx = np.random.default_rng(3).integers(0, CONFIG["vocab_size"], (2, 8))
    report = check_equivalence(original, converted, idx, idx, mode=mode, train_steps=2, lr=0.05, layers=False)
    assert report.passed, report.format()
    head = report.row("lm_head.weight", "grad param")
    assert head.ok and head.scale > 0 and "tied in torch to transformer.wte.weight" in head.note
    assert "lm_head" not in str(nnx.state(converted, nnx.Param))


def test_get_num_params_counts_as_torch(gpt, capsys):
    _, T, F = gpt
    original = T.GPT(T.GPTConfig(**CONFIG))
    converted = F.GPT(F.GPTConfig(**CONFIG), rngs=nnx.Rngs(0))
    assert converted.get_num_params() == original.get_num_params()
    assert converted.get_num_params(non_embedding=False) == original.get_num_params(non_embedding=False)


TIED = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, vocab=13, dim=8):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        {tie}

    def forward(self, idx):
        return self.head(torch.tanh(self.norm(self.wte(idx))))
'''


@pytest.mark.parametrize("tie", ["self.head.weight = self.wte.weight",  # nanoGPT's spelling
                                 "self.wte.weight = self.head.weight"])  # the reverse: the embedding takes the head's
def test_direct_ties_either_way_pass_check(tmp_path, tie):
    source = textwrap.dedent(TIED).replace("{tie}", tie)
    conversion = convert(source)
    assert not errors(conversion), errors(conversion)
    assert "self.wte.attend(" in conversion.code and "self.head" not in conversion.code
    (tmp_path / "t.py").write_text(source)
    (tmp_path / "f.py").write_text(conversion.code)
    torch.manual_seed(1)
    original = import_file(tmp_path / "t.py").Net()
    converted = import_file(tmp_path / "f.py").Net(rngs=nnx.Rngs(0))
    idx = np.random.default_rng(0).integers(0, 13, (3, 5))
    report = check_equivalence(original, converted, idx, layers=False, train_steps=2, lr=0.1)
    assert report.passed, report.format()
    other = "wte.weight" if tie.startswith("self.head") else "head.weight"
    assert any(r.ok and r.note and "tied in torch" in r.note for r in report.rows if r.kind == "grad param")
    assert report.row(other, "grad param").ok


@pytest.mark.parametrize("source_change, why", [
    (("bias=False", "bias=True"), "a head with a bias is not the embedding's attend"),
    (("self.wte = nn.Embedding(vocab, dim)", "self.wte = nn.Linear(vocab, dim, bias=False)"), "two Linears"),
    (("return self.head(", "return self.head.weight.sum() + self.head("), "the head's weight read"),
])
def test_ties_of_another_shape_keep_pt006(source_change, why):
    source = textwrap.dedent(TIED).replace("{tie}", "self.head.weight = self.wte.weight").replace(*source_change)
    conversion = convert(source)
    assert any(d.code == "PT006" and "self.head.weight" in d.message for d in conversion.diagnostics), why
    assert "self.head.weight = self.wte.weight" in conversion.code
    assert ".attend(" not in conversion.code


def test_a_tied_class_reports_what_is_left_where_the_user_wrote_it():
    """The tie is decided before the class converts (passes/weight_tying.py): the class is not rebuilt after,
    so the residual check finds its nodes, and its PT040 points at the attribute (it fell back to a column
    before the attribute when a post-pass rebuilt the class)."""
    source = textwrap.dedent(TIED).replace("{tie}", "self.head.weight = self.wte.weight") + textwrap.dedent('''
        def trainable(self):
            return {pn: p for pn, p in self.named_parameters()}
    ''').replace("\n", "\n    ")
    conversion = convert(source)
    line = next(i for i, text in enumerate(source.splitlines(), 1) if "named_parameters" in text)
    residual = [d for d in conversion.diagnostics if d.code == "PT040" and d.line == line]
    assert residual and residual[0].col == source.splitlines()[line - 1].index("named_parameters") + 1
    assert "self.wte.attend(" in conversion.code
