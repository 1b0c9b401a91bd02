"""Issue 18's acceptance on fixtures/scripts/project: training scripts as people write them.

Two models in their own files and two training scripts importing them (a DataLoader over a TensorDataset,
data built with torch.randn / randint and edited in place, validation and test loops, a checkpoint saved
and resumed), converted as a directory and file by file: the converted scripts run to the end with no
hand edits, and `porter check --script` passes for >= 50 steps with SGD, Adam and AdamW (shuffle on,
BatchNorm in the model, no generator given to the loader).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from porter.check.training import check_training
from porter.cli import main

PROJECT = Path(__file__).resolve().parent.parent / "fixtures" / "scripts" / "project"
SCRIPTS = ("train.py", "train_encoder.py")
MODELS = ("resnet_small.py", "encoder.py")


def run_script(directory: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, script, *args], cwd=directory, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{directory / script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def error_lines(report: str) -> list[str]:
    return [line for line in report.splitlines() if " error " in line]


def test_project_converted_as_a_directory_runs_to_the_end(tmp_path, capsys):
    out = tmp_path / "out"
    main(["convert", str(PROJECT), "-o", str(out)])
    report = capsys.readouterr()
    assert error_lines(report.out + report.err) == []
    outputs = {script: run_script(out, script).stdout for script in SCRIPTS}
    assert all("epoch 1" in stdout for stdout in outputs.values())
    assert "test acc" in outputs["train.py"]  # after the checkpoint's save and restore


def test_project_converted_file_by_file_runs_to_the_end(tmp_path, capsys):
    out = tmp_path / "files"
    out.mkdir()
    for name in MODELS + SCRIPTS:
        main(["convert", str(PROJECT / name), "-o", str(out / name)])
    report = capsys.readouterr()
    assert error_lines(report.out + report.err) == []
    for script in SCRIPTS:
        assert "epoch 1" in run_script(out, script).stdout


def _variant(directory: Path, optimizer: str) -> Path:
    """train.py with another default optimizer and enough epochs for 50 steps (8 a epoch)."""
    directory.mkdir()
    for name in MODELS:
        shutil.copy(PROJECT / name, directory / name)
    source = (PROJECT / "train.py").read_text()
    for old, new in (('default="adamw"', f'default="{optimizer}"'), ('"--epochs", type=int, default=2',
                                                                      '"--epochs", type=int, default=7')):
        assert old in source
        source = source.replace(old, new)
    (directory / "train.py").write_text(source)
    return directory / "train.py"


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_check_script_passes_50_steps(tmp_path, optimizer, capsys):
    original = _variant(tmp_path / "torch", optimizer)
    main(["convert", str(original.parent), "-o", str(tmp_path / "jax")])
    capsys.readouterr()
    result = check_training(original, tmp_path / "jax" / "train.py", steps=50)
    assert result.passed, result.format()
    assert len(result.steps) == 50


def test_check_script_passes_on_the_encoder_script(tmp_path, capsys):
    main(["convert", str(PROJECT), "-o", str(tmp_path / "jax")])
    capsys.readouterr()
    result = check_training(PROJECT / "train_encoder.py", tmp_path / "jax" / "train_encoder.py")
    assert result.passed, result.format()
    assert len(result.steps) == 16
