"""fixtures/gpt/sample.py end to end (issue 16): converted as a tree with the model, it loads the checkpoint
the converted train.py writes (an Orbax directory: 'model' is nnx.to_pure_dict of the model's state, keys
kept; made here from the torch model's weights), builds the model, samples under torch.no_grad() and the
autocast context, and decodes: with top_k=1 (greedy) it prints torch's samples character for character.
Both scripts run unedited, as subprocesses, on the same prompt and configuration."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flax import nnx

from porter.check.modelspec import import_file
from porter.weights.loader import load_torch_state_dict

ROOT = Path(__file__).resolve().parent.parent
GPT = ROOT / "fixtures" / "gpt"
CHARS = sorted(set("\nabcdefgh ij"))
MODEL_ARGS = dict(block_size=8, vocab_size=len(CHARS), n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True)
CONFIG = {"dataset": "tiny"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("converted_gpt")
    result = subprocess.run([sys.executable, "-m", "porter", "convert", str(GPT), "-o", str(out / "gpt")],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (out / "gpt" / "sample.py").exists(), result.stderr  # (exit status 1: train.py still has errors)
    return out / "gpt", result.stdout + result.stderr


def _workdir(base: Path) -> Path:
    (base / "data" / "tiny").mkdir(parents=True)
    meta = {"vocab_size": len(CHARS), "stoi": {c: i for i, c in enumerate(CHARS)},
            "itos": {i: c for i, c in enumerate(CHARS)}}
    (base / "data" / "tiny" / "meta.pkl").write_bytes(pickle.dumps(meta))
    return base


def _run(script: Path, cwd: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, str(script), "--out_dir=out", *args], capture_output=True, text=True,
                            cwd=cwd, env={**os.environ, "PYTHONPATH": "", "JAX_PLATFORMS": "cpu"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_sampling_script_converts_with_no_error(converted):
    _, log = converted
    errors = [line for line in log.splitlines() if "sample.py" in line and " error " in line]
    assert not errors, errors


def test_converted_sample_gives_torchs_greedy_tokens(converted, tmp_path):
    out, _ = converted
    torch.manual_seed(0)
    T = import_file(GPT / "model.py")
    original = T.GPT(T.GPTConfig(**MODEL_ARGS))
    for p in original.parameters():  # weights far from zero: each greedy step has a clear winner
        p.data.normal_(0.0, 0.5)

    torch_dir = _workdir(tmp_path / "torch")
    (torch_dir / "out").mkdir()
    torch.save({"model": original.state_dict(), "model_args": MODEL_ARGS, "iter_num": 0, "best_val_loss": 9.0,
                "config": CONFIG}, torch_dir / "out" / "ckpt.pt")

    # the checkpoint the converted train.py writes, from the same weights
    jax_dir = _workdir(tmp_path / "jax")
    F = import_file(out / "model.py")
    helpers = import_file(out / "porter_helpers.py")
    model = F.GPT(F.GPTConfig(**MODEL_ARGS), rngs=nnx.Rngs(0))
    assert load_torch_state_dict(model, original.state_dict()).ok
    helpers.save_checkpoint(str(jax_dir / "out" / "ckpt.pt"), {
        "model": nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.RngState))), "model_args": MODEL_ARGS,
        "iter_num": 0, "best_val_loss": 9.0, "config": CONFIG})

    args = ("--start=ab", "--top_k=1", "--max_new_tokens=20", "--num_samples=2")
    expected = _run(GPT / "sample.py", torch_dir, *args)
    got = _run(out / "sample.py", jax_dir, *args)
    assert got == expected
    samples = [s for s in expected.split("---------------\n") if s.strip()]
    assert len(samples) >= 2 and all(len(s.rstrip("\n")) > 20 for s in samples[-2:])
