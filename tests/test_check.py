"""porter.check: check_equivalence against real torch, its metric, and `porter check`."""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from porter.check.cli import add_check_parser
from porter.check.equivalence import ModelRunError, check_equivalence, compare
from porter.check.modelspec import import_file
from porter.weights.loader import load_torch_state_dict

MODELS = Path(__file__).with_name("test_weights_models.py")
M = import_file(MODELS)


def run_check(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="porter")
    add_check_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["check", *argv])
    return args.run(args)


def torch_net(seed=0):
    torch.manual_seed(seed)
    return M.randomize(M.TNet(), seed)


# ---------------------------------------------------------------- check_equivalence


def test_equivalent_conv_net_passes_outputs_and_gradients():
    report = check_equivalence(torch_net(), M.FNet(rngs=nnx.Rngs(3)), M.net_input())
    assert report.passed, report.format()
    names = {(r.kind, r.name) for r in report.rows}
    assert {("output", "output['cls']"), ("output", "output['reg']"), ("grad input", "input[0]")} <= names
    params = {name for name, _ in torch_net().named_parameters()}
    assert {r.name for r in report.rows if r.kind == "grad param"} == params
    for row in report.rows:  # the project's acceptance criteria, against real torch
        assert row.rel <= (1e-5 if row.kind == "output" else 1e-4), row
    text = report.format()
    assert text.splitlines()[-1].startswith("PASS") and "features.0.weight" in text
    assert "precision: jax backend cpu" in text


def test_token_ids_and_tuple_outputs():
    torch.manual_seed(0)
    ids = np.random.default_rng(0).integers(0, 50, size=(3, 7))
    report = check_equivalence(M.randomize(M.TTok()), M.FTok(rngs=nnx.Rngs(0)), torch.from_numpy(ids))
    assert report.passed, report.format()
    assert [r.name for r in report.rows if r.kind == "output"] == ["output[0]", "output[1]"]
    assert not [r for r in report.rows if r.kind == "grad input"]  # no gradient for integer inputs
    assert report.row("embed.weight").ok


def test_wrong_activation_fails():
    report = check_equivalence(torch_net(), M.FNet(rngs=nnx.Rngs(0), act=jax.nn.gelu), M.net_input())
    assert not report.passed
    assert not report.row("output['cls']").ok
    assert report.format().splitlines()[-1].startswith("FAIL")


def test_swapped_blocks_fail():
    report = check_equivalence(torch_net(), M.FNet(rngs=nnx.Rngs(0), swap_blocks=True), M.net_input())
    assert not report.passed and not report.row("output['reg']").ok


def test_swapped_weights_fail():
    net = torch_net()
    sd = dict(net.state_dict())
    sd["blocks.0.fc.weight"], sd["blocks.1.fc.weight"] = sd["blocks.1.fc.weight"], sd["blocks.0.fc.weight"]
    model = M.FNet(rngs=nnx.Rngs(0))
    load_torch_state_dict(model, sd)
    report = check_equivalence(net, model, M.net_input(), load_weights=False)
    assert not report.passed and not report.row("output['cls']").ok


def test_gradient_only_bug_is_caught():
    """Same outputs, but no gradient flows to `scale`: only the gradient comparison sees it."""
    report = check_equivalence(torch_net(), M.FNet(rngs=nnx.Rngs(0), stop_grad=True), M.net_input())
    assert all(r.ok for r in report.rows if r.kind == "output")
    assert not report.row("scale", "grad param").ok
    assert [r.name for r in report.failures] == ["scale"]
    assert not report.passed


def test_output_structure_mismatch_fails():
    class TupleOut(M.FNet):
        def __call__(self, x):
            out = super().__call__(x)
            return out["cls"], out["reg"]

    report = check_equivalence(torch_net(), TupleOut(rngs=nnx.Rngs(0)), M.net_input())
    assert not report.passed
    assert any("missing from the flax output" in r.note for r in report.rows)


def test_converted_model_error_is_reported():
    class Broken(M.FNet):
        def __call__(self, x):
            raise RuntimeError("boom")

    with pytest.raises(ModelRunError, match="converted model raised RuntimeError: boom"):
        check_equivalence(torch_net(), Broken(rngs=nnx.Rngs(0)), M.net_input())


class TBranch(torch.nn.Module):
    """A model whose forward takes a Python branch on its input's values (fine in torch)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


class FBranch(nnx.Module):
    """Its conversion as porter would write it: eagerly right, under jax.jit a traced `if`."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.fc = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class FStraight(FBranch):
    def __call__(self, x):
        return self.fc(x)


class FDevice(FBranch):
    def __call__(self, x):
        device = x.device  # a concrete array has a device, a tracer (jit or grad) has none
        return self.fc(x) if device is not None else None


def branch_input():
    return np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32) + 1.0  # sum > 0


def test_model_failing_under_jit_is_a_failed_row_and_the_eager_rows_are_still_compared():
    report = check_equivalence(TBranch(), FBranch(rngs=nnx.Rngs(0)), branch_input())
    row = report.row("forward under jax.jit", "jit")
    assert not row.ok and "TracerBoolConversionError" in row.note
    assert f"{Path(__file__).name}:{FBranch.__call__.__code__.co_firstlineno + 1}" in row.note  # the `if`
    eager = [r for r in report.rows if r.kind != "jit"]
    assert {r.kind for r in eager} == {"output", "grad input", "grad param"} and all(r.ok for r in eager)
    assert not report.passed and report.jit_ok is False
    text = report.format()
    assert "forward under jax.jit" in text and "TracerBoolConversionError" in text
    assert text.splitlines()[-1].startswith("FAIL: the converted model runs eagerly but fails forward under jax.jit")


def test_a_tracer_device_read_fails_the_jit_row_and_the_gradient_row_not_the_check():
    report = check_equivalence(TBranch(), FDevice(rngs=nnx.Rngs(0)), branch_input())
    jit, grad = report.row("forward under jax.jit", "jit"), report.row("gradients under jax.grad (eager)", "grad")
    assert not jit.ok and "AttributeError" in jit.note and "device" in jit.note
    assert not grad.ok and "AttributeError" in grad.note
    assert report.row("output", "output").ok and not report.passed


def test_a_model_that_jits_has_passing_jit_rows():
    report = check_equivalence(TBranch(), FStraight(rngs=nnx.Rngs(0)), branch_input())
    assert report.passed, report.format()
    assert report.row("forward under jax.jit", "jit").ok and report.row("gradients under jax.jit(jax.grad)").ok
    assert report.jit_ok is True and report.format().splitlines()[-1].endswith("and under jax.jit")
    no_jit = check_equivalence(TBranch(), FBranch(rngs=nnx.Rngs(0)), branch_input(), jit=False)
    assert no_jit.passed and not [r for r in no_jit.rows if r.kind == "jit"]


def test_jit_outputs_as_close_to_torch_as_the_eager_ones_pass():
    """Where rounding decides an output, compiled and eager differ by more than the tolerance although both
    are as close to torch's: that is no jit failure. An output only the compiled run gets wrong is one."""
    from porter.check.equivalence import _jit_outputs_row

    reference = np.linspace(-1, 1, 8).astype(np.float32)
    noise = np.full(8, 1e-3, np.float32)
    rounding = _jit_outputs_row({"output": reference + noise}, {"output": reference - noise},
                                {"output": reference}, 1e-5, 1e-12)
    assert rounding.ok and "as close to torch as the eager run" in rounding.note
    wrong = _jit_outputs_row({"output": reference + noise}, {"output": reference + 100 * noise},
                             {"output": reference}, 1e-5, 1e-12)
    assert not wrong.ok and "differs from the eager run" in wrong.note


def test_metric_is_normwise():
    ref = np.array([100.0, 1e-6, -3.0], np.float32)
    near = ref + np.array([1e-4, 1e-4, 0], np.float32)  # 100x off elementwise at 1e-6, 1e-6 norm-wise
    row = compare("output", "y", ref, near, rtol=1e-5, atol=1e-12)
    assert row.ok and row.rel == pytest.approx(1e-6, rel=1e-2)
    assert not compare("output", "y", ref, ref * 1.001, rtol=1e-5, atol=1e-12).ok
    zeros = np.zeros(4, np.float32)
    assert compare("grad param", "b", zeros, zeros, rtol=1e-4, atol=1e-12).ok
    assert not compare("grad param", "b", zeros, zeros + 1e-3, rtol=1e-4, atol=1e-12).ok
    assert not compare("output", "y", np.array([1.0, np.nan]), np.array([np.nan, 1.0]), 1e-5, 1e-12).ok
    assert compare("output", "y", np.array([1.0, np.nan]), np.array([1.0, np.nan]), 1e-5, 1e-12).ok
    assert compare("output", "i", np.array([3, 4]), np.array([3, 4]), 1e-5, 1e-12).ok
    assert not compare("output", "i", np.array([3, 4]), np.array([3, 5]), 0.5, 10).ok  # integers: exact
    mismatch = compare("output", "y", np.zeros((2, 3)), np.zeros((3, 2)), 1e-5, 1e-12)
    assert not mismatch.ok and "shape" in mismatch.note


# ---------------------------------------------------------------- porter check

ORIGINAL = '''
import torch.nn as nn


class MLP(nn.Module):
    def __init__(self, d_in, hidden, n_out=3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(F.relu(self.norm(h)))
'''

CONVERTED = '''
import jax
from flax import nnx


class MLP(nnx.Module):
    def __init__(self, d_in, hidden, n_out=3, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(d_in, hidden, rngs=rngs)
        self.norm = nnx.LayerNorm(hidden, epsilon=1e-5, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, n_out, rngs=rngs)

    def __call__(self, x):
        h = jax.nn.relu(self.fc1(x))
        return self.fc2(ACT(self.norm(h)))
'''


@pytest.fixture()
def mlp_files(tmp_path):
    (tmp_path / "orig.py").write_text(ORIGINAL)
    (tmp_path / "good.py").write_text(CONVERTED.replace("ACT", "jax.nn.relu"))
    (tmp_path / "bad.py").write_text(CONVERTED.replace("ACT", "jax.nn.silu"))
    return tmp_path


def test_check_cli_pass_with_conventional_names(mlp_files, capsys):
    code = run_check(f"{mlp_files / 'orig.py'}:MLP(8, 16)", f"{mlp_files / 'good.py'}:MLP",
                     "--input-shape", "4,8")
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "PASS" in out.splitlines()[-1]
    assert "warning" in err and "'torch'" in err and "'F'" in err and "'nn'" not in err


def test_check_cli_fail(mlp_files, capsys):
    code = run_check(f"{mlp_files / 'orig.py'}:MLP(8, 16)", f"{mlp_files / 'bad.py'}:MLP(8, 16)",
                     "--input-shape", "4,8", "--seed", "1")
    out = capsys.readouterr().out
    assert code == 1 and "FAIL" in out.splitlines()[-1]


def test_check_cli_shows_the_jit_row(tmp_path, capsys):
    (tmp_path / "orig.py").write_text("import torch\n\n\n" + _source(TBranch))
    (tmp_path / "conv.py").write_text("import jax\nfrom flax import nnx\n\n\n" + _source(FBranch))
    code = run_check(f"{tmp_path / 'orig.py'}:TBranch", f"{tmp_path / 'conv.py'}:FBranch", "--input-shape", "2,4",
                     "--layers", "none")
    out = capsys.readouterr().out
    assert code == 1, out
    line = next(line for line in out.splitlines() if "forward under jax.jit" in line)
    assert "FAIL" in line and "TracerBoolConversionError" in line and "conv.py:" in line
    assert "output" in out and out.splitlines()[-1].startswith("FAIL: the converted model runs eagerly")


def _source(cls) -> str:
    import inspect
    return inspect.getsource(cls)


def test_check_cli_token_ids(capsys):
    code = run_check(f"{MODELS}:TTok(50)", f"{MODELS}:FTok", "--input-shape", "2,7",
                     "--input-dtype", "int64", "--int-high", "50")
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert "embed.weight" in out and not err


@pytest.mark.parametrize("extra, message", [
    (["--input-shape", "4,x"], "comma-separated integers"),
    (["--input-shape", "4,8", "--input-dtype", "int64"], "--int-high"),
    (["--input-shape", "4,8", "--input-shape", "4,8", "--input-dtype", "float32", "--input-dtype",
      "float32", "--input-dtype", "float32"], "3 --input-dtype for 2"),
    (["--input-shape", "4,9"], "the original model raised"),
])
def test_check_cli_usage_errors(mlp_files, capsys, extra, message):
    code = run_check(f"{mlp_files / 'orig.py'}:MLP(8, 16)", f"{mlp_files / 'good.py'}:MLP", *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_check_cli_bad_spec(mlp_files, capsys):
    assert run_check(f"{mlp_files / 'orig.py'}:MLP(8, open('x'))", f"{mlp_files / 'good.py'}:MLP",
                     "--input-shape", "4,8") == 2
    assert "not a Python literal" in capsys.readouterr().err
    assert run_check(f"{mlp_files / 'nope.py'}:MLP", f"{mlp_files / 'good.py'}:MLP",
                     "--input-shape", "4,8") == 2
    assert "no such file" in capsys.readouterr().err


def test_an_embedding_padding_idx_gradient_failure_names_the_convert_warning():
    """torch keeps nn.Embedding(padding_idx=0)'s row 0 out of the gradient; the converted nnx.Embed does not
    (porter convert says so, PT005): the check's FAIL on that gradient says it is that difference."""

    class TorchBag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(12, 4, padding_idx=0)

        def forward(self, ids):
            return self.embed(ids).sum(1)

    class FlaxBag(nnx.Module):
        def __init__(self, *, rngs):
            self.embed = nnx.Embed(12, 4, rngs=rngs)

        def __call__(self, ids):
            return self.embed(ids).sum(1)

    torch.manual_seed(0)
    ids = np.array([[0, 3, 5], [0, 0, 7]])
    report = check_equivalence(TorchBag(), FlaxBag(rngs=nnx.Rngs(0)), torch.from_numpy(ids))
    row = report.row("embed.weight", "grad param")
    assert not row.ok and not report.passed
    assert "nn.Embedding(padding_idx=0)" in row.note and "PT005" in row.note, report.format()
    assert report.row("output").ok
