"""`porter check --script`: a training script against its conversion, step by step.

The seed scripts' converted forms are goldens (fixtures/training/expected/, regenerated with
PORTER_UPDATE_GOLDEN=1 like the model fixtures); each must pass the check, and a converted script with
a deliberate mistake must fail it with the first diverging step named.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from porter import convert_source
from porter.check.training import (
    ConstructionStream, Run, _execute, check_training, compare_runs, explain_by_float64,
)
from porter.cli import main
from porter.convert.diagnostics import Severity

ROOT = Path(__file__).resolve().parent.parent / "fixtures" / "training"
SCRIPTS = sorted(ROOT.glob("*.py"))
BN_SCRIPT = Path(__file__).resolve().parent / "data" / "training" / "resnet_bn_shuffle_train.py"
MAXPOOL_SCRIPT = BN_SCRIPT.with_name("cnn_bn_maxpool_train.py")
SGD = "torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)"
OPTIMIZERS = {"sgd": SGD, "adam": "torch.optim.Adam(model.parameters(), lr=1e-3)",
              "adamw": "torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)"}


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
    # the float64 verdict: in float64 the scripts differ as much, far beyond the original's own rounding
    assert result.float64_runs == ["torch64", "jax64"]
    assert result.steps[1].note.startswith("not float32 rounding: the original moves by"), result.steps[1].note


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


def _converted_pair(tmp_path, source: str, name: str) -> tuple[Path, Path]:
    original, converted = tmp_path / f"{name}.py", tmp_path / f"{name}_jax.py"
    original.write_text(source)
    conversion = convert_source(source, filename=original.name)
    assert not [d for d in conversion.diagnostics if d.severity is Severity.ERROR], report(conversion)
    converted.write_text(conversion.code)
    return original, converted


# ---------------------------------------------------------------- the same batches in the same order


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_batchnorm_script_with_an_unseeded_shuffle_trains_like_its_conversion(tmp_path, optimizer):
    """Issue 18's acceptance: >= 50 steps with SGD (momentum), Adam and AdamW, shuffle=True without a generator
    of its own, BatchNorm in the model, clipping. Building the model draws from torch's global generator in
    the original only; the check keeps that draw off the global generator, so the shuffle is the same."""
    source = BN_SCRIPT.read_text()
    assert SGD in source
    original, converted = _converted_pair(tmp_path, source.replace(SGD, OPTIMIZERS[optimizer]), optimizer)
    result = check_training(original, converted, steps=50)
    assert result.passed, result.format()
    assert len(result.steps) == 50 and "optimizer steps: torch 50, jax 50" in result.format()
    assert result.steps[0].rel <= 1e-6  # the same first batch (it was another one: rel 9e-2)
    assert any("running_var" in row.name for row in result.state)


def test_building_a_model_leaves_torch_s_global_generator_where_its_conversion_leaves_it():
    """Under the check, the original's module construction and nn.init draw from a stream of their own: data
    drawn after the model is the data the converted script draws; the first model still gets the weights a
    plain run gives it, and torch.manual_seed restarts the stream."""
    import torch

    torch.manual_seed(0)
    plain_weights = torch.nn.Linear(3, 2).weight.detach().clone()
    torch.manual_seed(0)
    without_model = torch.randn(4)
    with ConstructionStream(torch):
        torch.manual_seed(0)
        first = torch.nn.Linear(3, 2)
        torch.nn.init.normal_(first.bias)
        after_model = torch.randn(4)
        second = torch.nn.Linear(3, 2)
        torch.manual_seed(0)
        third = torch.nn.Linear(3, 2)
    assert torch.equal(after_model, without_model)
    assert torch.equal(first.weight, plain_weights) and torch.equal(third.weight, plain_weights)
    assert not torch.equal(second.weight, first.weight)  # the stream goes on: two models, two draws
    torch.manual_seed(0)
    torch.nn.Linear(3, 2)
    assert not torch.equal(torch.randn(4), without_model)  # uninstalled: construction draws again


# ---------------------------------------------------------------- the float64 verdict


def _run(framework, losses, final=None, owners=("model",)):
    run = Run(framework, losses=list(losses), step_ends=list(range(1, len(losses) + 1)), owners=list(owners))
    run.final = [final or {}]
    run.initial = [{}]
    return run


def test_per_step_drift_within_the_original_s_own_float32_error_is_rounding():
    """Adam's runs part slowly in float32: a step out of the fixed tolerance passes when the original's own
    float32 run is that far from its float64 run (the largest own error so far, times CONDITION_FACTOR)."""
    exact = [2.0, 1.5, 1.2, 1.0]
    torch32 = [2.0, 1.5 * (1 + 1e-7), 1.2 * (1 + 2e-4), 1.0 * (1 + 1e-6)]  # rounding carried over from step 3
    jax32 = [2.0, 1.5, 1.2 * (1 - 3e-4), 1.0 * (1 + 5e-4)]
    report = compare_runs(_run("torch", torch32), _run("jax", jax32), "a.py", "b.py")
    assert [row.ok for row in report.steps] == [True, True, False, False]
    explain_by_float64(report, _run("torch", torch32), _run("torch64", exact))
    assert report.passed, report.format()
    assert report.steps[3].note.startswith("float32 rounding: the original itself moves by 0.0002")


def test_a_step_beyond_the_band_that_float64_does_not_explain_fails():
    exact = [2.0, 1.5, 1.2]
    torch32 = [2.0, 1.5 * (1 + 1e-7), 1.2 * (1 + 1e-7)]
    jax32 = [2.0, 1.5 * (1 + 3e-3), 1.2 * (1 + 5e-3)]  # a learning rate off: the original moves by 1e-7
    jax64 = [2.0, 1.5 * (1 + 3e-3), 1.2 * (1 + 5e-3)]
    report = compare_runs(_run("torch", torch32), _run("jax", jax32), "a.py", "b.py")
    explain_by_float64(report, _run("torch", torch32), _run("torch64", exact), _run("jax64", jax64))
    assert not report.passed and report.first_divergence.step == 2
    assert "not float32 rounding: the original moves by 1e-07, and in float64 the scripts differ by 0.003" \
        in report.steps[1].note


def test_a_difference_the_training_amplified_is_rounding_when_both_scripts_agree_in_float64():
    """A max-pool window whose inputs are within rounding of each other sends one gradient elsewhere: the
    float32 runs part by 1e-3 while the original's float32 run stays 1e-7 from float64. In float64 both
    scripts agree (or differ by less than float32 resolves), so that is rounding, amplified."""
    exact = [2.0, 1.5, 1.2]
    torch32 = [2.0, 1.5 * (1 + 1e-7), 1.2 * (1 + 1e-7)]
    jax32 = [2.0, 1.5 * (1 + 1e-3), 1.2 * (1 + 2e-3)]
    jax64 = [2.0, 1.5 * (1 + 1e-15), 1.2 * (1 + 3e-7)]
    report = compare_runs(_run("torch", torch32), _run("jax", jax32), "a.py", "b.py")
    explain_by_float64(report, _run("torch", torch32), _run("torch64", exact), _run("jax64", jax64))
    assert report.passed, report.format()
    assert report.steps[1].note == "float32 rounding: in float64 both scripts agree to 1e-15"
    assert report.steps[2].note.startswith("float32 rounding, amplified: in float64 the scripts differ by 3e-07")


def test_a_near_zero_array_is_judged_in_its_own_units_on_both_sides():
    """A BatchNorm bias that ends near zero (2e-4) differs by 2e-6: relative 0.011, far out of the fixed
    tolerance. The original's own float32 error on it, in the same units, decides."""
    bias = np.full(4, 2e-4)
    exact = {"bn.bias": bias}
    state = lambda error: {"bn.bias": (bias + error).astype(np.float32)}  # noqa: E731
    for own_error, verdict in ((1e-6, True), (1e-9, False)):
        torch_run = _run("torch", [1.0], state(own_error))
        report = compare_runs(torch_run, _run("jax", [1.0], state(own_error + 2.2e-6)), "a.py", "b.py")
        [row] = report.state
        assert not row.ok and 0.005 < row.rel < 0.02
        explain_by_float64(report, torch_run, _run("torch64", [1.0], exact))
        assert row.ok is verdict, row


def test_a_float32_divergence_amplified_by_training_passes_by_the_float64_runs(tmp_path):
    """A BatchNorm + max-pool CNN whose float32 runs part by ~1e-3 from step 14 on (measured: torch float32
    stays within 1e-6 of torch float64) while both scripts agree to ~1e-14 in float64: rounding, amplified."""
    original, converted = _converted_pair(tmp_path, MAXPOOL_SCRIPT.read_text(), "maxpool")
    result = check_training(original, converted, steps=20)
    assert result.passed, result.format()
    assert result.float64_runs == ["torch64", "jax64"]
    assert result.max_loss_rel > 1e-4  # out of the fixed tolerance: the verdict decided
    assert "float32 rounding: in float64 both scripts agree to" in result.format()


# ---------------------------------------------------------------- a converted script that raises


def test_a_script_that_raises_is_recorded_with_its_own_frames(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    helpers = tmp_path / "porter_crash_helpers.py"
    helpers.write_text("def step(x):\n    return x.missing\n")
    script = tmp_path / "train_jax.py"
    script.write_text("import porter_crash_helpers\n\nporter_crash_helpers.step(1)\n")
    run = Run("jax")
    try:
        _execute(script, run)
    finally:
        sys.modules.pop("porter_crash_helpers", None)
    assert run.error == "AttributeError: 'int' object has no attribute 'missing'"
    assert run.traceback == [f"{script}:3 in <module>: porter_crash_helpers.step(1)",
                             f"{helpers}:2 in step: return x.missing"]


def test_a_crash_before_the_optimizer_is_reported_without_the_optimizer_count():
    torch_run = Run("torch", losses=[2.0, 1.0], step_ends=[1, 2], owners=["net"], initial=[{}],
                    final=[{"w": np.ones(2, np.float32)}])
    jax_run = Run("jax", error="TypeError: 'int' object is not callable",
                  traceback=["/tmp/x/train_jax.py:41 in <module>: criterion = cross_entropy_loss(1)"])
    text = compare_runs(torch_run, jax_run, "train.py", "train_jax.py").format()
    assert ("FAIL: the converted script raised TypeError: 'int' object is not callable\n  after 0 optimizer steps, "
            "at (innermost last):\n    /tmp/x/train_jax.py:41 in <module>: criterion = cross_entropy_loss(1)") in text, text
    assert "nnx.Optimizers" not in text and "took different numbers" not in text
    assert "final state not compared" in text


def test_a_converted_step_that_raises_under_jit_names_the_line_in_the_converted_script(tmp_path):
    wrong = _mistake(tmp_path, "output = model(data)", "output = model(data.reshape(-1, 7))")
    line = next(i for i, text in enumerate(wrong.read_text().splitlines(), 1) if "reshape(-1, 7)" in text)
    result = check_training(ROOT / "seed_mnist_mlp_train.py", wrong, steps=3)
    assert not result.passed
    text = result.format()
    assert f"{wrong}:{line} in loss_fn: output = model(data.reshape(-1, 7))" in text, text
    assert "after 0 optimizer steps" in text and "nnx.Optimizers" not in text


RESUMING_SCRIPT = '''
import os
import numpy as np
import torch
import torch.nn as nn

torch.manual_seed(0)
data = np.load(os.path.join("data", "xy.npy"))
x = torch.tensor(data[:, :3], dtype=torch.float32)
y = torch.tensor(data[:, 3:], dtype=torch.float32)
model = nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
ckpt_path = os.path.join("out", "ckpt.pt")
if os.path.exists(ckpt_path):
    checkpoint = torch.load(ckpt_path, map_location="cpu")
    model.load_state_dict(checkpoint["model"])
for step in range(5):
    loss = ((model(x) - y) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
os.makedirs("out", exist_ok=True)
torch.save({"model": model.state_dict(), "step": step}, ckpt_path)
'''


def test_each_run_writes_its_outputs_in_its_own_directory(tmp_path, monkeypatch):
    """Both runs read data/ relative to the caller's directory, and write out/ckpt.pt: the converted run
    must not find (and resume from) torch's checkpoint, and the caller's directory keeps no outputs."""
    (tmp_path / "data").mkdir()
    np.save(tmp_path / "data" / "xy.npy", np.random.default_rng(0).normal(size=(16, 4)))
    original = tmp_path / "train.py"
    original.write_text(RESUMING_SCRIPT)
    converted = tmp_path / "train_jax.py"
    conversion = convert_source(RESUMING_SCRIPT, filename="train.py")
    assert not [d for d in conversion.diagnostics if d.severity is Severity.ERROR], report(conversion)
    converted.write_text(conversion.code)
    monkeypatch.chdir(tmp_path)
    result = check_training(original.name, converted.name, float64=False)
    assert result.passed, result.format()
    assert len(result.steps) == 5
    assert not (tmp_path / "out").exists()


def test_a_run_s_directory_mirrors_the_caller_s(tmp_path):
    """Directories recreated (what a run creates in them stays in the run's), files linked, hidden directories
    linked whole, the check's own temporary directory left out."""
    from porter.check.workdir import mirror

    caller = tmp_path / "caller"
    (caller / "data" / "tiny").mkdir(parents=True)
    (caller / "data" / "tiny" / "train.bin").write_bytes(b"\x01\x02")
    (caller / ".git").mkdir()
    (caller / "check").mkdir()
    run = mirror(caller, caller / "check" / "cwd-torch", leave_out=caller / "check")
    assert (run / "data" / "tiny").is_dir() and not (run / "data").is_symlink()
    assert (run / "data" / "tiny" / "train.bin").is_symlink()
    assert (run / "data" / "tiny" / "train.bin").read_bytes() == b"\x01\x02"
    assert (run / ".git").is_symlink()
    assert not (run / "check").exists()
    (run / "data" / "tiny" / "new.bin").write_bytes(b"")
    assert not (caller / "data" / "tiny" / "new.bin").exists()
