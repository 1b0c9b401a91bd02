"""Classes and factories of installed packages outside the tree (porter/convert/outside.py, read from their
source, never imported) used by converted module classes: PT013 errors, PT014 warnings for mixins."""

import sys
import textwrap
from pathlib import Path

import pytest

import porter
from porter.convert import outside, tree
from porter.convert.outside import CLASS, FACTORY, MODULE, UNKNOWN, what_is

HELPER = {
    "__init__.py": """\
        from .layers import Sequential, Block as PublicBlock, Linear
        from .factory import *
        from .hub import HubMixin, SafeMixin, MetaMixin, SubclassMixin, TorchMixin
        from . import layers
        from torch.nn import Linear as TorchLinear
        raise RuntimeError("helperpkg must never be imported by porter")
        """,
    "layers.py": """\
        import torch.nn as nn
        from torch import nn as torch_nn


        class Base(nn.Module):
            pass


        class Block(Base):
            def __init__(self, d):
                super().__init__()
                self.fc = nn.Linear(d, d)


        class Sequential(torch_nn.Sequential):
            pass


        class Linear:  # not a module, though named as torch's
            def __init__(self, d):
                self.d = d


        Alias = Block
        """,
    "factory.py": """\
        import torch.nn as nn
        from .layers import Block

        __all__ = ["make_block", "build", "make_thing", "get_block", "maybe_block"]
        _REGISTRY = {}


        def make_block(d):
            block = Block(d)
            return block


        def build(d) -> nn.Module:
            return _REGISTRY["x"](d)


        def make_thing():
            return {"a": 1}


        def get_block(name):
            fn = _REGISTRY[name]
            return fn()


        def maybe_block(d):
            if d:
                return Block(d)
            return None


        def _private():
            return Block(1)
        """,
    "hub.py": """\
        import torch


        class HubMixin:
            def __new__(cls, *args, **kwargs):
                instance = super().__new__(cls)
                instance._config = kwargs
                return instance


        class SafeMixin:
            def save(self, path):
                pass


        class Meta(type):
            pass


        class MetaMixin(metaclass=Meta):
            pass


        class SubclassMixin:
            def __init_subclass__(cls, **kwargs):
                cls.registered = True


        class _Hub:
            def push_to_hub(self, repo):
                pass


        class TorchMixin(_Hub):  # as huggingface_hub's PyTorchModelHubMixin: saving and loading through torch
            def save_pretrained(self, path):
                torch.save(self.state_dict(), path)

            @classmethod
            def from_pretrained(cls, path):
                model = cls()
                model.load_state_dict(torch.load(path))
                return model

            def _private(self):
                pass
        """,
}


def write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """An installed package `helperpkg` in a directory on sys.path; what porter read of it is forgotten after."""
    directory = tmp_path / "site"
    write(directory / "helperpkg", HELPER)
    monkeypatch.syspath_prepend(str(directory))
    outside.clear_cache()
    yield directory
    outside.clear_cache()
    assert "helperpkg" not in sys.modules


def errors(conversion, code="PT013"):
    return [d for d in conversion.diagnostics if d.code == code]


def convert(tmp_path: Path, source: str, name: str = "model.py"):
    path = tmp_path / "project" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return porter.convert_source(path.read_text(), filename=str(path))


# ------------------------------------------------------------------------------------------ what_is
@pytest.mark.parametrize("name, kind, where", [
    ("helperpkg.layers.Block", MODULE, "helperpkg.layers.Block"),  # through a base of the same file
    ("helperpkg.PublicBlock", MODULE, "helperpkg.layers.Block"),  # a re-export under another name
    ("helperpkg.layers.Alias", MODULE, "helperpkg.layers.Block"),  # an assignment
    ("helperpkg.Sequential", MODULE, "helperpkg.layers.Sequential"),  # from torch import nn as torch_nn
    ("helperpkg.TorchLinear", MODULE, "torch.nn.modules.linear.Linear"),
    ("helperpkg.Linear", CLASS, "helperpkg.layers.Linear"),
    ("helperpkg.make_block", FACTORY, "helperpkg.factory.make_block"),  # a star import with __all__
    ("helperpkg.build", FACTORY, "helperpkg.factory.build"),  # annotated
    ("helperpkg.make_thing", UNKNOWN, "helperpkg.factory.make_thing"),
    ("helperpkg.get_block", UNKNOWN, "helperpkg.factory.get_block"),  # a registry: porter cannot tell
    ("helperpkg.maybe_block", UNKNOWN, "helperpkg.factory.maybe_block"),  # returns None too
    ("helperpkg._private", UNKNOWN, None),  # not exported by the star import
    ("helperpkg.HubMixin", CLASS, "helperpkg.hub.HubMixin"),
    ("helperpkg.layers", UNKNOWN, "helperpkg.layers"),  # a module
    ("helperpkg.Missing", UNKNOWN, None),
    ("nothere.Block", UNKNOWN, None),
])
def test_what_a_name_of_an_installed_package_is(site, name, kind, where):
    found = what_is(name)
    assert (found.kind, found.where) == (kind, where)


def test_a_mixin_knows_what_stops_nnx_from_taking_it(site):
    assert what_is("helperpkg.SafeMixin").hazards == ()
    assert "__new__ sets attributes" in what_is("helperpkg.HubMixin").hazards[0]
    assert "metaclass Meta" in what_is("helperpkg.MetaMixin").hazards[0]
    assert "__init_subclass__" in what_is("helperpkg.SubclassMixin").hazards[0]


def test_the_current_directory_is_not_searched(tmp_path, monkeypatch):
    write(tmp_path / "cwdpkg", {"__init__.py": "import torch.nn as nn\nclass B(nn.Module): pass\n"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend("")
    outside.clear_cache()
    assert not outside.is_installed("cwdpkg")
    assert what_is("cwdpkg.B").kind == UNKNOWN
    outside.clear_cache()


# ------------------------------------------------------------------------------------------ the diagnostics
def test_a_module_class_deriving_from_an_installed_module_class_is_an_error(site, tmp_path):
    conversion = convert(tmp_path, """\
        import torch.nn as nn
        from helperpkg import PublicBlock


        class Encoder(PublicBlock):
            def __init__(self, d):
                super().__init__(d)
                self.out = nn.Linear(d, d)
        """)
    [error] = errors(conversion)
    assert (error.line, error.col, error.severity.value) == (5, 15, "error")
    assert "Encoder derives from PublicBlock (helperpkg.layers.Block)" in error.message
    assert "installed package helperpkg" in error.message and "helperpkg/layers.py" in error.message


def test_building_or_calling_a_factory_of_an_installed_package_in_a_module_class_is_an_error(site, tmp_path):
    conversion = convert(tmp_path, """\
        import torch.nn as nn
        import helperpkg
        from helperpkg import Sequential, make_block, make_thing, Linear


        class Net(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.seq = Sequential(nn.Linear(d, d))
                self.block = helperpkg.layers.Block(d)
                self.other = make_block(d)
                self.thing = make_thing()  # not a module: nothing to say
                self.plain = Linear(d)  # helperpkg's own Linear is no module
                self.fc = nn.Linear(d, d)

            def forward(self, x):
                return self.fc(x)
        """)
    found = {(e.line, e.message.split(" (")[0]) for e in errors(conversion)}
    assert found == {(9, "the module class Net builds Sequential"),
                     (10, "the module class Net builds helperpkg.layers.Block"),
                     (11, "the module class Net calls make_block")}
    assert not any(d.code == "PT040" and d.line in (9, 10) for d in conversion.diagnostics)  # said once


def test_a_module_stored_from_a_package_porter_cannot_find_is_an_error_naming_it_and_the_flag(site, tmp_path):
    """`self.encoder = timm.create_model(...)` with timm not installed where porter runs (was: no diagnostic, the
    nnx module then held whatever timm built); a call not stored on the module, and an installed package's
    function porter cannot read (numpy's compiled default_rng), say nothing."""
    conversion = convert(tmp_path, """\
        import numpy as np
        import nothere
        import torch.nn as nn


        class Net(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.encoder = nothere.create_model("resnet18", num_classes=0)
                self.rng = np.random.default_rng(0)
                nothere.log(d)
                self.fc = nn.Linear(d, d)
        """)
    [error] = errors(conversion)
    assert error.line == 9 and error.severity.name == "ERROR"
    assert "cannot read nothere" in error.message and "--with nothere" in error.message


def test_a_layer_factory_building_a_module_of_an_installed_package_is_an_error(site, tmp_path):
    conversion = convert(tmp_path, """\
        import torch.nn as nn
        from helperpkg import Sequential


        def head(d):
            return Sequential(nn.Linear(d, d), nn.ReLU())


        def plain(d):
            return Sequential()  # no layer of torch: porter does not convert it as a factory
        """)
    [error] = errors(conversion)
    assert error.line == 6 and error.message.startswith("the layer factory head builds Sequential")
    assert "so it would build a torch module where nnx ones are expected" in error.message


def test_an_isinstance_test_against_a_module_of_an_installed_package_says_it_is_always_false(site, tmp_path):
    conversion = convert(tmp_path, """\
        import torch.nn as nn
        from helperpkg import PublicBlock, Sequential


        def unwrap(module):
            if isinstance(module, (PublicBlock, nn.ReLU)):
                return nn.Linear(2, 2)
            return Sequential() if issubclass(type(module), Sequential) else module
        """)
    found = sorted((e.line, e.message.split(" (")[0]) for e in errors(conversion))
    assert found == [(6, "the layer factory unwrap tests whether a module is a PublicBlock"),
                     (8, "the layer factory unwrap builds Sequential"),
                     (8, "the layer factory unwrap tests whether a module is a Sequential")]
    assert all("always false" in e.message for e in errors(conversion) if "tests whether" in e.message)


def test_a_torch_class_reexported_by_a_package_is_named_as_torch(site, tmp_path):
    conversion = convert(tmp_path, """\
        import torch.nn as nn
        from helperpkg import TorchLinear


        class Net(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.fc = TorchLinear(d, d)
        """)
    [error] = errors(conversion)
    assert "torch's own torch.nn.modules.linear.Linear: import it from torch" in error.message


@pytest.mark.parametrize("mixin, why", [
    ("HubMixin", "__new__ sets attributes"), ("MetaMixin", "metaclass Meta"), ("TorchMixin", "torch.save()")])
def test_a_mixin_of_an_installed_package_that_nnx_cannot_take_is_dropped_with_what_is_lost(site, tmp_path, mixin,
                                                                                            why):
    conversion = convert(tmp_path, f"""\
        import torch.nn as nn
        from helperpkg import {mixin}


        class Net(nn.Module, {mixin}):
            def __init__(self, d):
                super().__init__()
                self.fc = nn.Linear(d, d)
        """)
    [found] = [d for d in conversion.diagnostics if d.code in ("PT013", "PT014")]
    assert (found.code, found.severity.value, found.line, found.col) == ("PT014", "warning", 5, 22)
    assert f"Net also derives from {mixin} (helperpkg.hub.{mixin}" in found.message and why in found.message
    assert "class Net(nnx.Module):" in conversion.code


def test_a_mixin_of_an_installed_package_that_works_on_nnx_is_kept_silently(site, tmp_path):
    conversion = convert(tmp_path, """\
        import torch.nn as nn
        from helperpkg import SafeMixin


        class Net(nn.Module, SafeMixin):
            def __init__(self, d):
                super().__init__()
                self.fc = nn.Linear(d, d)
        """)
    assert not [d for d in conversion.diagnostics if d.code in ("PT013", "PT014")]
    assert "class Net(nnx.Module, SafeMixin):" in conversion.code


def test_what_a_hub_mixin_offers_is_named_with_its_bases(site):
    hub = what_is("helperpkg.TorchMixin")
    assert hub.offers == ("save_pretrained", "from_pretrained", "push_to_hub")
    assert any("save_pretrained calls torch.save()" in h for h in hub.hazards)


def test_a_class_with_forward_deriving_from_a_package_porter_cannot_read_is_an_error(site, tmp_path):
    source = """\
        import torch.nn as nn
        from notinstalled.layers import Base


        class Encoder(Base):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(2, 2)

            def forward(self, x):
                return self.fc(x)


        class Config(Base):  # no forward: nothing says it is a module
            size = 3
        """
    [error] = errors(convert(tmp_path, source))
    assert (error.line, error.col) == (5, 15)
    assert "Encoder derives from Base (notinstalled.layers.Base), which porter cannot read (no installed package " \
           "notinstalled found), and defines forward" in error.message
    assert not errors(porter.convert_source(textwrap.dedent(source)))  # no file: the name may be of its tree


def test_a_plain_class_with_a_mixin_is_none_of_porters_business(site, tmp_path):
    conversion = convert(tmp_path, """\
        import torch
        from helperpkg import HubMixin


        class Config(HubMixin):
            size = torch.float32
        """)
    assert not [d for d in conversion.diagnostics if d.code in ("PT013", "PT014")]


def test_torch_and_in_tree_classes_give_no_error(site, tmp_path):
    """The project's own package `helperpkg` shadows the installed one: its names are converted with the tree."""
    write(tmp_path / "project", {"helperpkg/__init__.py": "", "helperpkg/layers.py": HELPER["layers.py"]})
    source = """\
        import torch.nn as nn
        from helperpkg.layers import Block
        from .blocks import Other


        class Net(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.seq = nn.Sequential(nn.Linear(d, d))
                self.block = Block(d)
                self.other = Other(d)
        """
    assert not errors(convert(tmp_path, source, "helperpkg/model.py"))
    assert not errors(convert(tmp_path, source, "model.py"))  # beside the package: a script of the tree


def test_an_in_tree_module_class_known_from_the_tree_is_not_an_outside_one(site, tmp_path):
    """A tree conversion tells the file Block is a module class of the tree: not looked up outside."""
    write(tmp_path / "proj", {
        "blocks.py": "import torch.nn as nn\n\nclass Block(nn.Module):\n    def __init__(self, d):\n"
                     "        super().__init__()\n        self.fc = nn.Linear(d, d)\n",
        "net.py": "import torch.nn as nn\nfrom helperpkg import PublicBlock as Block\nfrom blocks import Block\n\n\n"
                  "class Net(nn.Module):\n    def __init__(self, d):\n        super().__init__()\n"
                  "        self.b = Block(d)\n",
    })
    results = tree.convert_tree(tree.plan(tmp_path / "proj").tasks, root_name="proj", jobs=1)
    assert not [d for r in results for d in r.diagnostics if d.code == "PT013"]


# ------------------------------------------------------------------------------------------ real torchvision
TORCHVISION = Path.home() / ".cache" / "porter-corpus" / "unpacked" / "torchvision-0.28.0"


@pytest.fixture
def torchvision_source(monkeypatch):
    """torchvision's source: installed, else the unpacked copy of the corpus (never downloaded here)."""
    outside.clear_cache()
    if not outside.is_installed("torchvision"):
        if not (TORCHVISION / "torchvision" / "__init__.py").is_file():
            pytest.skip("torchvision is neither installed nor unpacked under ~/.cache/porter-corpus")
        monkeypatch.syspath_prepend(str(TORCHVISION))
        outside.clear_cache()
    imported = "torchvision" in sys.modules
    yield
    outside.clear_cache()
    assert imported or "torchvision" not in sys.modules  # read, never imported


def test_torchvision_names(torchvision_source):
    assert what_is("torchvision.models.resnet.ResNet").kind == MODULE
    assert what_is("torchvision.models.ResNet").where == "torchvision.models.resnet.ResNet"
    assert what_is("torchvision.models.resnet18").kind == FACTORY
    assert what_is("torchvision.ops.misc.Conv2dNormActivation").kind == MODULE
    assert what_is("torchvision.transforms.Compose").kind == CLASS


def test_a_segmentation_style_encoder_on_torchvision_is_reported(torchvision_source, tmp_path):
    conversion = convert(tmp_path, """\
        import torch.nn as nn
        import torchvision
        from torchvision.models.resnet import ResNet, BasicBlock


        class EncoderMixin:
            def out_channels(self):
                return [3, 64]


        class ResNetEncoder(ResNet, EncoderMixin):
            def __init__(self, depth=5):
                super().__init__(BasicBlock, [2, 2, 2, 2])
                self.depth = depth


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = torchvision.models.resnet18()
                self.head = nn.Linear(512, 10)
        """)
    found = {(e.line, e.message.split(" (")[0]) for e in errors(conversion)}
    assert found == {(11, "ResNetEncoder derives from ResNet"),
                     (20, "the module class Net calls torchvision.models.resnet18")}


def test_torch_only_code_beside_torchvision_gives_no_error(torchvision_source, tmp_path):
    conversion = convert(tmp_path, """\
        import torch.nn as nn
        from torchvision import transforms


        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 4)


        preprocess = transforms.Compose([transforms.ToTensor()])
        """)
    assert not errors(conversion) and not errors(conversion, "PT014")


# ------------------------------------------------------------------------------------------ mixins of the tree
HUB = """\
    import json

    import torch


    class HubMixin:
        \"\"\"As huggingface_hub's: __new__ records the init arguments, saving goes through torch.\"\"\"

        def __new__(cls, *args, **kwargs):
            instance = super().__new__(cls)
            instance._hub_config = dict(kwargs)
            return instance

        def save_pretrained(self, path):
            torch.save(self.state_dict(), path)

        @classmethod
        def from_pretrained(cls, path, **kwargs):
            model = cls(**kwargs)
            model.load_state_dict(torch.load(path))
            return model


    class Describe:
        def describe(self):
            return f"{type(self).__name__}: {json.dumps(self.sizes())}"
    """

NET = """\
    import torch.nn as nn
    {imports}


    class Net(nn.Module, HubMixin, Describe):
        def __init__(self, d=4):
            super().__init__()
            self.fc = nn.Linear(d, 2 * d)

        def sizes(self):
            return [self.fc.in_features]

        def forward(self, x):
            return self.fc(x).relu()
    """


def _exec(code: str, name: str) -> dict:
    namespace = {"__name__": name}
    exec(compile(code, f"<{name}>", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("where", ["this file", "another file"])
def test_a_mixin_of_the_tree_is_dropped_or_kept_by_what_it_does_and_the_module_runs(tmp_path, where, monkeypatch):
    """HubMixin (its __new__ sets attributes, it saves through torch) goes with a warning naming what is lost;
    Describe (plain Python) stays and works on the nnx module; the converted Net builds and computes as torch's."""
    import numpy as np
    import torch
    from flax import nnx

    from porter.check.equivalence import check_equivalence

    project = tmp_path / "project"
    if where == "this file":
        source = textwrap.dedent(HUB) + textwrap.dedent(NET.format(imports=""))
        hub = {}
    else:
        source = textwrap.dedent(NET.format(imports="from hub import Describe, HubMixin"))
        write(project, {"hub.py": HUB})
        hub = _exec(textwrap.dedent(HUB), "hub")
    conversion = convert(tmp_path, source)
    [warning] = [d for d in conversion.diagnostics if d.code == "PT014"]
    line = 5 if where == "another file" else textwrap.dedent(HUB).count("\n") + 5
    assert (warning.line, warning.severity.value) == (line, "warning")
    assert "Net also derives from HubMixin" in warning.message
    assert "__new__ sets attributes" in warning.message
    assert warning.message.endswith("it loses save_pretrained/from_pretrained of HubMixin")
    assert "class Net(nnx.Module, Describe):" in conversion.code
    assert not [d for d in conversion.diagnostics if d.code == "PT013"]

    if hub:  # both import hub: the original one (porter converts it to the same but for its torch calls)
        monkeypatch.setitem(sys.modules, "hub", type(sys)("hub"))
        sys.modules["hub"].__dict__.update(hub)
    torch_side, converted = _exec(source, "torch_net"), _exec(conversion.code, "nnx_net")
    torch.manual_seed(0)
    original = torch_side["Net"]().eval()
    assert original._hub_config == {} and original.describe() == "Net: [4]"
    model = converted["Net"](rngs=nnx.Rngs(0))
    assert model.describe() == "Net: [4]"
    assert not hasattr(model, "save_pretrained")
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    report = check_equivalence(original, model, x)
    assert report.passed, report


def test_a_base_of_the_tree_porter_cannot_follow_is_kept_silently(tmp_path):
    """A base imported from a package outside the tree, or with a base porter cannot read, may be anything."""
    write(tmp_path / "project", {"bases.py": """\
        from somewhere import Thing


        class Mixed(Thing):
            def __new__(cls, *args, **kwargs):
                instance = super().__new__(cls)
                instance.x = 1
                return instance
        """})
    conversion = convert(tmp_path, """\
        import torch.nn as nn
        from bases import Mixed


        class Net(nn.Module, Mixed):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(2, 2)
        """)
    assert not [d for d in conversion.diagnostics if d.code in ("PT013", "PT014")]
    assert "class Net(nnx.Module, Mixed):" in conversion.code


def test_a_use_of_what_a_dropped_mixin_gave_is_an_error(tmp_path):
    conversion = convert(tmp_path, textwrap.dedent(HUB) + textwrap.dedent("""\
        import torch.nn as nn


        class Net(nn.Module, HubMixin):
            def __init__(self, d=4):
                super().__init__()
                self.fc = nn.Linear(d, d)

            def checkpoint(self, path):
                self.save_pretrained(path)
        """))
    [error] = [d for d in conversion.diagnostics if d.code == "PT006"]
    assert error.line == textwrap.dedent(HUB).count("\n") + 10
    assert error.message.startswith("self.save_pretrained is HubMixin's, dropped from Net's bases (PT014)")


def test_a_plain_base_giving_the_forward_is_not_dropped_and_is_an_error(tmp_path):
    """vit-pytorch's DistillMixin holds the forward of DistillableViT(DistillMixin, ViT): dropping it (it calls
    torch) would silently run ViT's; keeping it runs ViT's too (a plain class's forward is no __call__)."""
    conversion = convert(tmp_path, """\
        import torch
        import torch.nn as nn


        class DistillMixin:
            def forward(self, x):
                return torch.cat((self.fc(x), x), dim=1)


        class Base(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(2, 2)

            def forward(self, x):
                return self.fc(x)


        class Distillable(DistillMixin, Base):
            pass
        """)
    assert "class Distillable(DistillMixin, Base):" in conversion.code
    [error] = [d for d in conversion.diagnostics if d.code == "PT006"]
    assert (error.line, error.col) == (19, 19) and "takes its forward from DistillMixin" in error.message
    assert not [d for d in conversion.diagnostics if d.code == "PT014"]


def test_a_mixin_of_the_tree_on_an_installed_mixin_is_dropped_and_the_new_of_the_module_hands_on_only_cls(
        site, tmp_path, monkeypatch):
    """segmentation_models_pytorch's shape: `class SMPHubMixin(PyTorchModelHubMixin)` in the tree, the hub's mixin
    setting attributes in `__new__`, and the model's own `__new__` handing its arguments to it (was: kept without
    a word; the converted model failed with "'Unet' object has no attribute '_pytree__state'")."""
    import numpy as np
    import torch
    from flax import nnx

    from porter.check.equivalence import check_equivalence

    write(tmp_path / "project", {"hub_mixin.py": """\
        from helperpkg import HubMixin


        class SMPHubMixin(HubMixin):
            def describe(self):
                return "smp"
        """})
    source = """\
        import torch.nn as nn
        from hub_mixin import SMPHubMixin


        class Net(nn.Module, SMPHubMixin):
            def __new__(cls, *args, **kwargs):
                instance = super().__new__(cls, *args, **kwargs)
                return instance

            def __init__(self, d=4):
                super().__init__()
                self.fc = nn.Linear(d, d)

            def forward(self, x):
                return self.fc(x)
        """
    conversion = convert(tmp_path, source)
    [warning] = [d for d in conversion.diagnostics if d.code == "PT014"]
    assert (warning.line, warning.severity.value) == (5, "warning")
    assert "Net also derives from SMPHubMixin (hub_mixin)" in warning.message
    assert "__new__ sets attributes" in warning.message and "describe" in warning.message
    assert "class Net(nnx.Module):" in conversion.code
    assert "instance = super().__new__(cls)\n" in conversion.code

    class SMPHubMixin:  # what `from hub_mixin import SMPHubMixin` gives both sides (helperpkg stays unimported)
        def __new__(cls, *args, **kwargs):
            return super().__new__(cls)

    monkeypatch.setitem(sys.modules, "hub_mixin", type(sys)("hub_mixin"))
    sys.modules["hub_mixin"].SMPHubMixin = SMPHubMixin
    torch_side, converted = _exec(textwrap.dedent(source), "torch_net"), _exec(conversion.code, "nnx_net")
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    report = check_equivalence(torch_side["Net"]().eval(), converted["Net"](rngs=nnx.Rngs(0)), x)
    assert report.passed, report
