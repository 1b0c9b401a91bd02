"""Subclasses of nn.Sequential and nn.ModuleDict that name their layers (torchvision's densenet `_DenseBlock`,
regnet's `AnyStage` and `BottleneckTransform`): `self.add_module(name, layer)`, `self.norm = ...` in the
constructor, `super().__init__(OrderedDict)`. They derive from the emitted TorchSequential / TorchModuleDict
(porter/emitted.py), checked against torch in eval and train mode. Before: nnx.Sequential subclasses that
never ran their layers (no diagnostic for `self.norm = ...` nor for the OrderedDict), add_module reported, the
ModuleDict subclass left torch with a fixed `nnx.Rngs(0)` passed inside it, `self.features.add_module(...)` on
an `nn.Sequential(OrderedDict(...))` reported."""

import pytest
import torch
from flax import nnx

from porter import convert_source
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import import_file

MODEL = '''from collections import OrderedDict
import torch
import torch.nn as nn


class T(nn.Sequential):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(c, c, kernel_size=1, bias=False)


class S(nn.Sequential):
    def __init__(self, c, depth):
        super().__init__()
        for i in range(depth):
            self.add_module(f"block-{i}", nn.Conv2d(c, c, 3, padding=1))


class B(nn.Sequential):
    def __init__(self, c):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["a"] = nn.Conv2d(c, c, 1)
        layers["b"] = nn.ReLU()
        super().__init__(layers)


class D(nn.ModuleDict):
    def __init__(self, c, n):
        super().__init__()
        for i in range(n):
            self.add_module("layer%d" % (i + 1), nn.Conv2d(c * (i + 1), c, 1))

    def forward(self, x):
        features = [x]
        for name, layer in self.items():
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Dense(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([("conv0", nn.Conv2d(3, 4, 3, padding=1)), ("relu0", nn.ReLU())]))
        for i in range(2):
            self.features.add_module("block%d" % (i + 1), D(4, 1))
            self.features.add_module("conv%d" % (i + 1), nn.Conv2d(8, 4, 1))
        self.features.add_module("norm5", nn.BatchNorm2d(4))

    def forward(self, x):
        return self.features(x)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.t = T(3)
        self.s = S(3, 2)
        self.b = B(3)
        self.d = D(3, 2)
        self.dense = Dense()

    def forward(self, x):
        return self.dense(self.d(self.b(self.s(self.t(x))))[:, :3])
'''


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("containers")
    conversion = convert_source(MODEL, filename="net.py")
    (directory / "torch_net.py").write_text(MODEL)
    (directory / "jax_net.py").write_text(conversion.code)
    return conversion, import_file(directory / "torch_net.py"), import_file(directory / "jax_net.py")


def test_containers_naming_their_layers_derive_from_the_emitted_bases(converted):
    conversion, _, _ = converted
    assert [d for d in conversion.diagnostics if d.severity.name == "ERROR"] == []
    for name in "TSB":
        assert f"class {name}(TorchSequential):" in conversion.code
    assert "class D(TorchModuleDict):" in conversion.code
    assert 'setattr(self, f"block-{i}", ChannelsFirstConv(' in conversion.code
    assert "self.d = D(3, 2, rngs=rngs)" in conversion.code
    # densenet's features: nn.Sequential(OrderedDict(...)) given more layers by add_module
    assert 'setattr(self.features, "norm5", TorchBatchNorm(' in conversion.code


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_containers_naming_their_layers_match_torch(converted, mode):
    _, torch_module, jax_module = converted
    torch.manual_seed(0)
    original = torch_module.Net()
    report = check_equivalence(original, jax_module.Net(rngs=nnx.Rngs(0)), torch.randn(2, 3, 8, 8), mode=mode)
    assert report.passed, report.format()


OVERLOADED = '''
import torch
import torch.nn as nn
from torch import Tensor


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(c, c)

    @torch.jit._overload_method  # noqa: F811
    def forward(self, input: list[Tensor]) -> Tensor:  # noqa: F811
        pass

    @torch.jit._overload_method  # noqa: F811
    def forward(self, input: Tensor) -> Tensor:  # noqa: F811
        pass

    def forward(self, input):  # noqa: F811
        if isinstance(input, Tensor):
            input = [input]
        return self.fc(torch.cat(input, 1))
'''


def test_a_method_defined_again_is_judged_by_its_last_definition(tmp_path):
    """densenet's _DenseLayer: two `pass` stubs of forward (torchscript overloads), then forward itself. The stubs
    were taken for a weight initialisation method and all three forwards removed (PT005 said so, wrongly)."""
    conversion = convert_source(OVERLOADED, filename="layer.py")
    assert conversion.code.count("def __call__(") == 3
    assert not [d for d in conversion.diagnostics if d.code == "PT005"]
    (tmp_path / "torch_layer.py").write_text(OVERLOADED)
    (tmp_path / "jax_layer.py").write_text(conversion.code)
    torch.manual_seed(0)
    original = import_file(tmp_path / "torch_layer.py").Layer(4)
    report = check_equivalence(original, import_file(tmp_path / "jax_layer.py").Layer(4, rngs=nnx.Rngs(0)),
                               torch.randn(2, 4))
    assert report.passed, report.format()


def assert_matches_torch(tmp_path, source, code, cls, args, input_shape, mode):
    """The original `source` and its conversion `code`, `cls(*args)` built on each side, pass check_equivalence."""
    (tmp_path / "torch_side.py").write_text(source)
    (tmp_path / "jax_side.py").write_text(code)
    torch.manual_seed(0)
    original = getattr(import_file(tmp_path / "torch_side.py"), cls)(*args)
    converted = getattr(import_file(tmp_path / "jax_side.py"), cls)(*args, rngs=nnx.Rngs(0))
    report = check_equivalence(original, converted, torch.randn(*input_shape), mode=mode)
    assert report.passed, report.format()


SELF_AS_SEQUENCE = '''import torch
import torch.nn as nn
import torch.nn.functional as F


class Pooling(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        x = self[0](x)
        for mod in list(self)[1:]:
            x = mod(x)
        assert len(self) == 3
        return F.interpolate(x, size=size, mode="nearest")
'''


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_sequential_running_its_own_layers_reads_them_from_layers_and_matches_torch(tmp_path, mode):
    """segmentation_models_pytorch's ASPPPooling: `for mod in self: x = mod(x)` (was: nnx.Sequential is no
    sequence, "'ASPPPooling' object is not iterable" when run, and no diagnostic)."""
    conversion = convert_source(SELF_AS_SEQUENCE, filename="pool.py")
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"]
    assert "x = self.layers[0](x)\n        for mod in list(self.layers)[1:]:" in conversion.code
    assert "assert len(self.layers) == 3" in conversion.code
    assert_matches_torch(tmp_path, SELF_AS_SEQUENCE, conversion.code, "Pooling", (3, 4), (2, 3, 5, 5), mode)


SEQUENCE_ATTRIBUTE = '''import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.stem = self.features[:3]
        self.out_indexes = [i for i, module in enumerate(self.features) if isinstance(module, nn.ReLU)]

    def forward(self, x):
        y = self.stem(x)
        for module in list(self.features)[3:]:
            y = module(y)
        return y + self.features[-1](self.stem(x)) * len(self.features)
'''


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_an_nn_sequential_attribute_read_as_a_sequence_reads_its_layers_and_matches_torch(tmp_path, mode):
    """`enumerate(self.features)`, `self.features[-1]`, `self.features[:3]` (a Sequential of those layers, in torch
    too), `len(self.features)`: VGG-style encoders (smp's). Was: nnx.Sequential is no sequence, no diagnostic."""
    conversion = convert_source(SEQUENCE_ATTRIBUTE, filename="net.py")
    assert "self.stem = nnx.Sequential(*self.features.layers[:3])" in conversion.code
    assert "for module in list(self.features.layers)[3:]:" in conversion.code
    assert "self.features.layers[-1](self.stem(x)) * len(self.features.layers)" in conversion.code
    assert_matches_torch(tmp_path, SEQUENCE_ATTRIBUTE, conversion.code, "Net", (), (2, 3, 6, 6), mode)


INHERITED_SEQUENCE = '''import torch
import torch.nn as nn


def make_layers():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))


class VGG(nn.Module):
    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, x):
        return self.features(x)


class Encoder(VGG):
    def __init__(self):
        super().__init__(make_layers())
        self.out_indexes = [i for i, module in enumerate(self.features) if i % 2 == 0]

    def forward(self, x):
        features = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self.out_indexes:
                features.append(x)
        return features[-1] + self.features[-1](features[0]) * len(self.features)
'''


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_sequence_a_base_class_built_is_read_through_layers_of_and_matches_torch(tmp_path, mode):
    """smp's VGG encoder iterates `self.features`, which torchvision's VGG built from what make_layers returned:
    the converting file cannot tell it is an nn.Sequential; layers_of() looks when it runs (was: silent)."""
    conversion = convert_source(INHERITED_SEQUENCE, filename="net.py")
    assert "for i, module in enumerate(layers_of(self.features)):" in conversion.code
    assert "layers_of(self.features)[-1](features[0]) * len(layers_of(self.features))" in conversion.code
    assert_matches_torch(tmp_path, INHERITED_SEQUENCE, conversion.code, "Encoder", (), (2, 3, 6, 6), mode)
