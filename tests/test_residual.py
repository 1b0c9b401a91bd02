"""The residual check (porter/convert/passes/residual.py): what the rewrite leaves that still means torch is a
PT040 error at the original line; converted code that works on jax arrays and nnx modules gets none."""

from pathlib import Path
from textwrap import dedent

import pytest

from porter import convert_source
from porter.convert.pipeline import _convert
from porter.convert.passes.modules import ModuleStructure
from porter.rules.loader import load_residual, load_rules
from porter.rules.residual_tables import changes

ROOT = Path(__file__).resolve().parent.parent
HEADER = "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"


def pt040(source: str) -> dict[int, list[str]]:
    """Line -> the PT040 messages there, for `source` (HEADER prepended: line numbers count from it)."""
    found: dict[int, list[str]] = {}
    for d in convert_source(HEADER + dedent(source)).diagnostics:
        if d.code == "PT040":
            found.setdefault(d.line, []).append(d.message)
    return found


def line_of(source: str, text: str) -> int:
    """The line of the first occurrence of `text` in HEADER + source."""
    lines = (HEADER + dedent(source)).splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


MODULE = """
class Net(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.latents = nn.Parameter(torch.randn(4, d))
        self.register_buffer("initted", torch.tensor(False))
{init}
    def forward(self, x, y):
{forward}
        return self.fc(x)
"""


def in_module(forward: str = "        pass", init: str = "") -> str:
    return MODULE.format(init=init, forward=forward)


# constructs left in place, each reported at its line -------------------------------------------
TENSOR_CASES = [
    ("        z = x.share_memory_()", "share_memory_", "placement"),
    ("        z = x.new_tensor([1.0])", "new_tensor", "new tensors"),
    ("        x.resize_(3)", "resize_", "in-place"),
    ("        w = x.data", "x.data", "for x.data"),
    ("        x.requires_grad_()", "requires_grad_", "nnx.grad"),
    ("        x.copy_(y)", "copy_", "immutable"),
    ("        s = x.stride(0)", "stride", "strides"),
    ("        g = x.grad_fn", "grad_fn", "gradients"),
]


@pytest.mark.parametrize("statement,needle,hint", TENSOR_CASES, ids=[c[1] for c in TENSOR_CASES])
def test_tensor_attributes_a_jax_array_lacks_are_errors(statement, needle, hint):
    source = in_module(statement)
    found = pt040(source)
    line = line_of(source, statement.strip())
    assert line in found, found
    assert any(needle.strip(".") in m and hint in m for m in found[line]), found[line]


def test_the_column_is_the_attribute_s_own_in_a_rebuilt_expression():
    source = in_module("        z = x.detach().share_memory_()")
    [d] = [d for d in convert_source(HEADER + dedent(source)).diagnostics if d.code == "PT040"]
    text = (HEADER + dedent(source)).splitlines()[d.line - 1]
    assert text[d.col - 1:].startswith("share_memory_")  # detach() became jax.lax.stop_gradient(x): the call was rebuilt


MODULE_METHOD_CASES = [
    ("        self.ps = list(self.parameters())", "init", "parameters"),
    ("        self.ms = list(self.modules())", "init", "modules"),
    ("        self.kids = list(self.children())", "init", "children"),
    ("        for name, p in self.named_parameters():\n            pass", "forward", "named_parameters"),
    ("        sd = self.state_dict()", "forward", "state_dict"),
    ("        self.fc.to('cpu')", "forward", "to"),
    ("        self.zero_grad()", "forward", "zero_grad"),
    ("        h = self.fc.forward(x)", "forward", "forward"),
]


@pytest.mark.parametrize("statement,where,name", MODULE_METHOD_CASES, ids=[c[2] for c in MODULE_METHOD_CASES])
def test_nn_module_methods_on_converted_modules_are_errors(statement, where, name):
    source = in_module(**{where: statement})
    found = pt040(source)
    line = line_of(source, statement.strip().splitlines()[0])
    assert any(f"nn.Module {name} " in m for m in found.get(line, [])), found


def test_nn_module_methods_on_instances_of_converted_classes_are_errors():
    source = in_module() + dedent("""
        def build():
            model = Net(4)
            model.half()
            return list(model.parameters())
    """)
    found = pt040(source)
    assert any("astype is a jax array's method" in m for m in found[line_of(source, "model.half()")])  # what a rule made of it
    assert any("nn.Module parameters" in m for m in found[line_of(source, "model.parameters()")])


def test_a_method_the_class_defines_itself_is_not_reported():
    source = in_module("        h = self.parameters()") + "    def parameters(self):\n        return []\n"
    assert pt040(source) == {}


def test_torch_package_classes_built_inside_an_nnx_module_are_errors():
    source = "from torchvision.ops import StochasticDepth\n" + in_module(
        init="        self.drop = StochasticDepth(0.1, 'row')\n")
    found = pt040(source)
    assert any("torch package" in m for m in found[line_of(source, "StochasticDepth(0.1")])


def test_item_assignment_to_arrays_is_an_error():
    source = in_module("        h = self.fc(x)\n        h[:, 0] += 1")
    found = pt040(source)
    for statement in ("h[:, 0] += 1",):
        assert any("immutable" in m for m in found.get(line_of(source, statement), [])), (statement, found)


def test_item_assignment_to_lists_dicts_and_variables_is_not_reported():
    source = in_module("        outs = [None] * 3\n        outs[0] = x\n        cache = {}\n        cache[1, 2] = x\n"
                       "        y[0] = x\n        self.initted[...] = True")
    assert pt040(source) == {}


@pytest.mark.parametrize("test", ["if self.initted:\n            pass", "while not self.initted:\n            break",
                                  "ok = self.initted and x is not None"])
def test_truth_value_of_a_variable_is_an_error(test, monkeypatch):
    # the rewrite reads the Variable's array now (CONVERTED_CASES below); the residual check is the backstop
    monkeypatch.setattr(ModuleStructure, "_note_buffer_tests", lambda self, node: None)
    source = in_module(f"        {test}")
    found = pt040(source)
    assert any("truth value of `self.initted`" in m for m in found[line_of(source, test.splitlines()[0])]), found


# constructs the rewrite converts now (issue 12): whatever the residual would have said of them is gone
CONVERTED_CASES = [
    ("forward", "        x = x.type(y.dtype)", "x = x.astype(y.dtype)"),
    ("forward", "        z = x.detach().cpu().numpy()", "np.array("),
    ("forward", "        n, device = x.shape[1], x.device", "n = x.shape[1]"),
    ("init", "        self.n = sum(p.numel() for p in self.parameters())\n", "parameters_of(self)"),
    ("init", "        self.k = sum(1 for m in self.modules() if m is not None)\n", "nnx.iter_modules(self)"),
    ("forward", "        y[y < 0] = 0.5", "jnp.where(y < 0"),
    ("forward", "        if self.initted:\n            pass", "if self.initted[...]:"),
    ("forward", "        lat = repeat(self.latents, 'n d -> b n d', b=2)", "repeat(self.latents[...],"),
]


@pytest.mark.parametrize("where,statement,converted", CONVERTED_CASES, ids=[c[2] for c in CONVERTED_CASES])
def test_constructs_the_rewrite_converts_leave_no_residual(where, statement, converted):
    conversion = convert_source("from einops import repeat\n" + HEADER + dedent(in_module(**{where: statement})))
    assert converted in conversion.code
    assert not [d for d in conversion.diagnostics if d.code == "PT040"]


def test_einops_on_a_variable_is_an_error(monkeypatch):
    # the rewrite passes the Variable's array now (CONVERTED_CASES below); the residual check is the backstop
    monkeypatch.setattr(ModuleStructure, "_note_einops_arguments", lambda self, call: None)
    source = "from einops import repeat\n" + in_module("        lat = repeat(self.latents, 'n d -> b n d', b=2)")
    found = pt040(source)
    assert any("self.latents[...]" in m for m in found[line_of(source, "repeat(self.latents")])
    clean = "from einops import repeat\n" + in_module("        lat = repeat(self.latents[...], 'n d -> b n d', b=2)")
    assert pt040(clean) == {}


def test_torch_left_without_an_error_on_its_line_is_reported(monkeypatch):
    # rms_norm converts now; a rewrite that leaves a torch call without a word is what the backstop is for
    from porter.convert.passes.calls import Calls
    monkeypatch.setattr(Calls, "_convert_torch_call", lambda self, qualified, original, updated: updated)
    source = "from torch.nn.functional import rms_norm\n" + in_module("        x = rms_norm(x, (4,))")
    conversion = convert_source(HEADER + dedent(source))
    line = line_of(source, "rms_norm(x")
    assert any(d.code == "PT040" and d.line == line and "still refers to torch" in d.message
               for d in conversion.diagnostics), conversion.diagnostics


def test_an_error_the_rewrite_reported_is_not_repeated():
    source = in_module("        x = torch.special.erfcx(x)", init="        self.c = nn.Conv2d(3, 8, 3, padding_mode='reflect')\n")
    conversion = convert_source(HEADER + dedent(source))
    lines = [line_of(source, "erfcx"), line_of(source, "padding_mode")]
    assert {d.code for d in conversion.diagnostics if d.line in lines} == {"PT003", "PT004"}


def test_ordinary_python_is_not_reported():
    source = dedent("""
        import os
        import typing
        from typing import TypeVar
        import numpy as np
        import torch


        class Config:
            def __init__(self, data):
                self.data = data
                self.device = "cpu"

            def to(self, device):
                return self.data.to(device)


        def main(args, items):
            path = os.path.split(args.path)
            parts = "a,b".split(",")
            table = np.zeros(3).data
            device = args.device
            counts = {}
            counts[path] = 1
            items[0] = parts
            return torch.manual_seed(0), table, device


        M = typing.TypeVar("M")
        N = TypeVar("N", bound=torch.nn.Module)
    """)
    assert pt040(source) == {}


def test_device_is_an_error_only_where_jit_traces():
    source = in_module(init="        self.where = self.latents.device\n", forward="        print(x.device)")
    errors = {d.line for d in convert_source(HEADER + dedent(source)).diagnostics if d.severity.value == "error"}
    assert line_of(source, "self.latents.device") not in errors
    assert line_of(source, "print(x.device)") in errors  # the rewrite's PT004 (porter/convert/devices.py)


def test_reading_values_into_python_is_an_error_where_jit_traces_helpers_of_forward_included():
    # issue 12: token-shift-gpt's `amts = (2 ** torch.arange(n)).tolist()` in a helper of forward failed
    # under jit only, with no diagnostic
    source = """
    def powers(x, n):
        amts = (2 ** torch.arange(n)).tolist()
        return [x * a for a in amts]

    def unused(x):
        return x.tolist()

    class Net(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc = nn.Linear(d, d)
            self.scale = torch.ones(1).item()

        def forward(self, x):
            return sum(powers(self.fc(x), 3)) * x.max().item()
    """
    found = pt040(source)
    assert set(found) == {line_of(source, "amts = "), line_of(source, "x.max().item()")}, found
    assert "powers, called from a module's forward," in found[line_of(source, "amts = ")][0]


# clean code, both modes --------------------------------------------------------------------------
FIXTURES = sorted([*(ROOT / "fixtures" / "models").glob("*.py"), *(ROOT / "fixtures" / "training").glob("*.py"),
                   *(ROOT / "fixtures" / "distributed").glob("*.py")])


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_the_fixtures_convert_with_no_residual(path):
    conversion = convert_source(path.read_text(), filename=path.name)
    assert [d.format() for d in conversion.diagnostics if d.code == "PT040"] == []


ALL_CASES = [in_module(s) for s, _, _ in TENSOR_CASES] + [in_module(**{w: s}) for s, w, _ in MODULE_METHOD_CASES]


@pytest.mark.parametrize("source", ALL_CASES)
def test_the_prefilter_changes_no_finding(source):
    fast = _convert(HEADER + dedent(source), None, fast=True)
    full = _convert(HEADER + dedent(source), None, fast=False)
    assert fast.diagnostics == full.diagnostics



# the flagged names trigger the prefilter as attribute names only (`.name`), spelled across spaces, comments and
# line continuations; the same words as plain names trigger nothing
ATTRIBUTE_SPELLINGS = [
    "        z = (x .\n             share_memory_())",
    "        z = (x.  # why\n             share_memory_())",
    "        z = x.\\\n            share_memory_()",
    "        name, index, t = 1, 2, 3\n        z = x.share_memory_()",
    "        data = [name for name in ('a', 'b')]\n        w = x\\\n            .data",
]


@pytest.mark.parametrize("source", [in_module(s) for s in ATTRIBUTE_SPELLINGS])
def test_attributes_spelled_across_lines_are_found_by_the_prefiltered_check(source):
    fast = _convert(HEADER + dedent(source), None, fast=True)
    full = _convert(HEADER + dedent(source), None, fast=False)
    assert [d for d in fast.diagnostics if d.code == "PT040"], fast.diagnostics
    assert fast.diagnostics == full.diagnostics

# the tables ----------------------------------------------------------------------------------------------
def test_the_tables_cover_exactly_the_installed_libraries_differences():
    found = changes()
    assert not found, ("torch, jax or flax changed what their classes have; review these names into "
                       "rules/residual.toml (python -m porter.rules.residual_tables --draft lists them all):\n  "
                       + "\n  ".join(found))


def test_a_method_a_rule_keeps_in_the_output_is_never_flagged():
    tables = load_residual()
    for rule in load_rules().rules:
        if rule.target.startswith("method."):
            kept = rule.target.removeprefix("method.")
            assert tables.lookup("tensor", kept, True) is None, (rule.id, kept)


def test_the_residual_tables_are_not_read_as_rules():
    assert all(rule.file != "residual.toml" for rule in load_rules().rules)
    tables = load_residual()
    assert tables.lookup("tensor", "numpy", True).flag == "value"
    assert tables.lookup("tensor", "numpy", False) is None  # x.numpy (not called) is not flagged
    assert tables.lookup("module", "parameters", True).hint


def test_a_construct_left_unchanged_as_a_whole_is_not_reported_again_inside():
    source = dedent("""
        import torch
        import torch.nn as nn

        model = nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):
            loss = model(torch.randn(4, 3)).sum()
            loss.backward()
            loss.backward()
            opt.step()
        print(list(model.parameters()))
    """)
    diagnostics = convert_source(source).diagnostics
    assert [(d.code, d.line) for d in diagnostics if d.severity.value == "error"] == [("PT010", 7), ("PT040", 12)]


def test_an_upgrade_shows_as_names_that_appeared_or_vanished():
    from dataclasses import replace

    from porter.rules.loader import ResidualTables

    tables = load_residual()
    numpy_group = next(g for g in tables.groups["tensor"] if "numpy" in g.methods)
    doctored = {**tables.groups, "tensor": [replace(g, methods=g.methods - {"numpy"} | {"to_gone"})
                                            if g is numpy_group else g for g in tables.groups["tensor"]]}
    found = changes(ResidualTables(doctored, tables.torch_packages, tables.einops_functions))
    assert found == ["tensor.methods: numpy appeared (review it into a group of rules/residual.toml)",
                     "tensor.methods: to_gone vanished (remove it from rules/residual.toml)"]
