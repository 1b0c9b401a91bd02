"""The output gate (porter/convert/output_gate.py): every file porter writes compiles; a statement whose
rewrite does not compile is put back as it was, with PT041. And the rewrite keeps the parentheses of a
method chain spread over lines (it used to drop them when one call converted and the next did not)."""

import textwrap
from unittest import mock

import libcst as cst
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from porter import convert_source
from porter.convert import output_gate
from porter.convert.apply import Application
from porter.convert.passes import calls, modules, scope
from porter.convert.pipeline import _convert


def convert(source: str, **kwargs):
    return convert_source(textwrap.dedent(source), filename="m.py", **kwargs)


def codes(conversion) -> list[str]:
    return [d.code for d in conversion.diagnostics]


def compiles(code: str) -> bool:
    return output_gate.compile_error(code, "out.py") is None


# --- parenthesised chains (the rewrite keeps the parentheses) ---------------------------------------

CHAINS = [
    # the reported one: unsqueeze converts, expand (of a call) does not, reshape converts
    "(m.unsqueeze(-1)\n         .expand(-1, n)\n         .reshape(b, -1))",
    "(m.view(b, -1)\n         .permute(1, 0)\n         .contiguous())",
    "(m.masked_fill(m > 0, 0.0)\n         .float()\n         .to(x.dtype))",
    "(m.type_as(x)\n         .frobnicate()\n         .sum(-1))",
    "(torch.cat([m, m], dim=0)\n         .foo()\n         .sum(-1))",
    "(m.foo()\n         .view(-1)\n         .bar())",
    "(torch.relu(m.view(b, -1)\n                    .foo())\n         .float())",
    "(m\n         .float())",
    "(m.shape\n         [0])",
]


@pytest.mark.parametrize("chain", CHAINS)
def test_parenthesised_chain_compiles_without_the_gate(chain):
    source = f"import torch\n\ndef f(m, n, b, x):\n    y = {chain}\n    return y\n"
    c = convert_source(source, filename="m.py")
    assert compiles(c.code), c.code
    assert "PT041" not in codes(c)  # the rewrite itself keeps the parentheses
    assert "    y = (" in c.code


def test_reported_chain_keeps_its_parentheses_and_line_breaks():
    c = convert("""\
        import torch

        def f(m, n, b):
            y = (m.unsqueeze(-1)
                 .expand(-1, n)
                 .reshape(b, -1))
            return y
        """)
    assert c.code.endswith(textwrap.dedent("""\
        def f(m, n, b):
            y = (jnp.expand_dims(m, -1)
                 .expand(-1, n)
                 .reshape(b, -1))
            return y
        """))
    assert codes(c) == ["PT004"]  # expand of a call is reported, as before


def test_builder_code_from_a_receiver_spread_over_lines():
    """Builders that write code from a receiver's text (new_zeros: `{receiver}.dtype`) got a line break
    outside parentheses and crashed in libcst's parser."""
    c = convert("""\
        import torch

        def f(m):
            y = (m
                 .T
                 .new_zeros(3))
            return y
        """)
    assert compiles(c.code) and not c.has_errors
    assert "jnp.zeros((3,), dtype=(m\n" in c.code


def test_converted_chain_over_lines_matches_torch():
    source = textwrap.dedent("""\
        import torch

        def f(m, x):
            y = (m.view(2, -1)
                 .permute(1, 0)
                 .contiguous()
                 .masked_fill(m.view(2, -1).permute(1, 0) > 0.5, 0.0)
                 .float()
                 .to(x.dtype))
            return (y.unsqueeze(-1)
                    .sum(-1))
        """)
    c = convert_source(source, filename="m.py")
    assert not c.has_errors, [d.format() for d in c.diagnostics]
    m, x = torch.rand(2, 3, 4), torch.rand(3)
    expected = _run(source, "f", m, x).numpy()
    got = np.asarray(_run(c.code, "f", m.numpy(), x.numpy()))
    np.testing.assert_allclose(got, expected, rtol=1e-6)


OPERANDS = ["-torch.add(a, b)", "torch.add(a, b).sum(0)", "2 * torch.sub(a, b)", "torch.sub(a, b)[0]",
            "a.sub(b) * 2", "torch.zeros(2, 3).add_(b).sum(0)", "a.div(2).floor()", "torch.mul(a, b) ** 2",
            "torch.div(a, b).exp()", "(a.sub(b)\n         .abs())",
            # torchvision's swin_transformer, timm's swin v2, edgenext and xcit: converted silently wrong before
            "a @ torch.nn.functional.normalize(b, dim=-1).transpose(-2, -1)",
            "2 * torch.div(a * 10, 2, rounding_mode='floor')"]


@pytest.mark.parametrize("expression", OPERANDS)
def test_built_operands_get_the_parentheses_their_place_needs(expression):
    """`torch.add(a, b)` becomes `a + b`: under an operator or before a dot it needs parentheses, or it
    means something else (`-a + b`, `a + b.sum(0)`) and still compiles."""
    source = f"import torch\n\ndef f(a, b):\n    y = {expression}\n    return y\n"
    c = convert_source(source, filename="m.py")
    assert not c.has_errors, [d.format() for d in c.diagnostics]
    a, b = torch.rand(2, 3) + 0.5, torch.rand(2, 3) + 0.5
    expected = _run(source, "f", a, b).numpy()
    np.testing.assert_allclose(np.asarray(_run(c.code, "f", a.numpy(), b.numpy())), expected, rtol=1e-6)


def test_receiver_in_an_argument_gets_no_extra_parentheses():
    c = convert_source("import torch\n\ndef f(a):\n    return a.div(2).floor()\n", filename="m.py")
    assert "return jnp.floor(a / 2)\n" in c.code


def _run(code: str, name: str, *args):
    namespace: dict = {}
    exec(compile(code, "m.py", "exec"), namespace)
    return namespace[name](*args)


# --- the gate itself ---------------------------------------------------------------------------------

MODEL = """\
import torch
import torch.nn as nn


class M(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, m, n, b):
        h = torch.relu(self.fc(m))
        y = (m.unsqueeze(-1)
             .expand(-1, n)
             .reshape(b, -1))
        return torch.sigmoid(y) + h.sum(dim=-1)
"""


@pytest.mark.parametrize("fast", [True, False])
def test_gate_puts_back_the_statement_whose_rewrite_lost_its_parentheses(fast):
    """The old bug, brought back: the statement is written as it was, with PT041; the rest converts."""
    with mock.patch.object(scope, "keep_parentheses", lambda replaced, new: new):
        c = _convert(MODEL, "m.py", fast=fast)
    assert compiles(c.code)
    assert "        y = (m.unsqueeze(-1)\n             .expand(-1, n)\n             .reshape(b, -1))\n" in c.code
    assert "h = jax.nn.relu(self.fc(m))" in c.code and "class M(nnx.Module):" in c.code
    assert "jax.nn.sigmoid(y) + h.sum(axis=-1)" in c.code
    gate = [d for d in c.diagnostics if d.code == "PT041"]
    assert [(d.line, d.col) for d in gate] == [(12, 9)] and "unexpected indent" in gate[0].message
    assert not [d for d in c.diagnostics if 12 <= d.line <= 14 and d.code != "PT041"]  # the PT004 of expand went
    assert not [ch for ch in c.changes if 12 <= ch.line <= 14]


def test_gate_puts_back_a_statement_libcst_prints_but_python_rejects():
    """A keyword as a name: libcst's printer takes it, compile() does not."""
    real = calls.apply_rule

    def broken(rule, site):
        application = real(rule, site)
        if rule.source[0] == "torch.sigmoid":
            application.node = cst.Call(cst.Name("lambda"), application.node.args)
        return application

    with mock.patch.object(calls, "apply_rule", broken):
        c = convert_source(MODEL, filename="m.py")
    assert compiles(c.code)
    assert "        return torch.sigmoid(y) + h.sum(dim=-1)\n" in c.code  # the whole statement as it was
    assert "h = jax.nn.relu(self.fc(m))" in c.code
    assert [(d.code, d.line) for d in c.diagnostics if d.line == 15] == [("PT041", 15)]
    assert "import torch\n" in c.code  # the statement put back still needs it


def test_gate_puts_back_a_statement_the_rewrite_turned_into_several():
    """`with torch.no_grad():` in a plain function becomes its body's statements: one broken, the block
    comes back once, its other statements gone."""
    source = textwrap.dedent("""\
        import torch

        def f(x):
            with torch.no_grad():
                y = torch.relu(x)
                z = torch.sigmoid(y)
            return z + torch.tanh(x)
        """)
    real = calls.apply_rule

    def broken(rule, site):
        application = real(rule, site)
        if rule.source[0] == "torch.sigmoid":
            application.node = cst.Call(cst.Name("lambda"), application.node.args)
        return application

    with mock.patch.object(calls, "apply_rule", broken):
        c = convert_source(source, filename="m.py")
    assert c.code.endswith("    with torch.no_grad():\n        y = torch.relu(x)\n        z = torch.sigmoid(y)\n"
                           "    return z + jnp.tanh(x)\n")
    assert [(d.code, d.line, d.col) for d in c.diagnostics] == [("PT041", 4, 5)]


def test_gate_puts_back_only_the_header_when_the_header_broke():
    """A constructor signature with rngs twice ('duplicate argument'): the original `def` line comes back,
    its converted body stays."""
    def twice(function):
        return function.params.with_changes(star_arg=cst.ParamStar(),
                                            kwonly_params=[modules.RNGS_PARAM, modules.RNGS_PARAM])

    with mock.patch.object(modules, "_with_rngs", twice):
        c = convert_source(MODEL, filename="m.py")
    assert compiles(c.code)
    assert "    def __init__(self, d):\n        self.fc = nnx.Linear(d, d, rngs=rngs)\n" in c.code
    gate = [d for d in c.diagnostics if d.code == "PT041"]
    assert [(d.line, d.col) for d in gate] == [(6, 5)] and "header of this def" in gate[0].message
    assert "h = jax.nn.relu(self.fc(m))" in c.code


def test_gate_keeps_the_whole_file_when_nothing_else_compiles():
    """A break the gate cannot pin on a replaced statement: the file as it was, one PT041."""
    with mock.patch.object(output_gate, "_culprit", lambda *args: None), \
            mock.patch.object(scope, "keep_parentheses", lambda replaced, new: new):
        c = convert_source(MODEL, filename="m.py")
    assert c.code == MODEL
    assert codes(c) == ["PT041"] and "whole file" in c.diagnostics[0].message
    assert c.changes == []


def test_gate_leaves_alone_a_file_python_itself_rejects():
    """libcst parses `return` outside a function; Python does not compile it: nothing to hold porter to."""
    source = "import torch\nreturn torch.relu(x)\n"
    c = convert_source(source, filename="m.py")
    assert "PT041" not in codes(c) and "jax.nn.relu(x)" in c.code


def test_gate_covers_notebooks():
    import json
    from porter.convert.notebook import convert_notebook

    cells = [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": source}
             for source in ["import torch\n", "m = torch.ones(2, 3)\n",
                            "y = (m.unsqueeze(-1)\n     .expand(-1, 3)\n     .reshape(2, -1))\n"]]
    notebook = json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    with mock.patch.object(scope, "keep_parentheses", lambda replaced, new: new):
        c = convert_notebook(notebook, filename="nb.ipynb")
    out = [("".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"])
           for cell in json.loads(c.code)["cells"]]
    assert out[1] == "m = jnp.ones((2, 3))\n"
    assert out[2] == cells[2]["source"]
    assert [(d.code, d.path, d.line) for d in c.diagnostics if d.code == "PT041"] == [("PT041", "nb.ipynb#cell3", 1)]


def test_gate_covers_trees(tmp_path):
    from porter.convert import tree

    (tmp_path / "model.py").write_text(MODEL)
    tasks = tree.plan(tmp_path).tasks
    with mock.patch.object(scope, "keep_parentheses", lambda replaced, new: new):
        [result] = tree.convert_tree(tasks, root_name=tmp_path.name, jobs=1)
    written = result.code.decode()
    assert compiles(written) and "(m.unsqueeze(-1)\n" in written and "class M(nnx.Module):" in written
    assert [d.line for d in result.diagnostics if d.code == "PT041"] == [12]


# --- property: generated chains of converted and unconverted calls ------------------------------------

BASES = ["x", "m", "self.fc(x)", "torch.zeros(2, 3)", "F.relu(x)", "x[0]", "self.w"]
STEPS = [  # (text, needs a receiver): methods with rules, methods porter does not know, reads, subscripts
    ".view(b, -1)", ".view(-1)", ".permute(1, 0)", ".reshape(b, -1)", ".unsqueeze(-1)", ".expand(-1, n)",
    ".masked_fill(mask, 0.0)", ".contiguous()", ".float()", ".to(x.dtype)", ".type_as(x)", ".sum(-1)",
    ".mean(dim=1)", ".transpose(0, 1)", ".flatten(1)", ".squeeze(0)", ".softmax(-1)", ".clamp(min=0)",
    ".detach()", ".add_(1)", ".foo()", ".bar(1, k=2)", ".shape", ".T", ".real", "[0]", "[:, None]",
    "[..., :2]", ".size(0)", ".new_zeros(3)", ".max(dim=-1)", ".max(dim=-1)[0]", ".values",
]
WRAPPERS = ["torch.relu({})", "torch.sigmoid({})", "F.softmax({}, dim=-1)", "torch.cat([{}, x], dim=0)",
            "torch.exp({})", "helper({})", "torch.where(mask, {}, x)", "torch.nonexistent_fn({})",
            "(-{})", "(2 * {})", "({} ** 2)", "-{}", "torch.add({}, x)", "torch.sub(x, {})", "({}).sub(x)", "({}).add_(1)"]
STATEMENTS = ["y = {}", "return {}", "{}", "y = g({}, 1)", "a, c = {}, x", "y += {}", "if {}:\n{i}    pass",
              "for t in {}:\n{i}    pass"]


@st.composite
def chains(draw) -> str:
    text = draw(st.sampled_from(BASES))
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 5)) == 0:
            text = draw(st.sampled_from(WRAPPERS)).format(text)
            continue
        step = draw(st.sampled_from(STEPS))
        inside = text.count("(") > text.count(")")  # an open parenthesis: a line break is allowed here
        if inside and step[0] == "." and draw(st.booleans()):
            step = "\n" + " " * draw(st.integers(0, 12)) + step
        text += step
    if draw(st.booleans()):  # parenthesised, with line breaks before some of the dots
        text = "(" + text + ")"
        parts = text.split(".")
        text = parts[0] + "".join(("\n" + " " * draw(st.integers(0, 12)) if draw(st.integers(0, 2)) == 0
                                   and parts[i - 1][-1:] not in ("", " ", "\n") and not parts[i - 1][-1:].isdigit()
                                   else "") + "." + part for i, part in enumerate(parts[1:], start=1))
    return text


@st.composite
def programs(draw) -> str:
    chain = draw(chains())
    in_module = draw(st.booleans())
    indent = "        " if in_module else "    "
    statement = draw(st.sampled_from(STATEMENTS)).replace("{i}", indent).replace("{}", chain, 1)
    body = textwrap.indent(statement, indent).lstrip()
    if in_module:
        return (f"import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
                f"class M(nn.Module):\n    def __init__(self, d):\n        super().__init__()\n"
                f"        self.fc = nn.Linear(d, d)\n        self.w = nn.Parameter(torch.zeros(d))\n\n"
                f"    def forward(self, x, mask, n, b):\n        y = x\n        {body}\n        return y\n")
    return (f"import torch\nimport torch.nn.functional as F\n\n\n"
            f"def f(x, m, mask, n, b, self=None):\n    y = x\n    {body}\n    return y\n")


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_every_output_compiles(source):
    assert compile(source, "in.py", "exec")  # the generator writes valid Python
    acted = []
    real = output_gate._put_back_statements

    def spy(*args, **kwargs):
        acted.append(True)
        return real(*args, **kwargs)

    with mock.patch.object(output_gate, "_put_back_statements", spy):
        c = convert_source(source, filename="m.py")
    assert compiles(c.code), c.code
    if acted:
        assert "PT041" in codes(c)
