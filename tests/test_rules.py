"""The rule files: they load, validate, and every example in them converts as written."""

import textwrap
from pathlib import Path

import pytest

from porter import convert_source
from porter.convert.transforms import VALUE_TRANSFORMS
from porter.rules.loader import RuleError, load_rules
from porter.weights.layouts import LAYOUTS

RULES = load_rules()
EXAMPLES = [(rule.id, ex.before, ex.after) for rule in RULES.rules for ex in rule.examples]

PRELUDE = textwrap.dedent("""\
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from einops.layers.torch import Rearrange, Reduce


    class M(nn.Module):
        def __init__(self):
            super().__init__()
            result = {before}
    """)


@pytest.mark.parametrize("rule_id,before,after", EXAMPLES, ids=[f"{r}:{b}" for r, b, _ in EXAMPLES])
def test_rule_example_converts_as_documented(rule_id, before, after):
    if "\n" in before:  # statements (x[i] = v): the method body ends with the converted statements
        body = textwrap.indent(before, " " * 8).lstrip()
        conversion = convert_source(PRELUDE.format(before="None\n        " + body))
        lines = [l.strip() for l in conversion.code.splitlines() if l.startswith("        ")]
        assert lines[-len(after.splitlines()):] == [line.strip() for line in after.splitlines()]
    else:
        conversion = convert_source(PRELUDE.format(before=before))
        line = [l for l in conversion.code.splitlines() if l.startswith("        result = ")][-1]
        assert line.strip() == f"result = {after}"
    assert not [d for d in conversion.diagnostics if d.severity.value == "error"]


def test_every_rule_has_an_example():
    assert [r.id for r in RULES.rules if not r.examples and r.kind != "constant"] == []


def test_rule_references_resolve():
    for rule in RULES.rules:
        for arg in rule.args.values():
            assert arg.transform in (None, "pack") or arg.transform in VALUE_TRANSFORMS, (rule.id, arg)
        for weight in rule.layout.values():
            assert weight.layout in LAYOUTS, (rule.id, weight)


def test_targets_exist_in_jax_and_flax():
    import jax  # noqa: F401
    import jax.numpy as jnp
    from flax import nnx

    from porter import emitted

    roots = {"jax": jax, "jnp": jnp, "nnx": nnx, "emitted": emitted}
    for rule in RULES.rules:
        root, _, rest = rule.target.partition(".")
        if root not in roots:
            continue
        obj = roots[root]
        for part in rest.split("."):
            obj = getattr(obj, part, None)
            assert obj is not None, f"{rule.id}: target {rule.target} does not exist"


def test_layers_sharing_a_target_share_a_layout():
    by_target = {}
    for rule in RULES.rules:
        if rule.layout:
            assert by_target.setdefault(rule.target, rule.layout) == rule.layout, rule.id


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "bad.toml").write_text(textwrap.dedent(text))
    return tmp_path


@pytest.mark.parametrize("text,message", [
    ('[[rule]]\nid = "X1"\nkind = "layer"\nsource = ["torch.nn.A"]\n', "missing field 'target'"),
    ('[[rule]]\nid = "X1"\nkind = "thing"\nsource = ["a"]\ntarget = "jnp.a"\n', "kind must be one of"),
    ('[[rule]]\nid = "X1"\nkind = "function"\nsource = ["a"]\ntarget = "np.a"\n', "must start with one of"),
    ('[[rule]]\nid = "X1"\nkind = "function"\nsource = ["a"]\ntarget = "jnp.a"\nargs = { dim = "axis" }\n',
     "not in the signature"),
    ('[[rule]]\nid = "X1"\nkind = "function"\nsource = ["a"]\ntarget = "jnp.a"\nspeling = 1\n', "unknown field"),
    ('[[rule]]\nid = "X1"\nkind = "function"\nsource = ["a"]\ntarget = "jnp.a"\n'
     '[[rule]]\nid = "X1"\nkind = "function"\nsource = ["b"]\ntarget = "jnp.b"\n', "also used"),
    ('[[rule]]\nid = "X1"\nkind = "function"\nsource = ["a"]\ntarget = "jnp.a"\n'
     '[[rule]]\nid = "X2"\nkind = "function"\nsource = ["a"]\ntarget = "jnp.b"\n', "already converted"),
    ("[[rule]\n", "not valid TOML"),
])
def test_malformed_rules_are_rejected_naming_file_and_rule(tmp_path, text, message):
    with pytest.raises(RuleError, match=message) as info:
        load_rules.__wrapped__(_write(tmp_path, text))
    assert "bad.toml" in str(info.value)
