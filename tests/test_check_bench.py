"""porter bench: the measurement machinery (not the numbers, which depend on the machine)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from flax import nnx

from porter.check import bench
from porter.check.bench_cli import add_bench_parser

ORIGINAL = '''
import torch.nn as nn


class MLP(nn.Module):
    def __init__(self, d=8):
        super().__init__()
        self.fc1 = nn.Linear(d, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))
'''

CONVERTED = '''
import jax
from flax import nnx


class MLP(nnx.Module):
    def __init__(self, d=8, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(d, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.fc2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        return self.fc2(self.drop(jax.nn.relu(self.bn(self.fc1(x)))))
'''


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "mlp.py").write_text(ORIGINAL)
    (tmp_path / "mlp_flax.py").write_text(CONVERTED)
    return tmp_path


def run_bench(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="porter")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *argv])
    return args.run(args)


def pair(files):
    from porter.check.modelspec import import_file

    torch_module = import_file(files / "mlp.py", preseed={"torch": torch})
    torch.manual_seed(0)
    return torch_module.MLP(), import_file(files / "mlp_flax.py").MLP(rngs=nnx.Rngs(0))


def test_bench_models_measures_every_variant(files, monkeypatch):
    def no_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compile)
    torch_model, flax_model = pair(files)
    weights = {k: v.clone() for k, v in torch_model.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    result = bench.bench_models(torch_model, flax_model, x, repeats=3, warmup=1)
    eager, compiled, jax_ = (result.result(v) for v in bench.VARIANTS)
    for m in (eager.forward, eager.train, jax_.forward, jax_.train):
        assert m.error is None and m.median_ms > 0
    assert jax_.forward.compile_s > 0 and jax_.train.compile_s > 0
    assert eager.forward.compile_s is None
    assert result.ratio("torch eager", "forward") == 1.0
    assert compiled.forward.median_ms is None and "torch.compile failed: RuntimeError: no C++ compiler" in \
        compiled.forward.error
    text = result.format()
    assert "torch.compile forward: not measured: torch.compile failed" in text
    assert all(v in text for v in bench.VARIANTS) and "x eager" in text
    data = json.loads(json.dumps(result.to_json()))
    assert [r["variant"] for r in data["results"]] == list(bench.VARIANTS)
    assert data["results"][2]["train"]["speedup_vs_torch_eager"] > 0
    # the original's weights and statistics are back where they were; the flax model still works
    assert all(torch.equal(v, torch_model.state_dict()[k]) for k, v in weights.items())
    flax_model.eval()
    assert np.isfinite(np.asarray(flax_model(x))).all()


def test_jax_train_step_is_torchs_sgd_step():
    """The timed jax step really trains: two steps on a small model give torch's two SGD steps."""
    from porter.weights.loader import load_torch_state_dict

    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2)
    flin = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    load_torch_state_dict(flin, lin.state_dict())
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    c = np.random.default_rng(2).standard_normal((5, 2)).astype(np.float32)
    kernel_before = np.asarray(flin.kernel[...]).copy()
    compiled, carry, unflatten = bench.jax_train_step(flin, [x], {}, [c], 0.1)
    for _ in range(2):
        carry, _ = compiled(carry, [x], {})
    params, _, _ = unflatten(carry)
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (lin(torch.from_numpy(x)) * torch.from_numpy(c)).sum().backward()
        opt.step()
    np.testing.assert_allclose(np.asarray(params["kernel"][...]).T, lin.weight.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(params["bias"][...]), lin.bias.detach().numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(flin.kernel[...]), kernel_before)  # the model is untouched


def test_cli_text_and_json(files, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    code = run_bench(f"{files / 'mlp.py'}:MLP", f"{files / 'mlp_flax.py'}:MLP", "--input-shape", "4,8",
                     "--repeats", "2", "--warmup", "1", "--no-compile", "--json", str(out_json))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "porter bench: MLP()" in out and "skipped (--no-compile)" in out
    data = json.loads(out_json.read_text())
    assert data["settings"]["repeats"] == 2 and len(data["results"]) == 3


def test_cli_plot_needs_matplotlib(files, capsys, monkeypatch):
    monkeypatch.setattr(bench, "have_matplotlib", lambda: False)
    code = run_bench(f"{files / 'mlp.py'}:MLP", f"{files / 'mlp_flax.py'}:MLP", "--input-shape", "4,8",
                     "--plot", "x.png")
    assert code == 2 and "needs matplotlib" in capsys.readouterr().err


def test_handwritten_variant_timed_beside_the_converted(files, monkeypatch):
    """A hand-written model is a fourth variant, timed call for call in turn with the converted one,
    and the ratio converted / hand-written is in the text and the JSON."""
    from porter.weights.loader import load_torch_state_dict

    torch_model, flax_model = pair(files)
    handwritten = import_file_flax(files).MLP(rngs=nnx.Rngs(1))
    load_torch_state_dict(handwritten, torch_model.state_dict())
    calls = []
    original = bench._time_side_by_side

    def spy(prepared, repeats, warmup):
        calls.append([p.result.variant for p in prepared])
        return original(prepared, repeats, warmup)

    monkeypatch.setattr(bench, "_time_side_by_side", spy)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    result = bench.bench_models(torch_model, flax_model, x, repeats=3, warmup=1, compile=False,
                                handwritten=handwritten)
    assert calls == [["torch eager", "jax.jit (converted)", bench.HANDWRITTEN]]
    hand = result.result(bench.HANDWRITTEN)
    assert hand.forward.median_ms > 0 and hand.train.median_ms > 0 and hand.train.compile_s > 0
    assert result.ratio(bench.HANDWRITTEN, "train", base=bench.HANDWRITTEN) == 1.0
    assert result.ratio("jax.jit (converted)", "train", base=bench.HANDWRITTEN) > 0
    assert "converted / hand-written speed" in result.format()
    data = result.to_json()
    assert [r["variant"] for r in data["results"]] == [*bench.VARIANTS, bench.HANDWRITTEN]
    assert data["results"][2]["train"]["speed_vs_handwritten"] > 0


def import_file_flax(files):
    from porter.check.modelspec import import_file

    return import_file(files / "mlp_flax.py")


def test_emitted_train_step_variant(files):
    """emitted_step=True times the step as porter writes a training loop (nnx.jit via fast_partial),
    on a copy: the benchmarked model's own weights do not move."""
    torch_model, flax_model = pair(files)
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    from porter.weights.loader import load_torch_state_dict

    load_torch_state_dict(flax_model, torch_model.state_dict())  # what bench_models loads too
    kernel = np.asarray(flax_model.fc1.kernel[...]).copy()
    result = bench.bench_models(torch_model, flax_model, x, repeats=3, warmup=1, compile=False, emitted_step=True)
    emitted = result.result(bench.EMITTED)
    assert emitted.train.median_ms > 0 and emitted.train.compile_s > 0 and emitted.train.error is None
    assert emitted.forward.median_ms is None and "no jitted forward" in emitted.forward.error
    assert result.ratio(bench.EMITTED, "train") > 0 and result.settings["interleaved"]
    np.testing.assert_array_equal(np.asarray(flax_model.fc1.kernel[...]), kernel)


def test_side_by_side_timing_shuffles_and_warms_short_calls():
    """Each round times one call of each variant, in a shuffled order; a short call runs once
    untimed just before its timed call (caches as its own previous step left them)."""
    log = []
    prepared = [bench._Prepared(bench.VariantResult(name), forward=lambda name=name: log.append(name))
                for name in "ab"]
    bench._time_side_by_side(prepared, repeats=8, warmup=1)
    assert log[:2] == ["a", "b"]  # warm-up
    rounds = [log[i:i + 4] for i in range(2, len(log), 4)]
    assert len(rounds) == 8 and all(r in (["a", "a", "b", "b"], ["b", "b", "a", "a"]) for r in rounds)
    assert len({tuple(r) for r in rounds}) == 2  # both orders occur
    assert all(p.result.forward.median_ms is not None and p.result.train.median_ms is None for p in prepared)
