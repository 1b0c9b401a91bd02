"""Each pass on before/after source pairs, including code that must be left alone."""

import textwrap

import pytest
import torch
from flax import nnx

from porter import convert_source


def convert(source: str):
    return convert_source(textwrap.dedent(source), filename="m.py")


def codes(conversion) -> list[str]:
    return [d.code for d in conversion.diagnostics]


def body(conversion) -> str:
    """The converted code from the first class on (imports and helpers cut off)."""
    code = conversion.code
    return code[code.index("class ") if "class M" not in code else code.index("class M"):]


# --- module classes --------------------------------------------------------

def test_module_class_signature_super_and_forward():
    c = convert("""
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self, d, hidden=8):
                super(M, self).__init__()
                self.fc = nn.Linear(d, hidden)

            def forward(self, x):
                return self.fc(x)
        """)
    assert body(c) == textwrap.dedent("""\
        class M(nnx.Module):
            def __init__(self, d, hidden=8, *, rngs: nnx.Rngs):
                self.fc = nnx.Linear(d, hidden, rngs=rngs)

            def __call__(self, x):
                return self.fc(x)
        """)
    assert codes(c) == []


def test_super_in_python3_spelling_and_existing_keyword_only_params():
    c = convert("""
        from torch import nn

        class M(nn.Module):
            def __init__(self, *, width):
                super().__init__()
                self.fc = nn.Linear(width, width)
        """)
    assert "def __init__(self, *, width, rngs: nnx.Rngs):" in c.code
    assert "super()" not in c.code


def test_init_with_only_super_keeps_a_body():
    c = convert("""
        import torch.nn as nn

        class Empty(nn.Module):
            def __init__(self):
                super().__init__()

            def forward(self, x):
                return x
        """)
    assert "def __init__(self):\n        pass\n" in c.code  # builds nothing random: no rngs
    compile(c.code, "m.py", "exec")


def test_register_buffer_persistent_and_not():
    c = convert("""
        import torch
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.register_buffer("mask", torch.ones(n, n))
                self.register_buffer("cache", torch.zeros(n), persistent=False)
        """)
    assert "self.mask = Buffer(jnp.ones((n, n)))" in c.code
    assert "self.cache = Buffer(jnp.zeros(n), persistent=False)" in c.code
    assert "class Buffer(nnx.Variable):" in c.code


def test_buffer_update_outside_init_writes_in_place():
    c = convert("""
        import torch
        import torch.nn as nn

        class Counter(nn.Module):
            def __init__(self):
                super().__init__()
                self.register_buffer("count", torch.zeros(1))

            def forward(self, x):
                self.count = self.count + 1
                return x
        """)
    assert "self.count[...] = self.count + 1" in c.code


def test_parameter():
    c = convert("""
        import torch
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.scale = nn.Parameter(torch.ones(d))
        """)
    assert "self.scale = nnx.Param(jnp.ones(d))" in c.code


def test_nested_modules_and_layer_factories_get_rngs():
    c = convert("""
        import torch.nn as nn

        def make(d):
            return nn.Sequential(nn.Linear(d, d), nn.ReLU())

        class Inner(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.net = make(d)

        class Outer(nn.Module):
            def __init__(self, d, n):
                super().__init__()
                self.blocks = nn.ModuleList([Inner(d) for _ in range(n)])
                self.extra = self._build(d)

            def _build(self, d):
                return nn.Linear(d, 1)
        """)
    assert "def make(d, *, rngs: nnx.Rngs):" in c.code
    assert "nnx.Sequential(nnx.Linear(d, d, rngs=rngs), jax.nn.relu)" in c.code
    assert "self.net = make(d, rngs=rngs)" in c.code
    assert "nnx.List([Inner(d, rngs=rngs) for _ in range(n)])" in c.code
    assert "def _build(self, d, *, rngs: nnx.Rngs):" in c.code
    assert "self.extra = self._build(d, rngs=rngs)" in c.code


def test_module_level_layer_uses_seeded_rngs_and_says_so():
    c = convert("""
        import torch

        model = torch.nn.Linear(1, 1)
        """)
    assert "model = nnx.Linear(1, 1, rngs=nnx.Rngs(0))" in c.code
    assert codes(c) == ["PT007"]


def test_functional_dropout_becomes_a_layer():
    c = convert("""
        import torch.nn as nn
        import torch.nn.functional as F

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)

            def forward(self, x):
                return F.dropout(self.fc(x), p=0.1, training=self.training)
        """)
    assert "self.dropout = nnx.Dropout(0.1, rngs=rngs)" in c.code
    assert "return self.dropout(self.fc(x))" in c.code
    assert codes(c) == []


def test_an_injected_layer_takes_no_name_the_class_uses():
    # nanoGPT keeps its rate in self.dropout: the injected layer was named dropout too and replaced the number
    c = convert("""
        import torch.nn as nn
        import torch.nn.functional as F

        class M(nn.Module):
            def __init__(self, p):
                super().__init__()
                self.fc = nn.Linear(4, 4)
                self.dropout = p

            def dropout1(self):
                return self.dropout

            def forward(self, x):
                return F.dropout(self.fc(x), self.dropout, training=self.training)
        """)
    assert "self.dropout = p\n        self.dropout2 = nnx.Dropout(self.dropout, rngs=rngs)" in c.code
    assert "return self.dropout2(self.fc(x))" in c.code


def test_self_training_becomes_the_deterministic_attribute_that_eval_and_train_set():
    source = """
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self):
                super().__init__()

            def forward(self, x):
                if self.training:
                    return x * 2
                if not self.training:
                    return -x
                return x

        class NoInit(nn.Module):
            def forward(self, x):
                return x * 3 if self.training == True else x

        class Assigns(nn.Module):
            def __init__(self):
                super().__init__()
                self.training = False
        """
    c = convert(source)
    assert "if not self.deterministic:" in c.code and "if self.deterministic:" in c.code
    assert "(not self.deterministic) == True" in c.code  # parenthesised where `not` would bind wider
    assert c.code.count("self.deterministic = False  # torch's self.training") == 1  # M's constructor
    assert "    deterministic = False  # torch's self.training" in c.code  # NoInit: a class attribute
    assert [(d.code, d.line) for d in c.diagnostics] == [("PT006", 22)]  # assigning self.training
    namespace: dict = {}
    exec(c.code.replace("self.training = False", "pass"), namespace)
    from flax import nnx

    for cls, train, evaluate in ((namespace["M"], 4.0, -2.0), (namespace["NoInit"], 6.0, 2.0)):
        model = cls()  # builds nothing random: takes no rngs
        assert float(model(2.0)) == train  # torch modules start in training mode
        model.eval()
        assert float(model(2.0)) == evaluate
        model.train()
        assert float(model(2.0)) == train


# --- calls and methods ------------------------------------------------------

@pytest.mark.parametrize("before,after", [
    ("x.view(B, T, C)", "x.reshape(B, T, C)"),
    ("x.size()", "x.shape"),
    ("x.size(-1)", "x.shape[-1]"),
    ("x.transpose(1, 2).contiguous()", "x.swapaxes(1, 2)"),
    ("x.permute(0, 2, 1)", "x.transpose(0, 2, 1)"),
    ("x.mean(dim=[1, 2], keepdim=True)", "x.mean(axis=(1, 2), keepdims=True)"),
    ("x.sum()", "x.sum()"),
    ("torch.cat((a, b), 1)", "jnp.concatenate((a, b), axis=1)"),
    ("torch.flatten(x, 1, 2)", "jax.lax.collapse(x, 1, 3)"),
    ("x.flatten()", "jax.lax.collapse(x, 0)"),
    ("F.softmax(x, -1)", "jax.nn.softmax(x, axis=-1)"),
    ("torch.arange(10)", "jnp.arange(10)"),
    ("torch.zeros(2, 3, dtype=torch.float16)", "jnp.zeros((2, 3), dtype=jnp.float16)"),
    ("q @ k.transpose(-2, -1)", "q @ k.swapaxes(-2, -1)"),
    ("x.split([2, 3, 4], dim=-1)", "jnp.split(x, [2, 5], axis=-1)"),
    ("F.scaled_dot_product_attention(q, k, v, attn_mask=m)", "scaled_dot_product_attention(q, k, v, attn_mask=m)"),
])
def test_forward_expressions(before, after):
    c = convert(f"""
        import torch
        import torch.nn as nn
        import torch.nn.functional as F

        class M(nn.Module):
            def forward(self, x, a, b, q, k, v, m, B, T, C):
                return {before}
        """)
    assert f"        return {after}\n" in c.code
    assert [d for d in c.diagnostics if d.severity.value == "error"] == []


@pytest.mark.parametrize("source", [
    "name.split(',')",  # a str method
    "os.path.split(path)",  # a function of another module
    "np.transpose(a, (1, 0))",
    "'a-b'.split('-')",
])
def test_non_tensor_methods_are_left_alone(source):
    c = convert(f"""
        import os
        import numpy as np
        import torch

        def f(name, path, a, x):
            y = torch.relu(x)
            return {source}
        """)
    assert f"    return {source}\n" in c.code


def test_unsupported_argument_is_reported_and_left_unchanged():
    c = convert("""
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, padding_mode="reflect")
        """)
    assert 'nn.Conv2d(3, 8, 3, padding_mode="reflect")' in c.code
    assert "import torch.nn as nn" in c.code  # still used, so kept
    [d] = c.diagnostics
    assert (d.code, d.severity.value, d.line, d.col) == ("PT004", "error", 7, 21)
    assert "padding_mode" in d.message


def test_unknown_torch_api_is_reported_and_left_unchanged():
    c = convert("""
        import torch

        def f(x):
            return torch.special.erfcx(x)
        """)
    assert "return torch.special.erfcx(x)" in c.code
    assert "import torch" in c.code
    assert codes(c) == ["PT003"]
    assert c.diagnostics[0].line == 5


def test_gelu_default_is_exact_and_softmax_needs_dim():
    c = convert("""
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.act = nn.GELU()
                self.sm = nn.Softmax()
        """)
    assert "self.act = partial(jax.nn.gelu, approximate=False)" in c.code
    assert "self.sm = nn.Softmax()" in c.code
    assert codes(c) == ["PT004"]


# --- imports, layout, files without torch -----------------------------------

def test_comments_blank_lines_and_untouched_code_survive_byte_for_byte():
    source = textwrap.dedent("""\
        '''Docstring.'''
        import math  # used below

        import torch.nn as nn


        CONSTANT = {"a": 1,   "b": 2}   # odd spacing kept


        class M(nn.Module):
            # a comment before __init__
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(2, 2)  # trailing comment

            def forward(self, x):
                y = math.sqrt(2)    # odd spacing kept
                return self.fc(x) * y
        """)
    c = convert_source(source)
    for line in ['CONSTANT = {"a": 1,   "b": 2}   # odd spacing kept', "    # a comment before __init__",
                 "        self.fc = nnx.Linear(2, 2, rngs=rngs)  # trailing comment",
                 "        y = math.sqrt(2)    # odd spacing kept", "import math  # used below"]:
        assert line in c.code.splitlines()
    assert "import torch" not in c.code
    assert c.code.startswith("'''Docstring.'''\nimport math  # used below\n\nfrom flax import nnx\n")


def test_file_without_torch_is_unchanged():
    source = "import numpy as np\n\n\ndef f(x):\n    return np.split(x, 2)  # untouched\n"
    c = convert_source(source)
    assert c.code == source and c.diagnostics == [] and c.changes == []


def test_conversion_is_deterministic_and_idempotent():
    source = textwrap.dedent("""\
        import torch
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(3, 3)

            def forward(self, x):
                return torch.relu(self.fc(x)).view(-1)
        """)
    first = convert_source(source).code
    assert convert_source(source).code == first
    again = convert_source(first)
    assert again.code == first and again.diagnostics == []


def test_syntax_error_is_a_diagnostic_with_line():
    c = convert_source("import torch\ndef f(:\n    pass\n", filename="bad.py")
    assert c.failed
    [d] = c.diagnostics
    assert (d.code, d.line, d.path) == ("PT001", 2, "bad.py")


def test_every_change_is_logged_with_its_rule_and_line():
    c = convert("""
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(2, 2)
        """)
    logged = {(ch.rule, ch.line) for ch in c.changes}
    assert {("module-base", 4), ("module-rngs", 5), ("module-super", 6), ("PT101", 7)} <= logged


def test_star_layers_pass_through_sequential():
    c = convert("""
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self, layers):
                super().__init__()
                self.body = nn.Sequential(*layers, nn.ReLU())
        """)
    assert "self.body = nnx.Sequential(*layers, jax.nn.relu)" in c.code
    assert codes(c) == []


def test_layer_class_used_as_value_is_reported_as_such():
    c = convert("""
        import torch.nn as nn

        def block(norm_layer=nn.BatchNorm2d):
            return norm_layer
        """)
    [d] = c.diagnostics
    assert d.code == "PT003" and "used as a value" in d.message


NO_GRAD_MODEL = '''
import torch
import torch.nn as nn


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.gate = nn.Linear(4, 3)

    def forward(self, x):
        with torch.no_grad():
            scale = self.gate(x).sigmoid()
        return self.fc(x) * scale
'''


def test_no_grad_in_model_code_stops_gradients_like_torch(tmp_path):
    # dropping the `with` alone would let gradients flow into gate's parameters and x through `scale`
    from porter.check.equivalence import check_equivalence
    from porter.check.modelspec import import_file

    conversion = convert_source(NO_GRAD_MODEL, filename="scaled.py")
    assert "scale = no_grad(jax.nn.sigmoid(self.gate(x)))" in conversion.code and not conversion.diagnostics
    (tmp_path / "torch_scaled.py").write_text(NO_GRAD_MODEL)
    (tmp_path / "jax_scaled.py").write_text(conversion.code)
    torch.manual_seed(0)
    torch_model = import_file(tmp_path / "torch_scaled.py").Scaled()
    flax_model = import_file(tmp_path / "jax_scaled.py").Scaled(rngs=nnx.Rngs(0))
    report = check_equivalence(torch_model, flax_model, torch.randn(5, 4))
    assert report.passed, report


def test_no_grad_block_with_control_flow_in_model_code_is_reported():
    source = NO_GRAD_MODEL.replace("            scale = self.gate(x).sigmoid()",
                                   "            scale = self.gate(x).sigmoid()\n            if x.shape[0] > 1:\n"
                                   "                scale = scale * 2")
    conversion = convert_source(source, filename="scaled.py")
    assert [(d.code, d.line) for d in conversion.diagnostics] == [("PT004", 13)]  # the with statement
    assert "with torch.no_grad():" in conversion.code


def test_an_attribute_set_to_none_and_later_to_a_layer_starts_as_nnx_data():
    # nnx takes an attribute first set to None as static and refuses a layer assigned to it afterwards
    c = convert("""
        import torch.nn as nn

        class A(nn.Module):
            def __init__(self, c, proj=True):
                super().__init__()
                self.proj = None
                self.scale = None
                if proj:
                    self.proj = nn.Linear(c, c)

            def forward(self, x):
                return x if self.proj is None else self.proj(x)
        """)
    assert "self.proj = nnx.data(None)" in c.code and "self.scale = None" in c.code
    namespace: dict = {}
    exec(compile(c.code, "a.py", "exec"), namespace)
    assert isinstance(namespace["A"](3, rngs=nnx.Rngs(0)).proj, nnx.Linear)
    assert namespace["A"](3, proj=False, rngs=nnx.Rngs(0)).proj is None


def test_conventional_alias_never_imported_is_imported_where_the_conversion_still_uses_it():
    # `torch` and `nn` come from a star import: what porter leaves of them needs them bound
    source = textwrap.dedent("""\
        from .layers import *

        HAS_MISH = 'mish' in dir(torch.nn.functional)
        ACT_LAYERS = dict(relu=nn.ReLU)
        ACT_FNS = dict(relu=F.relu)
    """)
    result = convert_source(source)
    assert "import torch\nimport torch.nn as nn\n" in result.code
    assert "import torch.nn.functional as F" not in result.code  # F.relu converted: nothing uses F
    compile(result.code, "m.py", "exec")
    namespace = {"__name__": "m"}
    exec(result.code.replace("from .layers import *\n", ""), namespace)
    assert "torch.nn.functional.mish" not in result.code and namespace["HAS_MISH"]
    assert {d.code for d in result.diagnostics if d.severity.name == "ERROR"} == {"PT003"}


def test_conventional_alias_never_imported_gets_no_import_once_converted():
    result = convert_source("def act(x):\n    return F.relu(x)\n")
    assert "torch" not in result.code and "F." not in result.code


def test_helpers_go_below_the_imports_porter_adds_when_other_statements_precede_the_torch_import():
    source = textwrap.dedent("""\
        from collections import OrderedDict
        try:
            from typing import Literal
        except ImportError:
            Literal = None

        import torch.nn as nn


        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 3))]))

            def forward(self, x):
                return self.body(x)
    """)
    result = convert(source)
    assert "class TorchSequential(nnx.Module)" in result.code
    assert result.code.index("from flax import nnx") < result.code.index("class TorchSequential")
    namespace = {"__name__": "m"}
    exec(result.code, namespace)
    assert namespace["M"](rngs=nnx.Rngs(0))(torch.ones(1, 2).numpy()).shape == (1, 3)


@pytest.mark.parametrize("params, expected", [
    # one per line with a trailing comma (black's layout): rngs on lines of their own, the comma kept last
    ("\n        self,\n        cin,\n        cout=4,\n    ",
     "\n        self,\n        cin,\n        cout=4,\n        *,\n        rngs: nnx.Rngs,\n    "),
    # one per line without one (timm's `dtype=None\n    ):`): the line break before `)` moves after rngs
    ("\n        self,\n        cin,\n        cout=4\n    ",
     "\n        self,\n        cin,\n        cout=4,\n        *,\n        rngs: nnx.Rngs\n    "),
    ("self, cin, cout=4", "self, cin, cout=4, *, rngs: nnx.Rngs"),  # on one line: stays on one line
])
def test_the_rngs_parameter_keeps_the_layout_of_the_parameters(params, expected):
    source = ("import torch.nn as nn\n\n\nclass Block(nn.Module):\n    def __init__(" + params + "):\n"
              "        super().__init__()\n        self.conv = nn.Conv2d(cin, cout, 3)\n")
    converted = convert_source(source).code
    assert "def __init__(" + expected + "):" in converted, converted


def test_a_walk_over_children_warns_that_activations_are_no_children():
    """timm's feature extraction walks named_children() for `act1`, an nn.ReLU in torch and jax.nn.relu converted:
    it fails its own assertion (was: no diagnostic)."""
    source = textwrap.dedent('''
        import torch.nn as nn


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(2, 2)
                self.act1 = nn.ReLU()
                self.names = [name for name, _ in self.named_children()]
    ''')
    c = convert_source(source)
    [warning] = [d for d in c.diagnostics if d.code == "PT005"]
    assert warning.line == 10 and "convert to functions (nn.ReLU() to jax.nn.relu)" in warning.message
    assert "self.names = [name for name, _ in named_children(self)]" in c.code


def test_a_file_opening_with_a_relative_import_of_its_package_converts(tmp_path):
    """`from . import base` first (smp's utils/metrics.py), its module classes deriving from base's: the import of
    flax goes above it (was: PT031, an internal error reading the module name of that import, which has none)."""
    from porter.cli import main

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "base.py").write_text("import torch.nn as nn\n\n\nclass Metric(nn.Module):\n    pass\n")
    (package / "metrics.py").write_text(
        "from . import base\n\n\nclass IoU(base.Metric):\n    def __init__(self, eps=1e-7):\n"
        "        super().__init__()\n        self.eps = eps\n\n    def forward(self, x):\n        return x\n")
    assert main(["convert", str(package), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "metrics.py").read_text().startswith("from flax import nnx\nfrom . import base\n")


def test_a_method_of_an_inherited_submodule_is_no_tensor_method():
    """smp's densenet encoder: `self.features.transition1.norm(x)`, features built by the base class, is a layer
    named norm (was: jnp.linalg.vector_norm(self.features.transition1, ord=x), no diagnostic); a parameter's
    norm stays a tensor's."""
    source = textwrap.dedent('''
        import torch.nn as nn


        class Base(nn.Module):
            def __init__(self):
                super().__init__()
                self.features = nn.Module()


        class Encoder(Base):
            def __init__(self):
                super().__init__()
                self.extra = nn.Linear(2, 2)

            def forward(self, x):
                x = self.features.transition1.norm(x)
                return x + self.extra.weight.norm() + self.features.conv0.weight.norm()
    ''')
    c = convert_source(source)
    assert "x = self.features.transition1.norm(x)" in c.code
    assert "jnp.linalg.vector_norm(self.extra.kernel[...].T, ord=2)" in c.code
    assert "jnp.linalg.vector_norm(self.features.conv0.weight, ord=2)" in c.code
