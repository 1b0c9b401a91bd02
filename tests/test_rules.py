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


def test_the_torch_functions_written_in_python_are_those_the_installed_torch_has():
    # numpy's keywords (axis=, keepdims=) bind for native torch functions only (porter/convert/apply.py)
    import inspect

    import torch

    from porter.convert.apply import PYTHON_DEFINED

    written_in_python = set()
    for rule in load_rules().rules:
        if not {"dim", "keepdim"} & {p.name for p in rule.signature}:
            continue
        for source in rule.source:
            parts = source.split(".")
            if source.startswith("torch.Tensor.") and len(parts) == 3:
                found = inspect.getattr_static(torch.Tensor, parts[2], None)
            elif len(parts) == 2:
                found = getattr(torch, parts[1], None)
            else:
                continue
            if inspect.isfunction(found):
                written_in_python.add(source)
    assert written_in_python == PYTHON_DEFINED


def test_numpy_keywords_bind_where_torch_takes_them():
    import numpy as np
    import torch

    c = convert_source(textwrap.dedent("""
        import torch

        def f(x):
            return x.sum(dim=1, keepdims=True), torch.amax(x, axis=0, keepdims=True), x.mean(axis=-1)

        def g(x):
            return x.norm(dim=1, keepdims=True)
        """), filename="m.py")
    errors = [(d.line, d.code) for d in c.diagnostics if d.severity.name == "ERROR"]
    assert errors == [(8, "PT004")]  # torch's Tensor.norm is Python: keepdims is a TypeError there too
    namespace = {}
    exec(compile(c.code, "m.py", "exec"), namespace)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    for ours, theirs in zip(namespace["f"](x), (torch.from_numpy(x).sum(dim=1, keepdim=True),
                                                torch.amax(torch.from_numpy(x), dim=0, keepdim=True),
                                                torch.from_numpy(x).mean(dim=-1))):
        np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), rtol=1e-6)
    with pytest.raises(TypeError):
        torch.from_numpy(x).norm(dim=1, keepdims=True)


def test_typed_tensor_classes_convert_in_annotations_only():
    """`input_ids: Optional[torch.LongTensor]` (Hugging Face's signatures) is jax.Array; as a value the name keeps
    torch's meaning, a tensor type of one dtype, and is reported (was: an error at every annotation)."""
    source = textwrap.dedent("""\
        import torch
        from typing import Optional


        def f(x: torch.FloatTensor, ids: Optional[torch.LongTensor] = None) -> tuple[torch.BoolTensor, ...]:
            mask: torch.BoolTensor = x > 0
            return isinstance(ids, torch.LongTensor), mask
        """)
    conversion = convert_source(source)
    assert "def f(x: jax.Array, ids: Optional[jax.Array] = None) -> tuple[jax.Array, ...]:" in conversion.code
    assert "mask: jax.Array = x > 0" in conversion.code
    [error] = [d for d in conversion.diagnostics if d.severity.value == "error"]
    assert (error.line, error.code) == (7, "PT003") and "a tensor type of one dtype" in error.message
