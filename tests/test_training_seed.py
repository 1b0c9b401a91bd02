"""The seed document's three training programs, converted and run unmodified:
same data, same initial weights, the losses agree with torch's.

The harness gives both runs the same initial weights without touching the
scripts: it snapshots the parameters torch's optimizer is built with, and
loads them into the converted model when its nnx.Optimizer is built.
"""

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

from porter import convert_source, load_torch_state_dict

ROOT = Path(__file__).resolve().parent.parent / "fixtures" / "training"


def run_torch(script: Path, model_name: str, monkeypatch):
    snapshots = []
    original_init = torch.optim.Optimizer.__init__

    def recording_init(self, params, defaults):
        params = list(params)
        snapshots.append([p.detach().clone() for p in params])
        original_init(self, params, defaults)

    monkeypatch.setattr(torch.optim.Optimizer, "__init__", recording_init)
    namespace = runpy.run_path(str(script))
    monkeypatch.undo()
    model = namespace[model_name]
    initial = {name: value.numpy() for (name, _), value in zip(model.named_parameters(), snapshots[0])}
    return namespace, initial


def run_converted(script: Path, initial: dict, tmp_path: Path, monkeypatch):
    conversion = convert_source(script.read_text(), filename=script.name)
    assert not conversion.has_errors, [d.format() for d in conversion.diagnostics]
    converted = tmp_path / script.name
    converted.write_text(conversion.code)
    original_init = nnx.Optimizer.__init__

    def loading_init(self, model, tx, *args, **kwargs):
        load_torch_state_dict(model, initial, strict=False)
        original_init(self, model, tx, *args, **kwargs)

    monkeypatch.setattr(nnx.Optimizer, "__init__", loading_init)
    return runpy.run_path(str(converted))


def rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def test_linear_regression_1000_sgd_steps(tmp_path, monkeypatch):
    script = ROOT / "seed_linear_regression_train.py"
    torch_ns, initial = run_torch(script, "model", monkeypatch)
    jax_ns = run_converted(script, initial, tmp_path, monkeypatch)
    assert rel(jax_ns["loss"].mean(), torch_ns["loss"].mean().item()) <= 1e-4
    assert rel(jax_ns["model"].kernel[...].T, torch_ns["model"].weight.detach().numpy()) <= 1e-4


def test_mnist_mlp_training(tmp_path, monkeypatch):
    script = ROOT / "seed_mnist_mlp_train.py"
    torch_ns, initial = run_torch(script, "model", monkeypatch)
    jax_ns = run_converted(script, initial, tmp_path, monkeypatch)
    assert len(jax_ns["losses"]) == len(torch_ns["losses"]) == 24
    assert rel(jax_ns["losses"][-1], torch_ns["losses"][-1]) <= 1e-4


def test_cifar_cnn_loss_trajectory_over_100_steps(tmp_path, monkeypatch):
    script = ROOT / "seed_cifar_cnn_train.py"
    torch_ns, initial = run_torch(script, "net", monkeypatch)
    jax_ns = run_converted(script, initial, tmp_path, monkeypatch)
    torch_losses, jax_losses = np.array(torch_ns["losses"]), np.array(jax_ns["losses"])
    assert len(torch_losses) == len(jax_losses) == 100
    per_step = np.abs(jax_losses - torch_losses) / np.abs(torch_losses)
    assert per_step.max() <= 1e-3, per_step
