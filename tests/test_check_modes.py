"""porter check's modes against real torch: keyword/integer inputs and nested outputs, train mode and
batch-norm statistics after k steps, 16-bit dtypes, tolerance overrides, hardware selection."""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn as nn
from flax import nnx

from porter.check import equivalence as eq
from porter.check.cli import add_check_parser
from porter.check.equivalence import TOLERANCES, check_equivalence
from porter.check.modelspec import import_file
from porter.weights.loader import load_torch_state_dict

ROOT = Path(__file__).resolve().parent.parent


def run_check(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="porter")
    add_check_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["check", *argv])
    return args.run(args)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


# ---------------------------------------------------------------- several inputs, keywords, nested outputs

MULTI = '''
import torch
import torch.nn as nn
from flax import nnx


class TMulti(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 8)
        self.gate = nn.Linear(8, 8)

    def forward(self, x, ids, *, scale, mask=None):
        h = self.proj(x) + self.embed(ids)
        h = h * scale
        if mask is not None:
            h = h * mask
        return {"h": h, "pair": (self.gate(h).sum(-1), ids.argmax(-1))}


class FMulti(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs, ignore_mask: bool = False):
        self.embed = nnx.Embed(20, 8, rngs=rngs)
        self.proj = nnx.Linear(8, 8, rngs=rngs)
        self.gate = nnx.Linear(8, 8, rngs=rngs)
        self.ignore_mask = ignore_mask

    def __call__(self, x, ids, *, scale, mask=None):
        h = self.proj(x) + self.embed(ids)
        h = h * scale
        if mask is not None and not self.ignore_mask:
            h = h * mask
        return {"h": h, "pair": (self.gate(h).sum(-1), ids.argmax(-1))}
'''


@pytest.fixture()
def multi(tmp_path):
    (tmp_path / "multi.py").write_text(MULTI)
    return tmp_path / "multi.py"


def multi_inputs(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    ids = rng.integers(0, 20, (2, 5))
    kw = {"scale": rng.standard_normal((2, 1, 1)).astype(np.float32),
          "mask": (rng.random((2, 5, 1)) > 0.3).astype(np.float32)}
    return (x, ids), kw


def test_keyword_and_integer_inputs_nested_outputs(multi):
    M = import_file(multi)
    (x, ids), kw = multi_inputs()
    torch.manual_seed(0)
    report = check_equivalence(randomize(M.TMulti()), M.FMulti(rngs=nnx.Rngs(0)), x, ids, kw_inputs=kw)
    assert report.passed, report.format()
    outputs = [r.name for r in report.rows if r.kind == "output"]
    assert outputs == ["output['h']", "output['pair'][0]", "output['pair'][1]"]
    assert report.row("output['pair'][1]").max_abs == 0  # integer output: exact
    grad_inputs = [r.name for r in report.rows if r.kind == "grad input"]
    assert grad_inputs == ["input[0]", "input['scale']", "input['mask']"]  # not the token ids
    assert {r.name for r in report.rows if r.kind == "grad param"} == {n for n, _ in M.TMulti().named_parameters()}
    assert all(r.rel <= 1e-5 for r in report.rows if r.kind == "output")
    assert all(r.rel <= 1e-4 for r in report.rows if r.kind != "output")


def test_an_ignored_keyword_input_fails(multi):
    M = import_file(multi)
    (x, ids), kw = multi_inputs()
    torch.manual_seed(0)
    report = check_equivalence(randomize(M.TMulti()), M.FMulti(rngs=nnx.Rngs(0), ignore_mask=True), x, ids,
                               kw_inputs=kw)
    assert not report.row("output['h']").ok and not report.row("input['mask']", "grad input").ok


def test_keyword_inputs_from_the_command_line(multi, capsys):
    code = run_check(f"{multi}:TMulti", f"{multi}:FMulti", "--input-shape", "2,5,8", "--input-shape", "2,5",
                     "--input-shape", "scale=2,1,1", "--input-dtype", "float32", "--input-dtype", "int64",
                     "--input-dtype", "float32", "--int-high", "20", "--layers", "none", "--no-jit")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "scale=float32(2, 1, 1)" in out and "input['scale']" in out and "PASS" in out.splitlines()[-1]


# ---------------------------------------------------------------- train mode, batch norm after k steps


class TBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, 3)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.bn(self.fc(x)))))


class TorchStyleBatchNorm(nnx.Module):
    """Batch norm updating running_var with the unbiased batch variance, as torch does."""

    def __init__(self, n, momentum=0.1, eps=1e-5):
        self.weight = nnx.Param(jnp.ones(n))
        self.bias = nnx.Param(jnp.zeros(n))
        self.running_mean = nnx.BatchStat(jnp.zeros(n))
        self.running_var = nnx.BatchStat(jnp.ones(n))
        self.num_batches_tracked = nnx.BatchStat(jnp.array(0))
        self.use_running_average = False
        self.momentum, self.eps = momentum, eps

    def __call__(self, x):
        if self.use_running_average:
            mean, var = self.running_mean[...], self.running_var[...]
        else:
            n, m = x.shape[0], self.momentum
            mean, var = x.mean(0), x.var(0)
            self.running_mean[...] = (1 - m) * self.running_mean[...] + m * mean
            self.running_var[...] = (1 - m) * self.running_var[...] + m * var * n / (n - 1)
            self.num_batches_tracked[...] = self.num_batches_tracked[...] + 1
        return (x - mean) / jnp.sqrt(var + self.eps) * self.weight[...] + self.bias[...]


class FBN(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs, torch_style: bool = True):
        self.fc = nnx.Linear(6, 8, rngs=rngs)
        self.bn = TorchStyleBatchNorm(8) if torch_style else \
            nnx.BatchNorm(8, momentum=0.9, epsilon=1e-5, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(jax.nn.relu(self.bn(self.fc(x)))))


def bn_input():
    return np.random.default_rng(3).standard_normal((16, 6)).astype(np.float32) * 2 + 1


def loaded_fbn(torch_model, **kw):
    """FBN with torch_model's weights. (Loaded here, not by the check: the weight loader turns the 0-d
    num_batches_tracked into shape (1,) (np.ascontiguousarray), which the check would rightly flag.)"""
    model = FBN(rngs=nnx.Rngs(0), **kw)
    load_torch_state_dict(model, torch_model.state_dict())
    if isinstance(model.bn, TorchStyleBatchNorm):
        model.bn.num_batches_tracked.set_value(jnp.array(0))
    return model


def test_train_mode_with_batch_statistics_after_three_steps():
    torch.manual_seed(0)
    torch_model = randomize(TBN())
    report = check_equivalence(torch_model, loaded_fbn(torch_model), bn_input(), mode="train", train_steps=3,
                               lr=0.05, load_weights=False)
    assert report.passed, report.format()
    state = {r.name: r for r in report.rows if r.kind == "state"}
    assert set(state) == set(torch_model.state_dict())
    assert state["bn.num_batches_tracked"].max_abs == 0
    assert float(torch_model.bn.num_batches_tracked) == 3  # three training forwards happened
    assert float(torch_model.bn.running_var.sub(1).abs().max()) > 0.1  # the statistics moved
    assert all(r.rel <= 1e-4 for r in state.values())
    assert "dropout off on both sides" in report.format()
    # fc's bias feeds a batch norm: its gradient is zero in exact arithmetic, rounding noise in both
    assert "rounding noise" in report.row("fc.bias", "grad param").note
    assert not torch_model.training  # both left in eval mode


def test_nnx_batchnorm_running_var_differs_from_torch_after_steps():
    """flax's BatchNorm updates its running variance with the biased batch variance, torch with the
    unbiased one (n / (n - 1), 16/15 here): outputs and gradients agree, the running_var does not."""
    torch.manual_seed(0)
    report = check_equivalence(randomize(TBN()), FBN(rngs=nnx.Rngs(0), torch_style=False), bn_input(),
                               mode="train", train_steps=2, lr=0.05)
    assert [r.name for r in report.failures] == ["bn.running_var"], report.format()
    assert report.row("bn.running_mean").ok and report.row("output").ok


def test_train_mode_output_uses_batch_statistics():
    """In train mode batch norm normalises with the batch's statistics on both sides: a converted
    model that stays in eval mode would use the running ones and fail."""
    torch.manual_seed(0)

    class Stuck(FBN):
        def train(self, **kw):  # stays in eval mode: batch norm keeps using its running statistics
            return self.eval(**kw)

    report = check_equivalence(randomize(TBN()), Stuck(rngs=nnx.Rngs(0)), bn_input(), mode="train", grads=False)
    assert not report.row("output").ok
    assert report.layers.first.row.path == "bn"


# ---------------------------------------------------------------- 16-bit dtypes


def transformer_pair(tmp_path, bug: bool = False):
    torch_module = import_file(ROOT / "fixtures" / "models" / "transformer_block.py")
    source = (ROOT / "fixtures" / "expected" / "transformer_block.py").read_text()
    if bug:  # attention scaled by 1/d instead of 1/sqrt(d)
        assert "(1.0 / math.sqrt(k.shape[-1]))" in source
        source = source.replace("(1.0 / math.sqrt(k.shape[-1]))", "(1.0 / k.shape[-1])")
    (tmp_path / "block_flax.py").write_text(source)
    flax_module = import_file(tmp_path / "block_flax.py")
    torch.manual_seed(0)
    kwargs = dict(n_embd=32, n_head=4, block_size=16)
    return randomize(torch_module.Block(**kwargs)), flax_module.Block(**kwargs, rngs=nnx.Rngs(0))


def block_input():
    return np.random.default_rng(1).standard_normal((2, 16, 32)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_transformer_block_in_16_bit(tmp_path, dtype):
    report = check_equivalence(*transformer_pair(tmp_path), block_input(), dtype=dtype)
    assert report.passed, report.format()
    assert report.output_rtol == TOLERANCES[dtype].output and report.grad_rtol == TOLERANCES[dtype].grad
    assert report.row("output").rel <= TOLERANCES[dtype].output  # the output within the table itself
    assert f"cast to {dtype}" in report.format()
    assert report.layers.first is None


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_tolerances_still_catch_a_wrong_attention_scale(tmp_path, dtype):
    report = check_equivalence(*transformer_pair(tmp_path, bug=True), block_input(), dtype=dtype)
    assert not report.row("output").ok
    assert "vs float32 converted" in report.row("output").note
    # the first module after the wrong scale (in attn's forward) is the attention dropout
    assert report.layers.first.row.path == "attn.attn_dropout" and report.layers.first.row.input_ok is False
    assert report.layers.culprit.row.path == "attn"


def test_low_precision_judge_against_float32():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal(1000)
    torch_value = ref + rng.standard_normal(1000) * 0.1
    close = ref + rng.standard_normal(1000) * 0.12  # 1.2x torch's own error
    far = ref + rng.standard_normal(1000) * 0.6  # 6x
    for value, ok in ((close, True), (far, False)):
        row = eq.compare("grad param", "w", torch_value, value, 2.0**-4, 1e-12)
        assert not row.ok  # beyond the table's tolerance either way
        eq._judge(row, ref, torch_value, value, "bfloat16")
        assert row.ok is ok and "vs float32 converted" in row.note


def test_tolerance_table():
    assert TOLERANCES["float32"] == eq.Tolerance(1e-5, 1e-4)
    eps = {"bfloat16": 2.0**-7, "float16": 2.0**-10}
    for dtype, e in eps.items():
        assert float(jnp.finfo(jnp.dtype(dtype)).eps) == e
        assert TOLERANCES[dtype] == eq.Tolerance(4 * e, 8 * e)


# ---------------------------------------------------------------- --rtol/--atol, hardware, seeds

SMALL = '''
import torch.nn as nn


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.fc(x))
'''

SMALL_FLAX = '''
from flax import nnx


class Small(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.fc = nnx.Linear(8, 8, rngs=rngs)
        self.norm = nnx.LayerNorm(8, epsilon=EPS, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.fc(x))
'''


@pytest.fixture()
def small(tmp_path):
    (tmp_path / "small.py").write_text(SMALL)
    (tmp_path / "good.py").write_text(SMALL_FLAX.replace("EPS", "1e-5"))
    (tmp_path / "bad.py").write_text(SMALL_FLAX.replace("EPS", "1e-3"))
    return tmp_path


def test_rtol_atol_override(small, capsys):
    base = [f"{small / 'small.py'}:Small", "--input-shape", "4,8", "--layers", "none", "--no-jit"]
    assert run_check(base[0], f"{small / 'good.py'}:Small", *base[1:]) == 0
    assert run_check(base[0], f"{small / 'good.py'}:Small", *base[1:], "--rtol", "1e-12") == 1
    assert run_check(base[0], f"{small / 'bad.py'}:Small", *base[1:]) == 1
    assert run_check(base[0], f"{small / 'bad.py'}:Small", *base[1:], "--rtol", "0.1") == 0
    assert run_check(base[0], f"{small / 'bad.py'}:Small", *base[1:], "--atol", "1.0") == 0
    out = capsys.readouterr().out
    assert "outputs rtol 0.1" in out and "atol 1 " in out


def test_gpu_is_refused_where_there_is_none(small, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code = run_check(f"{small / 'small.py'}:Small", f"{small / 'good.py'}:Small", "--input-shape", "4,8",
                     "--device", "gpu")
    err = capsys.readouterr().err
    assert code == 2 and "--device gpu" in err and "no CUDA device" in err


@pytest.mark.parametrize("allow_tf32", [False, True])
def test_gpu_precision_settings_are_set_and_restored(allow_tf32):
    """The GPU code path's precision switch, exercised on any machine: torch's fp32 precision flags and
    jax's default matmul precision inside, the previous values afterwards."""
    flags = eq._torch_fp32_flags(torch)
    before = [getattr(obj, name) for obj, name in flags]
    jax_before = jax.config.jax_default_matmul_precision
    notes: list[str] = []
    with eq.precision("gpu", allow_tf32, notes):
        inside = [getattr(obj, name) for obj, name in flags]
        assert torch.backends.cudnn.deterministic
        if allow_tf32:
            assert inside[0] in ("tf32", True)
        else:
            assert inside == ["ieee", "ieee"] or inside == [False, False]
            assert jax.config.jax_default_matmul_precision == "highest"
    assert [getattr(obj, name) for obj, name in flags] == before
    assert jax.config.jax_default_matmul_precision == jax_before
    assert ("TF32 allowed" in notes[0]) == allow_tf32 and "both models on the gpu" in notes[0]


def test_seeded_runs_are_identical():
    def once():
        torch.manual_seed(0)
        report = check_equivalence(randomize(TBN()), FBN(rngs=nnx.Rngs(0)), bn_input(), mode="train",
                                   train_steps=2, layers=False)
        return [(r.name, r.max_abs) for r in report.rows]

    assert once() == once()


def test_jit_failure_is_a_failed_row():
    """Code that runs eagerly but whose gradient fails under jax.jit (a traced reduce_window init value, as
    the max-pool helper once had) fails the check in a row of its own; the eager figures are still compared."""

    class TPool(nn.Module):
        def forward(self, x):
            return nn.functional.max_pool2d(x, 2) * self.w

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(1))

    class FPool(nnx.Module):
        def __init__(self, *, rngs):
            self.w = nnx.Param(jnp.ones(1))

        def __call__(self, x):
            init = jnp.asarray(-jnp.inf, x.dtype)  # under jit a traced value: no reverse-mode rule
            y = jax.lax.reduce_window(x, init, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")
            return y * self.w[...]

    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    report = check_equivalence(TPool(), FPool(rngs=nnx.Rngs(0)), x)
    assert not report.passed and report.jit_ok is False
    assert report.row("forward under jax.jit", "jit").ok
    row = report.row("gradients under jax.jit(jax.grad)", "jit")
    assert not row.ok and "test_check_modes.py:" in row.note
    assert all(r.ok for r in report.rows if r.kind != "jit") and report.row("w", "grad param").ok
    assert "gradients: torch autograd; flax jax.grad(loss), eagerly" in report.notes
