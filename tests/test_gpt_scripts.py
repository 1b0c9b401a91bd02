"""nanoGPT-style scripts (fixtures/gpt/train.py, sample.py): `model.load_state_dict(...)` and
`raw_model.state_dict()` on the converted GPT are reported (PT040), though `model` is also bound to
`torch.compile(model)` / `replicate_params(model)` (the same object) and `raw_model` to
`model.module if ddp else model` (porter/convert/passes/residual.py's bindings)."""

import textwrap
from pathlib import Path

from porter.convert.pipeline import convert_in_tree

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gpt"


def pt040(path: Path) -> dict[int, str]:
    conversion = convert_in_tree(path.read_text(), filename=str(path), known={"GPT": "module"})
    return {d.line: d.message for d in conversion.diagnostics if d.code == "PT040"}


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_state_dict_calls_on_the_converted_model_are_reported():
    train, sample = FIXTURES / "train.py", FIXTURES / "sample.py"
    found = pt040(train)
    assert "load_state_dict" in found[line_of(train, "model.load_state_dict(state_dict)")]
    assert "state_dict" in found[line_of(train, "'model': raw_model.state_dict()")]
    found = pt040(sample)
    assert "load_state_dict" in found[line_of(sample, "model.load_state_dict(state_dict)")]


def test_compile_and_aliases_keep_the_kind_and_nothing_else_is_reported():
    source = textwrap.dedent('''
        import torch
        from model import GPT

        model = GPT()
        if True:
            model = GPT.from_pretrained('gpt2')  # nanoGPT's init_from='gpt2'
        model = torch.compile(model)
        raw = model if True else model
        other = model
        model.eval()
        raw.train()
        weights = other.state_dict()
        unknown = make()
        unknown.state_dict()
        ''')
    conversion = convert_in_tree(source, filename="s.py", known={"GPT": "module"})
    found = {d.line: d.message for d in conversion.diagnostics if d.code == "PT040"}
    assert list(found) == [13] and "`other` is an nnx.Module" in found[13]
