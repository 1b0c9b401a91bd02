"""fixtures/gpt end to end (issue 16's acceptance): the tree converts with no error, the converted train.py
matches torch's loss at every step for 50 steps under `porter check --script` (accumulation 4, clipping,
the cosine schedule, the tied head), and it resumes from its own checkpoint.

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
    assert len(result.steps) == 200  # a loss per micro-batch: 50 optimizer steps of 4


def test_the_converted_script_resumes_from_its_own_checkpoint(trees, tmp_path):
    """The converted model starts from flax's initialisers (not torch's: reported PT005), so its curve is its own;
    resumed from its checkpoint at iteration 10 it goes on from the trained weights (a restart would begin near the
    untrained loss), as torch's does. Resumed steps equal to the uninterrupted run's: tests/test_gpt_checkpoint.py."""
    shutil.copytree(trees / "torch" / "data", tmp_path / "data")
    script = trees / "jax" / "train.py"
    first = np.asarray(run(tmp_path, script, *RESUMED)["train_losses"])
    assert len(first) == 11 and first[-3:].mean() < first[0] - 0.3  # it learns
    assert (tmp_path / "out" / "ckpt.pt").is_dir()  # an Orbax checkpoint, written at iteration 10
    resumed = run(tmp_path, script, *RESUMED, "--init_from=resume", "--max_iters=14")
    assert resumed["iter_num"] == 15 and len(resumed["train_losses"]) == 5
    assert abs(np.mean(resumed["train_losses"]) - first[-3:].mean()) < 0.3 < first[0] - max(resumed["train_losses"])
