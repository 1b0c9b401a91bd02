"""nanoGPT's get_batch (fixtures/gpt/train.py): rows drawn by `torch.randint` from an np.memmap. The draw stays
torch's (porter/convert/data_side.py, index draws): the converted script reads the original's batches, a fresh
draw at every call, and `porter check --script` compares the two step by step. pin_memory and torch.compile
are dropped with a note; the RANK test keeps its single-process meaning."""

import textwrap
from pathlib import Path

import numpy as np
import pytest

from porter import convert_source
from porter.check.training import check_training
from porter.convert.diagnostics import Severity

SCRIPT = textwrap.dedent('''\
    import os
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    block_size, batch_size, vocab = 8, 4, 13
    device = 'cpu'
    device_type = 'cuda' if 'cuda' in device else 'cpu'
    ddp = int(os.environ.get('RANK', -1)) != -1
    seed_offset = 0
    torch.manual_seed(1337 + seed_offset)
    data_dir = os.path.dirname(os.path.abspath(__file__))


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(vocab, 16)
            self.head = nn.Linear(16, vocab)

        def forward(self, idx, targets):
            logits = self.head(self.emb(idx))
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


    def get_batch(split):
        data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy((data[i:i + block_size]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block_size]).astype(np.int64)) for i in ix])
        if device_type == 'cuda':
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        else:
            x, y = x.to(device), y.to(device)
        return x, y


    model = Tiny()
    model = torch.compile(model) if os.environ.get('PORTER_TEST_COMPILE') else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for X, Y in (get_batch('train') for _ in range(STEPS)):
        loss = model(X, Y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ''')


@pytest.fixture
def corpus(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 13, size=400).astype(np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    return tmp_path


def convert(source):
    conversion = convert_source(source, filename="train.py")
    assert [d.format() for d in conversion.diagnostics if d.severity is Severity.ERROR] == []
    return conversion


def test_the_index_draw_stays_torch_and_the_rest_converts():
    conversion = convert(SCRIPT.replace("STEPS", "3"))
    code = conversion.code
    assert "    ix = torch.randint(len(data) - block_size, (batch_size,))\n" in code
    # the rows stacked on the host, moved once (op_builders.stack)
    assert "x = jnp.asarray(np.stack([(data[i:i + block_size]).astype(np.int64) for i in ix]))" in code
    assert "pin_memory" not in code and "torch.compile" not in code and "_rngs" not in code
    notes = [d.message for d in conversion.diagnostics if d.code in ("PT011", "PT007")]
    assert any("ix, drawn by torch.randint" in n and "very same rows" in n and "porter check --script" in n for n in notes)
    assert any("(PT608)" in n and "JAX places arrays" in n for n in notes)
    assert any("(PT609)" in n and "nnx.jit" in n for n in notes)


def test_a_batch_drawn_inside_the_jitted_step_is_an_error():
    """Moved into the jitted step's forward, get_batch would run once, when traced: the same batch every step."""
    source = SCRIPT.replace("for X, Y in (get_batch('train') for _ in range(STEPS)):\n",
                            "for step in range(3):\n    X, Y = get_batch('train')\n")
    conversion = convert_source(source, filename="train.py")
    [error] = [d for d in conversion.diagnostics if d.code == "PT042"]
    assert "get_batch() draws the rows of a batch" in error.message


def test_each_call_draws_fresh_rows_the_original_s(corpus, monkeypatch):
    import torch

    monkeypatch.delenv("RANK", raising=False)
    code = convert(SCRIPT.replace("STEPS", "0")).code
    namespace = {"__file__": str(corpus / "train.py"), "__name__": "__main__"}
    exec(compile(code, "train.py", "exec"), namespace)
    assert namespace["ddp"] is False  # RANK unset: one process, as the original
    torch.manual_seed(1337)
    namespace["torch"].manual_seed(1337)
    batches = [namespace["get_batch"]("train") for _ in range(3)]
    torch.manual_seed(1337)
    data = np.fromfile(corpus / "train.bin", dtype=np.uint16).astype(np.int64)
    for x, y in batches:
        ix = torch.randint(len(data) - 8, (4,)).numpy()
        np.testing.assert_array_equal(np.asarray(x), np.stack([data[i:i + 8] for i in ix]))
        np.testing.assert_array_equal(np.asarray(y), np.stack([data[i + 1:i + 9] for i in ix]))
    assert not np.array_equal(np.asarray(batches[0][0]), np.asarray(batches[1][0]))  # a fresh draw each call


def test_check_script_compares_memmap_batches_step_by_step(corpus):
    source = SCRIPT.replace("STEPS", "50")
    original, converted = corpus / "train.py", corpus / "train_jax.py"
    original.write_text(source)
    converted.write_text(convert(source).code)
    result = check_training(original, converted, steps=50)
    assert result.passed, result.format()
    assert len(result.steps) == 50 and result.steps[0].rel <= 1e-6


EVAL_SCRIPT = textwrap.dedent('''\
    import os
    from contextlib import nullcontext
    import numpy as np
    import torch
    from model import GPT, GPTConfig

    eval_iters, block_size, batch_size, device, device_type = 3, 8, 4, 'cpu', 'cpu'
    data_dir = os.path.dirname(os.path.abspath(__file__))
    ctx = nullcontext()


    def get_batch(split):
        data = np.memmap(os.path.join(data_dir, f'{split}.bin'), dtype=np.uint16, mode='r')
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([torch.from_numpy((data[i:i + block_size]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1:i + 1 + block_size]).astype(np.int64)) for i in ix])
        return x.to(device), y.to(device)


    model = GPT(GPTConfig(block_size=8, vocab_size=13, n_layer=2, n_head=2, n_embd=16, dropout=0.0))


    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ['train', 'val']:
            losses = torch.zeros(eval_iters)
            for k in range(eval_iters):
                X, Y = get_batch(split)
                with ctx:
                    logits, loss = model(X, Y)
                losses[k] = loss.item()
            out[split] = losses.mean()
        model.train()
        return out
    ''')


def test_estimate_loss_converts_and_gives_torch_s_losses(corpus):
    """train.py's estimate_loss: @torch.no_grad() dropped, model.eval()/train() kept (nnx's), losses[k] = ...
    an .at[k].set; on torch's weights and torch's batches it gives torch's mean losses."""
    import shutil
    import sys

    import torch
    from flax import nnx

    from porter.check.modelspec import import_file
    from porter.convert.pipeline import convert_in_tree
    from porter.weights.loader import load_torch_state_dict

    np.random.default_rng(1).integers(0, 13, size=300).astype(np.uint16).tofile(corpus / "val.bin")
    gpt = Path(__file__).resolve().parent.parent / "fixtures" / "gpt" / "model.py"
    original_dir, converted_dir = corpus / "torch", corpus / "jax"
    for folder in (original_dir, converted_dir):
        folder.mkdir()
        for split in ("train", "val"):
            shutil.copy(corpus / f"{split}.bin", folder)
    shutil.copy(gpt, original_dir / "model.py")
    (original_dir / "script.py").write_text(EVAL_SCRIPT)
    (converted_dir / "model.py").write_text(convert_source(gpt.read_text(), filename="model.py").code)
    conversion = convert_in_tree(EVAL_SCRIPT, filename="script.py", known={"GPT": "module"})
    assert [d.format() for d in conversion.diagnostics if d.severity is Severity.ERROR] == []
    assert "@torch.no_grad()" not in conversion.code and "losses = losses.at[k].set(loss.item())" in conversion.code
    (converted_dir / "script.py").write_text(conversion.code)
    results = {}
    for name, folder in (("torch", original_dir), ("jax", converted_dir)):
        sys.modules.pop("model", None)
        sys.path.insert(0, str(folder))
        try:
            results[name] = import_file(folder / "script.py")
        finally:
            sys.path.remove(str(folder))
            sys.modules.pop("model", None)
    original, converted = results["torch"], results["jax"]
    assert load_torch_state_dict(converted.model, original.model.state_dict()).ok
    torch.manual_seed(3)
    expected = original.estimate_loss()
    torch.manual_seed(3)
    got = converted.estimate_loss()
    for split in ("train", "val"):
        np.testing.assert_allclose(float(got[split]), float(expected[split]), rtol=1e-5)
    assert float(got["train"]) != float(got["val"])


def test_an_index_draw_in_a_function_the_model_calls_is_not_kept():
    """Called from a forward (traced under jit), a torch draw would be one constant: it converts as before."""
    source = textwrap.dedent('''\
        import torch
        import torch.nn as nn


        def shuffle(x):
            perm = torch.randperm(x.shape[0])
            return x[perm]


        class Net(nn.Module):
            def forward(self, x):
                return shuffle(x)
        ''')
    code = convert_source(source, filename="net.py").code
    assert "torch.randperm" not in code and "jax.random.permutation" in code
