"""`porter check --script`: a training script against its conversion, step by step.

The seed scripts' converted forms are goldens (fixtures/training/expected/, regenerated with
PORTER_UPDATE_GOLDEN=1 like the model fixtures); each must pass the check, and a converted script with
a deliberate mistake must fail it with the first diverging step named.
"""

import os
from pathlib import Path

import pytest

from porter import convert_source
from porter.check.training import check_training
from porter.cli import main

ROOT = Path(__file__).resolve().parent.parent / "fixtures" / "training"
SCRIPTS = sorted(ROOT.glob("*.py"))


def report(conversion) -> str:
    return "".join(d.format() + "\n" for d in conversion.diagnostics)


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_seed_script_converts_to_golden(script):
    conversion = convert_source(script.read_text(), filename=f"fixtures/training/{script.name}")
    golden = ROOT / "expected" / script.name
    golden_report = ROOT / "expected" / f"{script.stem}.report.txt"
    if os.environ.get("PORTER_UPDATE_GOLDEN") == "1":
        golden.write_text(conversion.code)
        golden_report.write_text(report(conversion))
    assert conversion.code == golden.read_text()
    assert report(conversion) == golden_report.read_text()


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_seed_script_trains_like_its_conversion(script):
    result = check_training(script, ROOT / "expected" / script.name)
    assert result.passed, result.format()
    assert len(result.steps) == {"seed_linear_regression_train": 1000, "seed_mnist_mlp_train": 24,
                                 "seed_cifar_cnn_train": 100, "grad_accumulation_train": 90}[script.stem]
    assert result.max_loss_rel <= 1e-5
    assert result.state and all(row.rel <= 1e-5 for row in result.state)


def test_gradient_accumulation_takes_torch_s_steps():
    """21 optimizer steps over 90 batches (k = 4, 30 batches an epoch: the remainder carries over)."""
    result = check_training(ROOT / "grad_accumulation_train.py", ROOT / "expected" / "grad_accumulation_train.py",
                            steps=21)
    assert result.passed, result.format()
    assert "optimizer steps: torch 21, jax 21" in result.format()


def _mistake(tmp_path, old: str, new: str) -> Path:
    source = (ROOT / "expected" / "seed_mnist_mlp_train.py").read_text()
    assert old in source
    wrong = tmp_path / "wrong.py"
    wrong.write_text(source.replace(old, new))
    return wrong


def test_wrong_learning_rate_is_caught_at_the_first_update(tmp_path):
    wrong = _mistake(tmp_path, "optax.sgd(learning_rate=0.01)", "optax.sgd(learning_rate=0.02)")
    result = check_training(ROOT / "seed_mnist_mlp_train.py", wrong, steps=6)
    assert not result.passed
    assert len(result.steps) == 6  # both stopped after 6 optimizer steps
    assert result.steps[0].ok  # step 1's loss is computed before any update
    assert result.first_divergence.step == 2
    assert "diverge first at step 2" in result.format()
    assert any(not row.ok for row in result.state)


def test_wrong_loss_is_caught_at_step_1_through_the_cli(tmp_path, capsys):
    wrong = _mistake(tmp_path, "loss = criterion(output, target)", "loss = criterion(output * 2, target)")
    status = main(["check", "--script", str(ROOT / "seed_mnist_mlp_train.py"), str(wrong), "--steps", "3"])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "FAIL: the losses diverge first at step 1" in out, out
    assert "step  torch loss  jax loss" in out


def test_a_converted_script_that_raises_is_a_failure(tmp_path):
    wrong = _mistake(tmp_path, "print(f\"final loss", "raise RuntimeError('boom')\nprint(f\"final loss")
    result = check_training(ROOT / "seed_mnist_mlp_train.py", wrong)
    assert not result.passed
    assert "the converted script raised RuntimeError: boom" in result.format()
    assert all(row.ok for row in result.steps)  # the steps before the error still compare
