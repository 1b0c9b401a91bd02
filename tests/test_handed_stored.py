"""A module class handed to a function or a module's constructor and called through what holds it: a name or
self attribute bound to it or to a partial of it (`fn = partial(block, c)`, `self.block_cls = block`) gets
`rngs` where it is built (porter/convert/registries.py: holders); put in a container, it is an error on that
line (porter does not follow it out). Was: no rngs and no diagnostic, the converted model failing when built."""

import sys

import torch
from flax import nnx

from porter import cli, convert_source
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import import_file

LAYERS = '''
import torch
import torch.nn as nn


class ConvA(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))
'''

UTIL = '''
from functools import partial

import torch.nn as nn


def make_partial(block, c):
    fn = partial(block, c)
    return fn(c)


def make_stored(block, c):
    table = {"b": block}
    return table["b"](c, c)


class Stage(nn.Module):
    def __init__(self, block, c):
        super().__init__()
        self.block_cls = block
        self.one = self.block_cls(c, c)

    def forward(self, x):
        return self.one(x)


class PartialStage(nn.Module):
    def __init__(self, block, c):
        super().__init__()
        fn = partial(block, cout=c)
        self.one = fn(c)

    def forward(self, x):
        return self.one(x)
'''

NET = '''
import torch.nn as nn

from .layers import ConvA
from .util import PartialStage, Stage, make_partial


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = make_partial(ConvA, 3)
        self.b = Stage(ConvA, 3)
        self.c = PartialStage(ConvA, 3)

    def forward(self, x):
        return self.c(self.b(self.a(x)))
'''

STORED = '''
from .layers import ConvA
from .util import make_stored

BUILT = make_stored(ConvA, 3)
'''


def assert_matches_torch(tmp_path, source, converted_code, input_shape):
    """`Net()` of the source and `Net(rngs=...)` of its conversion pass porter check on one random input."""
    (tmp_path / "torch_net.py").write_text(source)
    (tmp_path / "jax_net.py").write_text(converted_code)
    torch.manual_seed(0)
    original = import_file(tmp_path / "torch_net.py").Net().eval()
    converted = import_file(tmp_path / "jax_net.py").Net(rngs=nnx.Rngs(0))
    report = check_equivalence(original, converted, torch.randn(*input_shape))
    assert report.passed, report.format()


def _tree(tmp_path, files):
    source, output = tmp_path / "src" / "storedproj", tmp_path / "out" / "storedproj"
    source.mkdir(parents=True)
    for name, text in files.items():
        (source / name).write_text(text)
    return source, output


def test_a_handed_class_called_through_a_partial_or_an_attribute_gets_rngs_across_files(tmp_path, monkeypatch):
    source, output = _tree(tmp_path, {"__init__.py": "", "layers.py": LAYERS, "util.py": UTIL, "net.py": NET})
    assert cli.main(["convert", str(source), "-o", str(output)]) == 0
    util = (output / "util.py").read_text()
    assert "def make_partial(block, c, *, rngs: nnx.Rngs):\n    fn = partial(block, c)\n" \
           "    return with_rngs_if_taken(fn, rngs)(c)" in util
    assert "self.one = with_rngs_if_taken(self.block_cls, rngs)(c, c)" in util
    assert "class PartialStage(nnx.Module):\n    def __init__(self, block, c, *, rngs: nnx.Rngs):" in util
    assert "self.one = with_rngs_if_taken(fn, rngs)(c)" in util

    def net_class(root):
        for name in [n for n in sys.modules if n.split(".")[0] == "storedproj"]:
            del sys.modules[name]
        monkeypatch.syspath_prepend(str(root.parent))
        return __import__("storedproj.net").net.Net

    torch.manual_seed(0)
    original = net_class(source)().eval()
    converted = net_class(output)(rngs=nnx.Rngs(0))
    report = check_equivalence(original, converted, torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()


def test_a_handed_class_put_in_a_container_is_an_error_on_that_line(tmp_path):
    source, output = _tree(tmp_path, {"__init__.py": "", "layers.py": LAYERS, "util.py": UTIL, "stored.py": STORED})
    assert cli.main(["convert", str(source), "-o", str(output)]) == 1
    report = (output / "porter_report.txt").read_text()
    line = UTIL.splitlines().index('    table = {"b": block}') + 1
    assert f"util.py:{line}:13 PT006 error block is handed a module class (a call of make_stored" in report


def test_in_one_file_too_and_matching_torch(tmp_path):
    source = LAYERS + UTIL.replace("import torch.nn as nn\n", "") + '''

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = make_partial(ConvA, 3)
        self.b = Stage(ConvA, 3)
        self.c = PartialStage(ConvA, 3)
        self.d = make_stored(ConvA, 3)

    def forward(self, x):
        return self.c(self.b(self.a(x)))
'''
    conversion = convert_source(source, filename="net.py")
    errors = [(d.code, d.line) for d in conversion.diagnostics if d.severity.name == "ERROR"]
    assert errors == [("PT006", source.splitlines().index('    table = {"b": block}') + 1)], conversion.diagnostics
    assert "return with_rngs_if_taken(fn, rngs)(c)" in conversion.code
    assert "self.one = with_rngs_if_taken(self.block_cls, rngs)(c, c)" in conversion.code
    runnable = source.replace("        self.d = make_stored(ConvA, 3)\n", "")
    conversion = convert_source(runnable, filename="net.py")
    assert_matches_torch(tmp_path, runnable, conversion.code, (2, 3, 6, 6))


# a parameter saying nothing of a module (`Optional[Callable] = None`, `=None`), defaulted with `or` or tested
# with `if ... is not None` (was: no rngs, the converted model failing when built; silent)
MAYBE_MODEL = LAYERS + '''
from functools import partial
from typing import Callable, Optional


class Block(nn.Module):
    def __init__(self, dim, norm_layer: Optional[Callable] = None, act_layer=None, inner=None, post_layer=None):
        super().__init__()
        norm_layer = norm_layer or partial(nn.LayerNorm, eps=1e-6)
        act_layer = act_layer or nn.GELU
        self.norm = norm_layer(dim)
        self.act = act_layer()
        self.inner = inner(dim, dim) if inner is not None else nn.Identity()
        self.post = nn.Sequential(post_layer(dim), nn.Identity())

    def forward(self, x):
        return self.post(self.inner(self.act(self.norm(x)).permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.plain = Block(6, post_layer=nn.LayerNorm)
        self.given = Block(6, norm_layer=nn.LayerNorm, act_layer=nn.Tanh, inner=ConvA, post_layer=nn.LayerNorm)

    def forward(self, x):
        return self.given(self.plain(x))
'''


def test_a_parameter_that_may_hold_a_module_class_gets_rngs_if_it_takes_them(tmp_path):
    conversion = convert_source(MAYBE_MODEL, filename="net.py")
    assert [d for d in conversion.diagnostics if d.severity.name == "ERROR"] == []
    assert "self.norm = with_rngs_if_taken(norm_layer, rngs)(dim)" in conversion.code
    assert "self.act = with_rngs_if_taken(act_layer, rngs)()" in conversion.code
    assert "self.inner = with_rngs_if_taken(inner, rngs)(dim, dim) if inner is not None else" in conversion.code
    assert "self.post = nnx.Sequential(with_rngs_if_taken(post_layer, rngs)(dim), " in conversion.code
    assert_matches_torch(tmp_path, MAYBE_MODEL, conversion.code, (2, 5, 5, 6))


# timm's ConvNeXtBlock: `mlp_layer = partial(GlobalResponseNormMlp if use_grn else Mlp, use_conv=conv_mlp)`
# (was: a partial of a choice was no layer constructor, its call got no rngs and no diagnostic)
CHOICE_MODEL = LAYERS + '''
from functools import partial


class ConvB(ConvA):
    def forward(self, x):
        return super().forward(x) * 2


class Net(nn.Module):
    def __init__(self, use_b=True):
        super().__init__()
        layer = partial(ConvB if use_b else ConvA, cout=4)
        self.a = layer(3)

    def forward(self, x):
        return self.a(x)
'''


def test_a_partial_of_a_choice_between_module_classes_gets_rngs(tmp_path):
    conversion = convert_source(CHOICE_MODEL, filename="net.py")
    assert "self.a = layer(3, rngs=rngs)" in conversion.code
    assert_matches_torch(tmp_path, CHOICE_MODEL, conversion.code, (2, 3, 6, 6))


# timm's activations: `from .activations import *` then `_ACT_LAYER_DEFAULT = dict(gelu=GELU, ...)`, the class
# handed to Mlp(act_layer=...), which calls it with rngs= (was: GELU, building nothing random, took no rngs:
# `GELU.__init__() got an unexpected keyword argument 'rngs'` when built, benchmarks/corpus.py's ConvNeXt)
STAR_TREE = {
    "__init__.py": "",
    "acts.py": "import torch.nn as nn\nimport torch.nn.functional as F\n\n\nclass GELU(nn.Module):\n"
               "    def __init__(self, inplace: bool = False):\n        super().__init__()\n\n"
               "    def forward(self, x):\n        return F.gelu(x)\n",
    "create.py": "from .acts import *\n\n_ACTS = dict(gelu=GELU)\n\n\ndef get_act_layer(name):\n"
                 "    return _ACTS[name]\n",
    "net.py": '''
from typing import Type

import torch.nn as nn

from .create import get_act_layer


class Mlp(nn.Module):
    def __init__(self, d, act_layer: Type[nn.Module] = nn.ReLU):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.act = act_layer()

    def forward(self, x):
        return self.act(self.fc(x))


class Net(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.mlp = Mlp(d, act_layer=get_act_layer("gelu"))

    def forward(self, x):
        return self.mlp(x)
''',
}


def test_a_class_star_imported_and_passed_as_a_value_takes_rngs(tmp_path, monkeypatch):
    source, output = _tree(tmp_path, STAR_TREE)
    assert cli.main(["convert", str(source), "-o", str(output)]) == 0
    assert "def __init__(self, inplace: bool = False, *, rngs: nnx.Rngs):" in (output / "acts.py").read_text()

    def net_class(root):
        for name in [n for n in sys.modules if n.split(".")[0] == "storedproj"]:
            del sys.modules[name]
        monkeypatch.syspath_prepend(str(root.parent))
        return __import__("storedproj.net").net.Net

    torch.manual_seed(0)
    original = net_class(source)().eval()
    converted = net_class(output)(rngs=nnx.Rngs(0))
    report = check_equivalence(original, converted, torch.randn(2, 4))
    assert report.passed, report.format()


# timm's `norm_layer = get_norm_layer(norm_layer)` (a string default, the class looked up by a function): the
# name bound from a call, called and stored (was: no rngs, no diagnostic; classifier.py's NormMlpClassifierHead)
LOOKED_UP_MODEL = LAYERS + '''

def get_layer(name):
    return {"conv": ConvA, "tanh": nn.Tanh}[name]


class Net(nn.Module):
    def __init__(self, kind="conv"):
        super().__init__()
        block = get_layer(kind)
        self.a = block(3, 4)

    def forward(self, x):
        return self.a(x)
'''


def test_a_class_looked_up_by_a_function_and_called_gets_rngs_if_it_takes_them(tmp_path):
    conversion = convert_source(LOOKED_UP_MODEL, filename="net.py")
    assert "self.a = with_rngs_if_taken(block, rngs)(3, 4)" in conversion.code
    assert_matches_torch(tmp_path, LOOKED_UP_MODEL, conversion.code, (2, 3, 6, 6))
