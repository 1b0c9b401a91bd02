"""fixtures/gpt end to end (issue 16's acceptance): the tree converts with no error, the converted train.py
matches torch's loss at every step for 50 steps under `porter check --script` (accumulation 4, clipping,
the cosine schedule, the tied head), and it resumes from its own checkpoint as torch's resumes from its own.

The scripts run unedited but for their defaults (as `--key=value` would set them; `porter check --script`
passes no arguments), in this process (runpy) from a temporary directory holding the generated corpus."""

import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from porter.check.training import check_training
from porter.cli import main

GPT = Path(__file__).resolve().parent.parent / "fixtures" / "gpt"
RESUMED = ["--max_iters=10", "--eval_interval=5", "--lr_decay_iters=10", "--warmup_iters=2"]


def _defaults(source: str, **values) -> str:
    for name, value in values.items():
        line = next(line for line in source.splitlines() if line.startswith(f"{name} = "))
        source = source.replace(line, f"{name} = {value!r}", 1)
    return source


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """torch/ (the fixture, 60 iterations, evaluation only at 0) and jax/ (its conversion), one corpus."""
    base = tmp_path_factory.mktemp("gpt_end_to_end")
    shutil.copytree(GPT, base / "torch")
    train = base / "torch" / "train.py"
    train.write_text(_defaults(train.read_text(), max_iters=60, lr_decay_iters=60, eval_interval=1000))
    assert main(["convert", str(base / "torch"), "-o", str(base / "jax")]) == 0  # 0: no error diagnostic
    run(base / "torch", base / "torch" / "prepare.py")
    return base


def run(cwd: Path, script: Path, *args: str) -> dict:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        patch.delenv("RANK", raising=False)
        patch.setattr(sys, "argv", [script.name, *args])
        patch.syspath_prepend(str(script.parent))
        patch.delitem(sys.modules, "model", raising=False)  # torch's or the converted model.py, as the script's
        return runpy.run_path(str(script), run_name="__main__")


def test_the_training_script_matches_torch_at_every_step_for_50_steps(trees, monkeypatch):
    monkeypatch.chdir(trees / "torch")  # both read data/chars there
    monkeypatch.delenv("RANK", raising=False)
    result = check_training(trees / "torch" / "train.py", trees / "jax" / "train.py", steps=50)
    assert result.passed, result.format()
    assert len(result.steps) == 50


def test_the_converted_script_resumes_from_its_own_checkpoint_as_torch_does(trees, tmp_path):
    curves = {}
    for framework in ("torch", "jax"):
        work = tmp_path / framework
        shutil.copytree(trees / "torch" / "data", work / "data")
        script = trees / framework / "train.py"
        first = run(work, script, *RESUMED)["train_losses"]
        resumed = run(work, script, *RESUMED, "--init_from=resume", "--max_iters=14")["train_losses"]
        curves[framework] = np.asarray(first, np.float64), np.asarray(resumed, np.float64)
    (torch_first, torch_resumed), (jax_first, jax_resumed) = curves["torch"], curves["jax"]
    assert len(jax_first) == 11 and len(jax_resumed) == 5  # iterations 0-10, then 10-14 from the checkpoint
    np.testing.assert_allclose(jax_first, torch_first, rtol=1e-4)
    np.testing.assert_allclose(jax_resumed, torch_resumed, rtol=1e-4)
    assert jax_resumed.max() < jax_first[0] - 0.3  # it continued from the trained weights, not from scratch
