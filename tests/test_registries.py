"""Module classes reached through registries (porter/convert/registries.py): picked from a literal of
module classes (a dict or list, at any depth) directly or through a name bound from it, or handed to a
constructor with nothing saying what they are; each construction gets `rngs` (statically where porter
can tell, through the emitted with_rngs_if_taken where it cannot), checked against torch."""

import textwrap

import pytest
import torch
from flax import nnx

from porter import convert_source
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import import_file
from porter.emitted import with_rngs_if_taken

BLOCKS = '''
import torch
import torch.nn as nn


class ConvA(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))


class ConvB(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.conv(x) * 2
'''

# googlenet's `blocks` list, a module-level list and a segmentation-style dict of encoders with their params
REGISTRY_MODEL = BLOCKS + '''

ENCODERS = {"a": {"encoder": ConvA, "params": {"cout": 4}}, "b": {"encoder": ConvB, "params": {"cout": 6}}}
STAGES = [ConvA, (ConvB, ConvA)]


def get_encoder(name, cin):
    Encoder = ENCODERS[name]["encoder"]
    params = ENCODERS[name]["params"]
    return Encoder(cin, **params)


class Net(nn.Module):
    def __init__(self, blocks=None):
        super().__init__()
        if blocks is None:
            blocks = [ConvA, ConvB]
        first = blocks[0]
        self.first = first(3, 4)
        self.second = blocks[1](4, 4)
        self.third = STAGES[1][-1](4, 4)
        self.enc = get_encoder("b", 4)

    def forward(self, x):
        return self.enc(self.third(self.second(self.first(x))))
'''

# what porter cannot tell: a registry of module classes, a plain function and a number, and a class handed in
UNKNOWN_MODEL = BLOCKS + '''

class Scale(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.factor = (cout + 1) / cin

    def forward(self, x):
        return x * self.factor


def pooled(cin, cout):
    return nn.AvgPool2d(3, stride=1, padding=1)


REGISTRY = {"conv": ConvA, "scale": Scale, "pool": pooled, "width": 4}


class Net(nn.Module):
    def __init__(self, block, kinds=("conv", "scale", "pool")):
        super().__init__()
        self.stem = block(4, 4)
        self.layers = nn.ModuleList()
        for kind in kinds:
            self.layers.append(REGISTRY[kind](4, 4))

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return x
'''


def errors(conversion):
    return [d for d in conversion.diagnostics if d.severity.name == "ERROR"]


def pair(tmp_path, source):
    conversion = convert_source(textwrap.dedent(source), filename="net.py")
    (tmp_path / "torch_net.py").write_text(source)
    (tmp_path / "jax_net.py").write_text(conversion.code)
    torch.manual_seed(0)
    return conversion, import_file(tmp_path / "torch_net.py"), import_file(tmp_path / "jax_net.py")


def test_classes_picked_from_registries_get_rngs():
    code = convert_source(REGISTRY_MODEL, filename="net.py").code
    assert "self.first = first(3, 4, rngs=rngs)" in code  # a name bound from a local list
    assert "self.second = blocks[1](4, 4, rngs=rngs)" in code  # a pick called directly
    assert "self.third = STAGES[1][-1](4, 4, rngs=rngs)" in code  # two levels down a module-level list
    # a dict whose "encoder" entries are module classes (its "params" are not): the factory takes rngs
    assert "def get_encoder(name, cin, *, rngs: nnx.Rngs):" in code
    assert "return Encoder(cin, **params, rngs=rngs)" in code
    assert "self.enc = get_encoder(\"b\", 4, rngs=rngs)" in code
    assert "with_rngs_if_taken" not in code  # porter could tell every one


def test_classes_picked_from_registries_match_torch(tmp_path):
    conversion, torch_module, jax_module = pair(tmp_path, REGISTRY_MODEL)
    assert errors(conversion) == []
    report = check_equivalence(torch_module.Net().eval(), jax_module.Net(rngs=nnx.Rngs(0)),
                               torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()


def test_callees_porter_cannot_tell_get_rngs_where_they_take_it():
    code = convert_source(UNKNOWN_MODEL, filename="net.py").code
    assert "self.stem = with_rngs_if_taken(block, rngs)(4, 4)" in code
    assert "self.layers.append(with_rngs_if_taken(REGISTRY[kind], rngs)(4, 4))" in code
    assert "def with_rngs_if_taken(constructor, rngs):" in code and "import inspect" in code


@pytest.mark.parametrize("block", ["ConvA", "Scale", "pooled"])
def test_callees_porter_cannot_tell_match_torch(tmp_path, block):
    conversion, torch_module, jax_module = pair(tmp_path, UNKNOWN_MODEL)
    assert errors(conversion) == []
    torch_model = torch_module.Net(getattr(torch_module, block)).eval()
    flax_model = jax_module.Net(getattr(jax_module, block), rngs=nnx.Rngs(0))
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 4, 6, 6))
    assert report.passed, report.format()


def test_a_construction_porter_cannot_tell_without_rngs_in_scope_is_an_error():
    source = UNKNOWN_MODEL.replace("            x = layer(x)\n",
                                   "            x = layer(x)\n        x = REGISTRY[self.kind](4, 4)(x)\n")
    conversion = convert_source(source, filename="net.py")
    found = [d for d in errors(conversion) if d.code == "PT006"]
    assert found and "cannot tell whether this call builds a module" in found[0].message, conversion.diagnostics


class _TakesRngs(nnx.Module):
    def __init__(self, c, *, rngs):
        self.c, self.rngs_given = c, rngs is not None


class _NoRngs(nnx.Module):
    def __init__(self, c):
        self.c = c


def test_with_rngs_if_taken_passes_rngs_only_to_callees_taking_it():
    from functools import partial
    rngs = nnx.Rngs(0)
    assert with_rngs_if_taken(_TakesRngs, rngs)(3).rngs_given  # an nnx class: asked through __init__
    assert with_rngs_if_taken(_NoRngs, rngs)(3).c == 3
    assert with_rngs_if_taken(lambda c: c + 1, rngs)(3) == 4  # a plain function
    assert with_rngs_if_taken(lambda c, *, rngs: rngs, rngs)(3) is rngs  # a layer factory
    assert with_rngs_if_taken(partial(_TakesRngs, 5), rngs)().c == 5  # a partial of a class
    bound = partial(_TakesRngs, rngs=rngs)
    assert with_rngs_if_taken(bound, nnx.Rngs(1)) is bound  # already given: left alone
    assert with_rngs_if_taken(max, rngs)(1, 2) == 2  # a builtin without a signature


def test_a_module_class_reached_as_an_attribute_of_an_imported_module_of_the_tree_gets_rngs(tmp_path):
    """`from . import layers as md; md.Block(d)`, `import proj.layers; proj.layers.Block(d)`: known
    from the tree (what the README's "Not yet" said was missing)."""
    from porter.convert import tree
    root = tmp_path / "proj"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "layers.py").write_text("import torch.nn as nn\n\n\nclass Block(nn.Module):\n"
                                    "    def __init__(self, d):\n        super().__init__()\n"
                                    "        self.fc = nn.Linear(d, d)\n")
    (root / "net.py").write_text("import torch.nn as nn\nfrom . import layers as md\nimport proj.layers\n\n\n"
                                 "class Net(nn.Module):\n    def __init__(self, d):\n        super().__init__()\n"
                                 "        self.a = md.Block(d)\n        self.b = proj.layers.Block(d)\n")
    results = tree.convert_tree(tree.plan(root).tasks, root_name="proj", jobs=1)
    net = next(r for r in results if r.relative.endswith("net.py")).code.decode()
    assert "self.a = md.Block(d, rngs=rngs)" in net
    assert "self.b = proj.layers.Block(d, rngs=rngs)" in net


# a class of the file handed to a plain function that calls it (was: no rngs, no diagnostic)
HANDED_MODEL = BLOCKS + '''

def make(block, cin, cout):
    return block(cin, cout)


def scaled(x, f):  # called, but never handed a class: stays a plain function
    return f(x) * 2


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = make(ConvA, 3, 4)
        self.b = make(block=ConvB, cin=4, cout=4)

    def forward(self, x):
        return scaled(self.b(self.a(x)), torch.tanh)
'''


def test_a_class_handed_to_a_plain_function_that_calls_it_gets_rngs_and_matches_torch(tmp_path):
    conversion, torch_module, jax_module = pair(tmp_path, HANDED_MODEL)
    assert errors(conversion) == []
    assert "def make(block, cin, cout, *, rngs: nnx.Rngs):\n    return with_rngs_if_taken(block, rngs)(cin, cout)" \
        in conversion.code
    assert "self.a = make(ConvA, 3, 4, rngs=rngs)" in conversion.code
    assert "self.b = make(block=ConvB, cin=4, cout=4, rngs=rngs)" in conversion.code
    assert "def scaled(x, f):  # called, but never handed a class: stays a plain function\n    return f(x) * 2" \
        in conversion.code
    report = check_equivalence(torch_module.Net().eval(), jax_module.Net(rngs=nnx.Rngs(0)), torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()


# a function handed the class by another function that was handed it (was: neither took rngs, no diagnostic)
FORWARDED_MODEL = BLOCKS + '''

def make(block, c):
    return block(c, c)


def stack(block, c, n):
    return [make(block, c) for _ in range(n)]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.b = nn.Sequential(*stack(ConvB, 3, 2))

    def forward(self, x):
        return self.b(x)
'''


def test_a_class_handed_on_by_a_function_of_the_file_gets_rngs_and_matches_torch(tmp_path):
    conversion, torch_module, jax_module = pair(tmp_path, FORWARDED_MODEL)
    assert errors(conversion) == []
    assert "def stack(block, c, n, *, rngs: nnx.Rngs):\n    return [make(block, c, rngs=rngs) for _ in range(n)]" \
        in conversion.code
    assert "self.b = nnx.Sequential(*stack(ConvB, 3, 2, rngs=rngs))" in conversion.code
    report = check_equivalence(torch_module.Net().eval(), jax_module.Net(rngs=nnx.Rngs(0)), torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()


def test_a_plain_function_picking_from_a_mixed_registry_takes_rngs_on_the_fast_path_too():
    """`Encoder = REGISTRY[name]; return Encoder(c)` names nothing the analysis's prefilter knows: the function
    still becomes a layer factory (it had come out unchanged, its call an error, on the fast path only)."""
    from porter.convert.pipeline import _convert

    source = UNKNOWN_MODEL + '''

def get(name, c):
    Layer = REGISTRY[name]
    return Layer(c, c)
'''
    fast = convert_source(source, filename="net.py")
    assert "def get(name, c, *, rngs: nnx.Rngs):\n    Layer = REGISTRY[name]\n    return with_rngs_if_taken(Layer, " \
           "rngs)(c, c)" in fast.code
    assert fast.code == _convert(source, "net.py", fast=False).code and not errors(fast)


# timm's make_blocks: a layer factory calling a class bound by a for loop over a tuple of block classes
LOOP_MODEL = '''
from typing import Tuple, Type

import torch.nn as nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(c, c)

    def forward(self, x):
        return self.fc(x).relu()


def make_blocks(block_fns: Tuple[Type[Block], ...], channels):
    stages = []
    for block_fn, c in zip(block_fns, channels):
        blocks = []
        blocks.append(block_fn(c))
        stages.append(nn.Sequential(*blocks, nn.Linear(c, c)))
    return stages


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = nn.Sequential(*make_blocks((Block, Block), (4, 4)))

    def forward(self, x):
        return self.stages(x)
'''


def test_a_class_bound_by_a_loop_in_a_layer_factory_gets_rngs_if_it_takes_them(tmp_path):
    import numpy as np
    import torch
    from flax import nnx

    from porter import convert_source
    from porter.check.equivalence import check_equivalence
    from porter.check.modelspec import import_file

    conversion = convert_source(LOOP_MODEL, filename="m.py")
    assert "blocks.append(with_rngs_if_taken(block_fn, rngs)(c))" in conversion.code
    (tmp_path / "torch_net.py").write_text(LOOP_MODEL)
    (tmp_path / "jax_net.py").write_text(conversion.code)
    torch.manual_seed(0)
    original = import_file(tmp_path / "torch_net.py").Net()
    converted = import_file(tmp_path / "jax_net.py").Net(rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    assert check_equivalence(original, converted, x).passed


# the same, the function in another file of the tree (was: no rngs and no diagnostic; Net then failed when built)
HANDED_ACROSS = {
    "__init__.py": "",
    "util.py": "def make(block, c):\n    return block(c, c)\n\n\n"
               "def stack(block, c, n):  # hands the class on to make\n    return [make(block, c) for _ in range(n)]\n",
    "layers.py": BLOCKS,
    "net.py": '''
import torch.nn as nn

from . import util
from .layers import ConvA, ConvB
from .util import make


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = make(ConvA, 3)
        self.b = nn.Sequential(*util.stack(block=ConvB, c=3, n=2))

    def forward(self, x):
        return self.b(self.a(x))
''',
}


def test_a_class_handed_to_a_function_of_another_file_of_the_tree_gets_rngs_and_matches_torch(tmp_path, monkeypatch):
    import sys

    from porter import cli

    source, output = tmp_path / "src" / "handproj", tmp_path / "out" / "handproj"
    source.mkdir(parents=True)
    for name, text in HANDED_ACROSS.items():
        (source / name).write_text(text)
    assert cli.main(["convert", str(source), "-o", str(output)]) == 0
    util, net = (output / "util.py").read_text(), (output / "net.py").read_text()
    assert "def make(block, c, *, rngs: nnx.Rngs):\n    return with_rngs_if_taken(block, rngs)(c, c)" in util
    assert "def stack(block, c, n, *, rngs: nnx.Rngs):" in util and "make(block, c, rngs=rngs)" in util
    assert "self.a = make(ConvA, 3, rngs=rngs)" in net
    assert "util.stack(block=ConvB, c=3, n=2, rngs=rngs)" in net

    def net_class(root):
        for name in [n for n in sys.modules if n.split(".")[0] == "handproj"]:
            del sys.modules[name]
        monkeypatch.syspath_prepend(str(root.parent))
        return __import__("handproj.net").net.Net

    torch.manual_seed(0)
    original = net_class(source)().eval()
    converted = net_class(output)(rngs=nnx.Rngs(0))
    report = check_equivalence(original, converted, torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()


# timm's create_model: annotated to return a module, it calls what a run-time registry gives and stores its
# **kwargs on the model (was: rngs reached it inside **kwargs, and nnx refused the Rngs stored on the module)
FACTORY_MODEL = BLOCKS + '''
_entrypoints = {}


def register(fn):
    _entrypoints[fn.__name__] = fn
    return fn


@register
def small(cout=4, **kwargs):
    return ConvB(3, cout, **kwargs)


def create(name: str, **kwargs) -> nn.Module:
    create_fn = _entrypoints[name]
    model = create_fn(**kwargs)
    model.model_args = dict(kwargs)
    return model


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = create("small", cout=5)

    def forward(self, x):
        return self.body(x)
'''


def test_a_function_annotated_to_return_a_module_takes_rngs_of_its_own_and_matches_torch(tmp_path):
    conversion, torch_module, jax_module = pair(tmp_path, FACTORY_MODEL)
    assert errors(conversion) == []
    assert "def create(name: str, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:" in conversion.code
    assert "model = with_rngs_if_taken(create_fn, rngs)(**kwargs)" in conversion.code
    assert 'self.body = create("small", cout=5, rngs=rngs)' in conversion.code
    flax_model = jax_module.Net(rngs=nnx.Rngs(0))
    assert flax_model.body.model_args == {"cout": 5}  # the factory's own options, no Rngs among them
    report = check_equivalence(torch_module.Net().eval(), flax_model, torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()


def test_a_function_annotated_to_return_a_module_leaves_functions_of_the_file_and_imports_to_the_analysis():
    """Only a callee bound in the function itself is unknown: `deepcopy(model)` (timm's reparameterize_model)
    or a function of the file that builds nothing must not make the function take rngs."""
    source = BLOCKS + '''
from copy import deepcopy


def plain(model):
    return model


def fused(model: nn.Module, inplace: bool = False) -> nn.Module:
    if not inplace:
        model = deepcopy(model)
    return plain(model)
'''
    conversion = convert_source(textwrap.dedent(source), filename="net.py")
    assert "def fused(model: nnx.Module, inplace: bool = False) -> nnx.Module:" in conversion.code
    assert "with_rngs_if_taken" not in conversion.code


# classes handed in a list and bound by a comprehension, and a class stored by the constructor and built in a
# method it calls (was: neither got rngs, and no diagnostic: the converted model failed when built)
LISTED_MODEL = BLOCKS + '''

def make_all(blocks, c):
    return [b(c, c) for b in blocks]


class Net(nn.Module):
    def __init__(self, block, blocks):
        super().__init__()
        self.block_cls = block
        self.first = self._make(4)
        self.rest = nn.ModuleList([b(4, 4) for b in blocks])
        self.more = nn.ModuleList(make_all([ConvB, ConvA], 4))

    def _make(self, c):
        return self.block_cls(3, c)

    def forward(self, x):
        x = self.first(x)
        for layer in [*self.rest, *self.more]:
            x = layer(x)
        return x
'''


def test_classes_handed_in_a_list_or_built_in_a_method_the_constructor_calls_get_rngs_and_match_torch(tmp_path):
    conversion, torch_module, jax_module = pair(tmp_path, LISTED_MODEL)
    assert errors(conversion) == []
    assert "def make_all(blocks, c, *, rngs: nnx.Rngs):\n    return [with_rngs_if_taken(b, rngs)(c, c) for b in " \
           "blocks]" in conversion.code
    assert "self.rest = nnx.List([with_rngs_if_taken(b, rngs)(4, 4) for b in blocks])" in conversion.code
    assert "def _make(self, c, *, rngs: nnx.Rngs):\n        return with_rngs_if_taken(self.block_cls, rngs)(3, c)" \
        in conversion.code
    assert "self.first = self._make(4, rngs=rngs)" in conversion.code
    report = check_equivalence(torch_module.Net(torch_module.ConvA, [torch_module.ConvB]).eval(),
                               jax_module.Net(jax_module.ConvA, [jax_module.ConvB], rngs=nnx.Rngs(0)),
                               torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()


# segmentation_models_pytorch's registry: empty, filled as the module runs (`encoders.update(resnet_encoders)`);
# was: `Encoder(**params)` got no rngs and no diagnostic
RUNTIME_REGISTRY_MODEL = BLOCKS + '''
ENCODERS = {}
ENCODERS.update({"a": {"encoder": ConvA, "params": {"cout": 4}}})
ENCODERS["b"] = {"encoder": ConvB, "params": {"cout": 6}}
SCALES = {}
SCALES["double"] = lambda x: x * 2


def get_encoder(name, cin):
    Encoder = ENCODERS[name]["encoder"]
    return Encoder(cin, **ENCODERS[name]["params"])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = get_encoder("b", 3)
        self.other = ENCODERS["a"]["encoder"](6, 4)

    def forward(self, x):
        return SCALES["double"](self.other(self.enc(x)))
'''


def test_classes_picked_from_a_registry_filled_at_run_time_get_rngs_and_match_torch(tmp_path):
    conversion, torch_module, jax_module = pair(tmp_path, RUNTIME_REGISTRY_MODEL)
    assert errors(conversion) == []
    assert "return with_rngs_if_taken(Encoder, rngs)(cin, **ENCODERS[name][\"params\"])" in conversion.code
    assert 'self.other = with_rngs_if_taken(ENCODERS["a"]["encoder"], rngs)(6, 4)' in conversion.code
    assert 'return SCALES["double"](self.other(self.enc(x)))' in conversion.code  # (forward: no rngs, no error)
    report = check_equivalence(torch_module.Net().eval(), jax_module.Net(rngs=nnx.Rngs(0)), torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()
