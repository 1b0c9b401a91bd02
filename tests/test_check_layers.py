"""porter check's layer-by-layer localisation, against real torch.

The converted models here are written the way `porter convert` writes them
(attribute names kept, nnx.Sequential/List/Dict, stateless layers as plain
functions), as source files, so that source lines can be checked too.
"""

from __future__ import annotations

import argparse
import re

import jax
import numpy as np
import torch
from flax import nnx

from porter.check.cli import add_check_parser
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import import_file
from porter.emitted import ChannelsFirstConv

ORIGINAL = '''
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(torch.relu(self.norm(x)))


class Deep(nn.Module):
    """20 layers in one Sequential, a ModuleList of blocks, a module called twice, a ModuleDict."""

    def __init__(self, d=16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(d, d),
            nn.LayerNorm(d),
            nn.ReLU(),
            nn.Linear(d, d),
            nn.LayerNorm(d),
            nn.Tanh(),
            nn.Linear(d, d),
            nn.LayerNorm(d),
            nn.GELU(),
            nn.Linear(d, d),
            nn.LayerNorm(d),
            nn.ReLU(),
            nn.Linear(d, d),
            nn.LayerNorm(d),
            nn.Tanh(),
            nn.Linear(d, d),
            nn.LayerNorm(d),
            nn.GELU(),
            nn.Linear(d, d),
            nn.LayerNorm(d),
        )
        self.blocks = nn.ModuleList([Block(d), Block(d)])
        self.act = nn.SiLU()
        self.heads = nn.ModuleDict({
            "score": nn.Linear(d, 3),
            "embed": nn.Sequential(nn.Linear(d, 4), nn.Tanh()),
        })

    def forward(self, x):
        h = self.body(x)
        for block in self.blocks:
            h = block(h)
        h = self.act(self.act(h))
        return {"score": self.heads["score"](h), "embed": self.heads["embed"](h)}
'''

CONVERTED = '''
from functools import partial
import jax
import jax.numpy as jnp
from flax import nnx


class Block(nnx.Module):
    def __init__(self, d, *, rngs: nnx.Rngs):
        self.norm = nnx.LayerNorm(d, epsilon=1e-05, rngs=rngs)
        self.fc = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x):
        return x + self.fc(BLOCK_ACT(self.norm(x)))


class Deep(nnx.Module):
    """20 layers in one Sequential, a ModuleList of blocks, a module called twice, a ModuleDict."""

    def __init__(self, d=16, *, rngs: nnx.Rngs):
        self.body = nnx.Sequential(
            nnx.Linear(d, d, rngs=rngs),
            nnx.LayerNorm(d, epsilon=1e-05, rngs=rngs),
            jax.nn.relu,
            nnx.Linear(d, d, rngs=rngs),
            nnx.LayerNorm(d, epsilon=1e-05, rngs=rngs),
            jnp.tanh,
            nnx.Linear(d, d, rngs=rngs),
            nnx.LayerNorm(d, epsilon=1e-05, rngs=rngs),
            partial(jax.nn.gelu, approximate=False),
            nnx.Linear(d, d, rngs=rngs),
            nnx.LayerNorm(d, epsilon=1e-05, rngs=rngs),
            jax.nn.relu,
            nnx.Linear(d, d, rngs=rngs),
            nnx.LayerNorm(d, epsilon=1e-05, rngs=rngs),
            jnp.tanh,
            nnx.Linear(d, d, rngs=rngs),
            nnx.LayerNorm(d, epsilon=1e-05, rngs=rngs),
            partial(jax.nn.gelu, approximate=False),
            nnx.Linear(d, d, rngs=rngs),
            nnx.LayerNorm(d, epsilon=1e-05, rngs=rngs),
        )
        self.blocks = nnx.List([Block(d, rngs=rngs), Block(d, rngs=rngs)])
        self.act = jax.nn.silu
        self.heads = nnx.Dict({
            "score": nnx.Linear(d, 3, rngs=rngs),
            "embed": nnx.Sequential(nnx.Linear(d, 4, rngs=rngs), jnp.tanh),
        })

    def __call__(self, x):
        h = self.body(x)
        for block in self.blocks:
            h = block(h)
        h = self.act(self.act(h))
        return {"score": self.heads["score"](h), "embed": self.heads["embed"](h)}
'''


def run_check(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="porter")
    add_check_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["check", *argv])
    return args.run(args)


def write_pair(tmp_path, converted: str = CONVERTED, block_act: str = "jax.nn.relu"):
    (tmp_path / "deep.py").write_text(ORIGINAL)
    (tmp_path / "deep_flax.py").write_text(converted.replace("BLOCK_ACT", block_act))
    return tmp_path / "deep.py", tmp_path / "deep_flax.py"


def plant(source: str, needle: str, replacement: str, occurrence: int) -> tuple[str, int]:
    """Replace the occurrence-th (0-based) `needle`; return the new source and the 1-based line changed."""
    starts = [m.start() for m in re.finditer(re.escape(needle), source)]
    at = starts[occurrence]
    return source[:at] + replacement + source[at + len(needle):], source.count("\n", 0, at) + 1


def build(tmp_path, converted: str = CONVERTED, block_act: str = "jax.nn.relu", seed: int = 0):
    orig, conv = write_pair(tmp_path, converted, block_act)
    torch.manual_seed(seed)
    torch_model = import_file(orig).Deep()
    with torch.no_grad():  # LayerNorm's default scale 1 / bias 0 would hide a swapped scale and bias
        gen = torch.Generator().manual_seed(seed)
        for p in torch_model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return torch_model, import_file(conv).Deep(rngs=nnx.Rngs(0))


def x_input(batch=4, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 16)).astype(np.float32)


# ---------------------------------------------------------------- the acceptance test


def test_planted_wrong_epsilon_is_named_first_with_its_line(tmp_path, capsys):
    """A wrong epsilon in the 6th of 7 LayerNorms of the 20-layer Sequential: `porter check` names
    that layer (body.16) as the first divergence, with its line in the converted file, and finds
    that the layer is wrong on its own input (the layers before it all agree)."""
    # occurrence 0 is Block's LayerNorm; 1..7 are body.1, body.4, ..., body.19
    broken, line = plant(CONVERTED, "epsilon=1e-05", "epsilon=1e-02", 6)
    orig, conv = write_pair(tmp_path, broken)
    code = run_check(f"{orig}:Deep", f"{conv}:Deep", "--input-shape", "4,16")
    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines()[-1].startswith("FAIL") and "first diverging module: body.16" in out.splitlines()[-1]
    first = out[out.index("first divergence:"):]
    assert first.startswith("first divergence: body.16 ")
    assert "the module itself computes differently" in first.splitlines()[1]
    assert f"deep_flax.py:{line}" in first  # the planted line
    orig_lines = [i + 1 for i, t in enumerate(ORIGINAL.splitlines()) if t == "            nn.LayerNorm(d),"]
    assert f"deep.py:{orig_lines[5]}" in first  # the same layer's line in the original
    table = out[out.index("  #  "):]
    rows = [r for r in table.splitlines()[1:] if re.match(r"\s+\d+\s", r)]
    before = rows[:rows.index(next(r for r in rows if "<- first" in r))]
    assert len(before) == 16 and all(re.search(r"\sok\b", r) for r in before)  # body.0 .. body.15 agree


def test_same_models_without_the_bug_pass(tmp_path):
    torch_model, flax_model = build(tmp_path)
    report = check_equivalence(torch_model, flax_model, x_input())
    assert report.passed, report.format()
    layers = report.layers
    assert layers.first is None and layers.culprit is None and not layers.failures
    assert max(r.rel for r in layers.compared) <= 1e-5
    assert max(r.local_rel for r in layers.compared) <= 1e-5
    paths = [(r.path, r.call) for r in layers.rows]
    # every body layer, then the Sequential itself, in execution order
    assert paths[:21] == [(f"body.{i}", 0) for i in range(20)] + [("body", 0)]
    # nested ModuleList items and their children, inner modules finishing first
    assert paths[21:24] == [("blocks.0.norm", 0), ("blocks.0.fc", 0), ("blocks.0", 0)]
    # a stateless module called twice: two rows, matched call by call
    assert ("act", 0) in paths and ("act", 1) in paths
    act = [r for r in layers.rows if r.path == "act"]
    assert [r.label for r in act] == ["act (call 1/2)", "act (call 2/2)"]
    assert {r.flax_class for r in act} == {"silu"}
    # ModuleDict, and a Sequential inside it
    assert {"heads.score", "heads.embed.0", "heads.embed.1", "heads.embed"} <= {p for p, _ in paths}
    body2 = layers.row("body.2")
    assert body2.torch_class == "ReLU" and body2.flax_class == "relu" and body2.status == "ok"


def test_second_call_of_a_module_is_compared_on_its_own(tmp_path):
    """Only the second call of `act` is wrong in the converted forward: row act call 2 is the first."""
    broken = CONVERTED.replace("h = self.act(self.act(h))", "h = self.act(self.act(h) * 1.01)")
    torch_model, flax_model = build(tmp_path, broken)
    report = check_equivalence(torch_model, flax_model, x_input(), grads=False)
    layers = report.layers
    assert layers.row("act", 0).status == "ok"
    assert layers.first.row.path == "act" and layers.first.row.call == 1
    assert layers.first.row.local_ok  # silu itself is right; its input is not
    assert "code between modules, in the forward of the model" in layers.first.explanation
    assert any("Deep.__call__" in w for w in layers.first.flax_where)
    assert any("Deep.forward" in w for w in layers.first.torch_where)


def test_bug_in_forward_code_points_to_the_enclosing_module(tmp_path):
    """gelu instead of relu inside Block's forward (not a module): the first diverging module is
    blocks.0.fc (its input differs), and the first that is wrong on torch's own input is blocks.0."""
    torch_model, flax_model = build(tmp_path, block_act="jax.nn.gelu")
    report = check_equivalence(torch_model, flax_model, x_input(), grads=False)
    assert not report.passed
    first, culprit = report.layers.first, report.layers.culprit
    assert first.row.path == "blocks.0.fc" and first.row.input_ok is False and first.row.local_ok
    assert culprit.row.path == "blocks.0" and culprit.row.local_ok is False
    assert "forward of blocks.0" in first.explanation
    assert any("Block.__call__ at" in w and "deep_flax.py" in w for w in first.flax_where)
    text = report.format()
    assert "first module that differs on torch's own input: blocks.0" in text


def test_a_different_internal_layout_is_reported_but_does_not_fail(tmp_path):
    """The contract is about the boundary: a module returning channels-last inside is a layer
    difference (shape), not a failure of the check, as long as the model's outputs agree."""

    class TNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    class NHWCConv(ChannelsFirstConv):  # returns channels-last; the parent takes that into account
        def __call__(self, x):
            return nnx.Conv.__call__(self, jax.numpy.moveaxis(x, 1, -1))

    class FNet(nnx.Module):
        def __init__(self, *, rngs):
            self.conv = NHWCConv(3, 4, kernel_size=(3, 3), padding=((1, 1), (1, 1)), rngs=rngs)

        def __call__(self, x):
            return self.conv(x).mean(axis=(1, 2))

    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    report = check_equivalence(TNet(), FNet(rngs=nnx.Rngs(0)), x)
    assert report.passed, report.format()
    row = report.layers.row("conv")
    assert row.status == "FAIL" and "shape: torch (2, 4, 5, 5), flax (2, 5, 5, 4)" in row.note
    assert "PASS" in report.format().splitlines()[-1] and "module outputs differ" in report.format()


def test_instrumentation_is_removed_afterwards(tmp_path):
    torch_model, flax_model = build(tmp_path)
    calls_before = {cls: vars(cls)["__call__"] for cls in (nnx.Linear, nnx.LayerNorm, nnx.Sequential)}
    act_before = flax_model.act
    relu_before = flax_model.body.layers[2]
    check_equivalence(torch_model, flax_model, x_input(), grads=False)
    assert all(vars(cls)["__call__"] is fn for cls, fn in calls_before.items())
    assert flax_model.act is act_before and flax_model.body.layers[2] is relu_before
    assert not torch_model._forward_hooks and not torch_model.body[0]._forward_hooks
    assert not torch_model.body[0]._forward_pre_hooks


def test_layers_can_be_left_out(tmp_path, capsys):
    orig, conv = write_pair(tmp_path)
    assert run_check(f"{orig}:Deep", f"{conv}:Deep", "--input-shape", "4,16", "--layers", "none",
                     "--no-grads") == 0
    out = capsys.readouterr().out
    assert "layers:" not in out and "PASS" in out.splitlines()[-1]


def test_module_without_counterpart_is_listed_not_compared():
    class TNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.skip = torch.nn.Identity()

        def forward(self, x):
            return self.skip(self.fc(x))

    class FNet(nnx.Module):  # the converted model dropped the Identity
        def __init__(self, *, rngs):
            self.fc = nnx.Linear(4, 4, rngs=rngs)

        def __call__(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    report = check_equivalence(TNet(), FNet(rngs=nnx.Rngs(0)), np.ones((2, 4), np.float32), grads=False)
    assert report.passed
    row = report.layers.row("skip")
    assert row.status == "not compared" and "no counterpart" in row.note
    assert report.layers.row("fc").status == "ok"
