"""In-place tensor updates, x[i] = v, (values, indices) pairs, and the receivers that are not tensors."""

import textwrap

import pytest

from porter import convert_source


def _convert(body: str, params: str = "x, y"):
    source = "import numpy as np\nimport torch\nimport torch.nn as nn\n\n\ndef f(" + params + "):\n" + textwrap.indent(body, "    ") + "\n"
    conversion = convert_source(source)
    lines = [line.strip() for line in conversion.code.splitlines()[conversion.code.splitlines().index(
        next(l for l in conversion.code.splitlines() if l.startswith("def f("))) + 1:] if line.strip()]
    return lines, conversion.diagnostics


def _codes(diagnostics):
    return [d.code for d in diagnostics]


def test_inplace_on_a_fresh_local_tensor_rebinds_it_quietly():
    lines, diagnostics = _convert("z = torch.zeros(3)\nz.add_(y)\nz.clamp_(0, 1)\nz.masked_fill_(z > 0.5, 0.0)\nreturn z")
    assert lines == ["z = jnp.zeros(3)", "z = z + y", "z = jnp.clip(z, min=0, max=1)", "z = jnp.where(z > 0.5, 0.0, z)",
                     "return z"]
    assert diagnostics == []


def test_inplace_on_an_argument_or_a_view_is_converted_and_reported():
    lines, diagnostics = _convert("x.mul_(2)\nv = y.view(-1)\nv.add_(1)\nreturn x, v")
    assert lines[:1] == ["x = jnp.multiply(x, 2)"] and "v = v + 1" in lines
    assert _codes(diagnostics) == ["PT005", "PT005"]
    assert "shar" in diagnostics[0].message


def test_inplace_whose_result_is_used_or_on_an_attribute_is_reported_and_left():
    lines, diagnostics = _convert("a = x.add_(1)\nself.w.mul_(2)\nreturn a", params="self, x")
    assert lines[:2] == ["a = x.add_(1)", "self.w.mul_(2)"]
    assert _codes(diagnostics) == ["PT004", "PT004"]


def test_inplace_on_a_fresh_temporary_is_its_value():
    lines, diagnostics = _convert("return torch.zeros(3).fill_(2.0) + (x * 2).clamp_(min=0)")
    assert lines == ["return jnp.full_like(jnp.zeros(3), 2.0) + jnp.clip((x * 2), min=0)"]
    assert diagnostics == []


def test_item_assignment_on_tensors_only():
    body = "z = torch.ones(2, 3)\nz[0] = 5.0\nz[:, 1] += y\nz[1, 2] *= 2\nd = {}\nd['k'] = 1\nl = [0]\nl[0] = 2\nreturn z"
    lines, diagnostics = _convert(body)
    assert lines[:4] == ["z = jnp.ones((2, 3))", "z = z.at[0].set(5.0)", "z = z.at[:, 1].add(y)",
                         "z = z.at[1, 2].multiply(2)"]
    assert "d['k'] = 1" in lines and "l[0] = 2" in lines
    assert diagnostics == []


def test_item_assignment_on_an_annotated_argument_is_reported():
    lines, diagnostics = _convert("x[0] = 1.0\nreturn x", params="x: torch.Tensor")
    assert lines[0] == "x = x.at[0].set(1.0)"
    assert _codes(diagnostics) == ["PT005"]


@pytest.mark.parametrize("expression,converted", [
    ("x.max(1)[0]", "jnp.max(x, axis=1)"),
    ("x.max(dim=1)[1]", "jnp.argmax(x, axis=1)"),
    ("x.min(-1).values", "jnp.min(x, axis=-1)"),
    ("torch.sort(x, 1).indices", "jnp.argsort(x, axis=1)"),
    ("x.median(0)[0]", "jnp.quantile(x, 0.5, axis=0, method='lower')"),
    ("x.max(1)", "(jnp.max(x, axis=1), jnp.argmax(x, axis=1))"),
])
def test_values_indices_pairs_keep_the_part_asked_for(expression, converted):
    lines, diagnostics = _convert(f"return {expression}")
    assert lines == [f"return {converted}"]


@pytest.mark.parametrize("statement", [
    "names.sort()", "seen.add(x)", "self.norm(x)", "self.flatten(x)", "text.split(',')", "np.split(x, 2)",
    "pattern.sub('-', x)",
])
def test_receivers_that_are_not_tensors_are_left_alone(statement):
    lines, diagnostics = _convert(f"{statement}\nreturn x", params="self, x")
    assert lines[0] == statement and diagnostics == []


def test_a_dim_in_a_variable_is_not_guessed():
    lines, diagnostics = _convert("return torch.max(x, dim), torch.max(x, y)", params="x, y, dim")
    assert _codes(diagnostics) == ["PT004"]
    assert "jnp.maximum(x, y)" in lines[0]
