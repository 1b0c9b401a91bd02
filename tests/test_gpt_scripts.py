"""nanoGPT-style scripts (fixtures/gpt/train.py, sample.py): their checkpoints convert though `model` is also
bound to `torch.compile(model)` / `DDP(model)` and `raw_model` to `model.module if ddp else model`
(porter/convert/checkpoints.py); `state_dict()` elsewhere on such aliases is reported (PT040,
porter/convert/passes/residual.py's bindings)."""

import textwrap
from pathlib import Path

from porter.convert.pipeline import convert_in_tree

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gpt"


def pt040(path: Path) -> dict[int, str]:
    conversion = convert_in_tree(path.read_text(), filename=str(path), known={"GPT": "module"})
    return {d.line: d.message for d in conversion.diagnostics if d.code == "PT040"}


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_sample_reads_the_checkpoint_train_writes():
    """sample.py writes no checkpoint: it reads train.py's (Orbax, train.py being a DDP script) with
    load_checkpoint, which reads either format."""
    sample = FIXTURES / "sample.py"
    conversion = convert_in_tree(sample.read_text(), filename=str(sample), known={"GPT": "module"})
    assert "checkpoint = load_checkpoint(ckpt_path)\n" in conversion.code
    assert "load_numpy_state(model, state_dict)\n" in conversion.code
    assert not pt040(sample)


def test_train_checkpoint_converts_through_aliases():
    """train.py's save and resume (a DDP script: Orbax) convert: `raw_model = model.module if ddp else model`
    and `model = torch.compile(model)` keep the model an owner, `optimizer = model.configure_optimizers(...)`
    is one, the dict is saved two statements after it is built, and the restored dict reaches
    load_state_dict through `state_dict = checkpoint['model']`."""
    train = FIXTURES / "train.py"
    conversion = convert_in_tree(train.read_text(), filename=str(train), known={"GPT": "module"})
    code = conversion.code
    assert "checkpoint = load_checkpoint(ckpt_path)\n" in code
    assert "load_numpy_state(model, state_dict)\n" in code
    assert "load_numpy_state(optimizer, checkpoint['optimizer'])\n" in code
    assert "'model': nnx.to_pure_dict(nnx.state(raw_model, nnx.Not(nnx.RngState)))," in code
    assert "'optimizer': nnx.to_pure_dict(nnx.state(optimizer, nnx.Not(nnx.RngState)))," in code
    assert "save_checkpoint(os.path.join(out_dir, 'ckpt.pt'), checkpoint)" in code
    assert not [d for d in conversion.diagnostics if "state_dict" in d.message and d.code == "PT040"]
    assert not [d for d in conversion.diagnostics if "torch.load" in d.message and d.severity == "error"]


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


def test_a_model_also_bound_to_from_pretrained_is_still_an_owner():
    """nanoGPT's third branch, `model = GPT.from_pretrained(init_from, override_args)`, builds a GPT too: the
    resume branch's load_state_dict still converts."""
    source = textwrap.dedent('''
        import torch
        from model import GPT

        if init_from == 'resume':
            checkpoint = torch.load(ckpt_path, map_location='cpu')
            model = GPT()
            state_dict = checkpoint['model']
            model.load_state_dict(state_dict)
        elif init_from.startswith('gpt2'):
            model = GPT.from_pretrained(init_from, dict(dropout=0.0))
        ''')
    conversion = convert_in_tree(source, filename="s.py", known={"GPT": "module"})
    assert "load_numpy_state(model, state_dict)" in conversion.code
    assert "checkpoint = load_checkpoint(ckpt_path)" in conversion.code
