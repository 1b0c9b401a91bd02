"""Patterns common in real model code (torchvision-style backbones), each in a small self-written
fixture: layer constructors passed as values (`norm_layer: Callable[..., nn.Module]`, `block: type[Block]`)
and the calls that build layers from them; MaxPool2d's ceil_mode."""

import math
import textwrap

import numpy as np
import torch
from flax import nnx

import porter
from porter import convert_source
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import import_file, takes_keyword


def convert(source: str):
    return convert_source(textwrap.dedent(source), filename="m.py")


def codes(conversion) -> list[str]:
    return [d.code for d in conversion.diagnostics]


def both_nets(tmp_path, source: str, converted: str):
    """`Net()` of the torch source (eval mode, seeded) and `Net(rngs=...)` of its conversion (`Net()` where it
    builds nothing random: porter/convert/rngs_free.py)."""
    (tmp_path / "torch_net.py").write_text(source)
    (tmp_path / "jax_net.py").write_text(converted)
    torch.manual_seed(0)
    converted_net = import_file(tmp_path / "jax_net.py").Net
    rngs = {"rngs": nnx.Rngs(0)} if takes_keyword(converted_net, "rngs") else {}
    return import_file(tmp_path / "torch_net.py").Net().eval(), converted_net(**rngs)


# A backbone in the style of the classic ones: the norm layer is a constructor argument (a module
# class or a partial of one), the block class is a parameter, a method builds the stages from an
# attribute holding the norm layer.
LAYER_VALUES_MODEL = '''
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn


class Affine(nn.Module):
    def __init__(self, c: int, scale: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((c, 1, 1), scale))
        self.bias = nn.Parameter(torch.zeros(c, 1, 1))

    def forward(self, x):
        return x * self.weight + self.bias


class Block(nn.Module):
    def __init__(self, c: int, norm_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        if norm_layer is None:
            norm_layer = Affine
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.norm = norm_layer(c)

    def forward(self, x):
        return torch.relu(self.norm(self.conv(x))) + x


class Net(nn.Module):
    def __init__(self, block: type[Block], width: int = 4, norm_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        if norm_layer is None:
            norm_layer = partial(Affine, scale=0.5)
        self._norm_layer = norm_layer
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stages = self._make_stage(block, width, 2)
        self.head = nn.Linear(width, 5)

    def _make_stage(self, block: type[Block], c: int, n: int) -> nn.Sequential:
        norm_layer = self._norm_layer
        return nn.Sequential(*[block(c, norm_layer) for _ in range(n)])

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))
'''


def test_calls_of_names_holding_layer_constructors_get_rngs():
    c = convert_source(LAYER_VALUES_MODEL, filename="net.py")
    assert codes(c) == [], c.diagnostics
    code = c.code
    # a parameter annotated Callable[..., nn.Module], a local, a type[Block] parameter, an attribute's copy
    assert "self.norm = norm_layer(c, rngs=rngs)" in code
    assert "return nnx.Sequential(*[block(c, norm_layer, rngs=rngs) for _ in range(n)])" in code
    assert "def _make_stage(self, block: type[Block], c: int, n: int, *, rngs: nnx.Rngs) -> nnx.Sequential:" in code
    assert "self.stages = self._make_stage(block, width, 2, rngs=rngs)" in code
    assert "norm_layer = partial(Affine, scale=0.5)" in code  # a converted class: passed on as it is
    assert "Optional[Callable[..., nnx.Module]]" in code


def test_calls_of_names_holding_layer_constructors_match_torch(tmp_path):

    conversion = convert_source(LAYER_VALUES_MODEL, filename="net.py")
    (tmp_path / "torch_net.py").write_text(LAYER_VALUES_MODEL)
    (tmp_path / "jax_net.py").write_text(conversion.code)
    torch.manual_seed(0)
    torch_module = import_file(tmp_path / "torch_net.py")
    torch_model = torch_module.Net(torch_module.Block).eval()
    with torch.no_grad():
        for p in torch_model.parameters():
            p.uniform_(-0.5, 0.5)
    jax_module = import_file(tmp_path / "jax_net.py")
    flax_model = jax_module.Net(jax_module.Block, rngs=nnx.Rngs(0))
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()


# The same backbone with torch's layer classes as the values: nn.BatchNorm2d, a partial of it, nn.ReLU/nn.SiLU.
LAYER_CLASS_VALUES_MODEL = '''
from functools import partial
from typing import Callable, Optional

import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, c: int, norm_layer: Optional[Callable[..., nn.Module]] = None, act_layer=nn.ReLU):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = norm_layer(c)
        self.act = act_layer(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x))) + x


class Net(nn.Module):
    def __init__(self, block: type[Block], width: int = 4, norm_layer: Optional[Callable[..., nn.Module]] = None):
        super().__init__()
        if norm_layer is None:
            norm_layer = partial(nn.BatchNorm2d, eps=1e-3, momentum=0.01)
        self._norm_layer = norm_layer
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stages = self._make_stage(block, width, 2)
        self.head = nn.Linear(width, 5)

    def _make_stage(self, block: type[Block], c: int, n: int) -> nn.Sequential:
        norm_layer = self._norm_layer
        return nn.Sequential(*[block(c, norm_layer, act_layer=nn.SiLU) for _ in range(n)])

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))
'''


def test_layer_classes_passed_as_values_build_converted_layers_with_rngs():
    c = convert_source(LAYER_CLASS_VALUES_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.code != "PT007"], c.diagnostics
    code = c.code
    # the class as a value: a function with torch's arguments and rngs, building the converted layer
    # (a layer: the function generated from its rule, porter/convert/layer_functions.py, taking every argument)
    assert "norm_layer = torch_batchnorm2d" in code
    assert "def torch_batchnorm2d(num_features, eps=1e-05, momentum=0.1, affine=True, track_running_stats=True," \
           in code
    assert "act_layer=lambda inplace=False, *, rngs=None: jax.nn.relu" in code
    assert "norm_layer = partial(torch_batchnorm2d, eps=1e-3, momentum=0.01)" in code
    # calls of names holding layer constructors get rngs: a parameter, a local, an attribute's copy
    assert "self.bn = norm_layer(c, rngs=rngs)" in code
    assert "self.act = act_layer(inplace=True, rngs=rngs)" in code
    assert "block(c, norm_layer, act_layer=lambda inplace=False, *, rngs=None: jax.nn.silu, rngs=rngs)" in code
    assert "def _make_stage(self, block: type[Block], c: int, n: int, *, rngs: nnx.Rngs) -> nnx.Sequential:" in code
    assert "self.stages = self._make_stage(block, width, 2, rngs=rngs)" in code
    assert "Optional[Callable[..., nnx.Module]]" in code and "torch." not in code.split("class Block")[1]


def test_layer_classes_passed_as_values_match_torch(tmp_path):

    conversion = convert_source(LAYER_CLASS_VALUES_MODEL, filename="net.py")
    (tmp_path / "torch_net.py").write_text(LAYER_CLASS_VALUES_MODEL)
    (tmp_path / "jax_net.py").write_text(conversion.code)
    torch.manual_seed(0)
    torch_module = import_file(tmp_path / "torch_net.py")
    torch_model = torch_module.Net(torch_module.Block).eval()
    with torch.no_grad():
        for m in torch_model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    jax_module = import_file(tmp_path / "jax_net.py")
    flax_model = jax_module.Net(jax_module.Block, rngs=nnx.Rngs(0))
    assert flax_model.stages.layers[0].bn.epsilon == 1e-3  # the partial's eps reached the layer
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()


def test_layer_class_value_outside_layer_building_code_stays_reported():
    # a function that builds nothing gets no rngs: the class it hands on is left and reported
    c = convert("""
        import torch.nn as nn

        def pick(norm_layer=nn.BatchNorm2d):
            return norm_layer
        """)
    assert codes(c) == ["PT003"] and "norm_layer=nn.BatchNorm2d" in c.code


def test_isinstance_of_a_layer_class_is_left_and_reported():
    c = convert("""
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(2, 2)

            def is_linear(self, m):
                return isinstance(m, (nn.Linear, nn.Conv2d))
        """)
    assert "isinstance(m, (nn.Linear, nn.Conv2d))" in c.code
    assert codes(c) == ["PT003", "PT003"]


def test_layer_class_in_annotations_becomes_nnx_types():
    c = convert("""
        import torch.nn as nn

        def conv3x3(c: int) -> nn.Conv2d:
            return nn.Conv2d(c, c, 3, padding=1)

        def stage(c: int, first: nn.Module) -> nn.Sequential:
            return nn.Sequential(first, conv3x3(c))
        """)
    assert "def conv3x3(c: int, *, rngs: nnx.Rngs) -> nnx.Module:" in c.code
    assert "def stage(c: int, first: nnx.Module, *, rngs: nnx.Rngs) -> nnx.Sequential:" in c.code
    assert codes(c) == [] and "import torch" not in c.code


def test_max_pool_ceil_mode_converts():
    c = convert("""
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.pool = nn.MaxPool2d(3, stride=2, ceil_mode=True)

            def forward(self, x):
                return self.pool(x)
        """)
    assert "partial(max_pool_nchw, window_shape=(3, 3), strides=(2, 2), ceil_mode=True)" in c.code
    assert codes(c) == []


# Weight initialisation in the constructor (torchvision's and timm's style): loops over self.modules(),
# self.apply(self._init_weights), init-only methods, a parameter re-initialised after it is built.
INIT_MODEL = '''
import torch
import torch.nn as nn
from torch.nn.init import trunc_normal_


class Net(nn.Module):
    def __init__(self, init_weights=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.pos = nn.Parameter(torch.zeros(1, 2))
        trunc_normal_(self.pos, std=.02)
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    bound = 1.0 / m.num_features
                    nn.init.constant_(m.weight, bound)
                    m.bias.data.zero_()
        self.apply(self._init_weights)
        self.reset_parameters()

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)

    def reset_parameters(self):
        """Resets."""
        nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3))) + self.pos
'''


def test_weight_initialisation_in_the_constructor_is_removed_and_reported(tmp_path):

    c = convert_source(INIT_MODEL, filename="net.py")
    assert [(d.code, d.line) for d in c.diagnostics] == [
        ("PT005", 14), ("PT005", 15), ("PT005", 25), ("PT005", 26), ("PT005", 28), ("PT005", 32)]
    assert "(lines 15-24)" in c.diagnostics[1].message and "method _init_weights" in c.diagnostics[4].message
    body = c.code[c.code.index("class Net"):]
    assert "import torch" not in c.code and "nn." not in body and "modules()" not in body and "_init_weights" not in body
    torch_model, flax_model = both_nets(tmp_path, INIT_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 3, 6, 6))
    assert report.passed, report.format()


def test_constructor_loops_that_do_more_than_initialise_stay():
    c = convert("""
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)
                for m in self.modules():
                    nn.init.zeros_(m.bias)
                    m.tag = "x"

            def forward(self, x):
                nn.init.zeros_(self.fc.bias)
                return self.fc(x)
        """)
    assert "for m in self.modules():" in c.code and c.code.count("nn.init.zeros_") == 2
    assert "PT005" not in codes(c) and codes(c).count("PT003") == 2


SEQUENTIAL_SUBCLASS_MODEL = '''
from typing import Callable, Optional

import torch
import torch.nn as nn


class ConvNormAct(torch.nn.Sequential):
    def __init__(self, cin: int, cout: int, norm_layer: Optional[Callable[..., nn.Module]] = nn.BatchNorm2d,
                 activation_layer: Optional[Callable[..., nn.Module]] = nn.ReLU, inplace: Optional[bool] = True):
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=norm_layer is None)]
        if norm_layer is not None:
            layers.append(norm_layer(cout))
        if activation_layer is not None:
            params = {} if inplace is None else {"inplace": inplace}
            layers.append(activation_layer(**params))
        super().__init__(*layers)
        self.out_channels = cout


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = ConvNormAct(3, 4)
        self.body = nn.Sequential(ConvNormAct(4, 4, activation_layer=nn.Hardswish), ConvNormAct(4, 6, norm_layer=None))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.body(self.stem(x)).mean((2, 3)))
'''


def test_subclasses_of_sequential_become_nnx_sequential_subclasses(tmp_path):
    # torchvision's Conv2dNormActivation: layers built in the constructor, handed to super().__init__(*layers)

    c = convert_source(SEQUENTIAL_SUBCLASS_MODEL, filename="net.py")
    assert set(codes(c)) == {"PT007"}, c.diagnostics  # the layer classes passed as values
    assert "class ConvNormAct(nnx.Sequential):" in c.code and "super().__init__(*layers)" in c.code
    torch_model, flax_model = both_nets(tmp_path, SEQUENTIAL_SUBCLASS_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 3, 8, 8))
    assert report.passed, report.format()


SUBCLASS_CHAIN_MODEL = '''
import torch.nn as nn


class Base(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(c, c)

    def forward(self, x):
        return self.fc(x)


class Head(Base):
    def __init__(self):
        super().__init__(3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        return self.out(super().forward(x).relu())


class Stack(nn.Sequential):
    def __init__(self, c):
        super().__init__(nn.Linear(c, c), nn.Tanh())


class Body(Stack):
    def __init__(self):
        super().__init__(3)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = Body()
        self.head = Head()

    def forward(self, x):
        return self.head(self.body(x))
'''


def test_a_subclass_of_a_module_class_keeps_its_base_constructor_call(tmp_path):
    # dropping super().__init__(3) (right under nn.Module) would lose the layers the base builds

    c = convert_source(SUBCLASS_CHAIN_MODEL, filename="net.py")
    assert c.code.count("super().__init__(3, rngs=rngs)") == 2 and "super().__init__(nnx.Linear(c, c" in c.code
    torch_model, flax_model = both_nets(tmp_path, SUBCLASS_CHAIN_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(4, 3))
    assert report.passed, report.format()


def test_a_choice_between_layer_classes_stays_a_choice():
    # the constructor functions are parenthesised: a bare lambda would swallow the conditional
    # (torchvision mobilenet_v3: `nn.Hardswish if cnf.use_hs else nn.ReLU`)
    c = convert("""
        import torch.nn as nn

        class Block(nn.Module):
            def __init__(self, hs, c):
                super().__init__()
                act = nn.Hardswish if hs else nn.ReLU
                norm = nn.BatchNorm1d if hs else nn.LayerNorm
                self.act = act()
                self.norm = norm(c)
        """)
    assert "act = (lambda inplace=False, *, rngs=None: jax.nn.hard_swish) if hs else (lambda" in c.code
    assert "self.act = act(rngs=rngs)" in c.code and "self.norm = norm(c, rngs=rngs)" in c.code
    namespace: dict = {}
    exec(compile(c.code, "block.py", "exec"), namespace)
    x = np.array([-1.0, 2.0], np.float32)
    block = namespace["Block"](False, 2, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(np.asarray(block.act(x)), torch.relu(torch.from_numpy(x)).numpy())
    assert type(block.norm).__name__ == "LayerNorm"


TORCH_LAYER_SUBCLASS_MODEL = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class LayerNorm2d(nn.LayerNorm):  # torchvision's convnext: no constructor of its own
    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class StdConv2d(nn.Conv2d):  # timm's weight-standardised convolution
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False, eps=1e-6):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.eps = eps

    def forward(self, x):
        weight = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                              training=True, momentum=0., eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class GroupNorm1(nn.GroupNorm):  # timm's GroupNorm1: one group
    def __init__(self, num_channels, **kwargs):
        super().__init__(1, num_channels, **kwargs)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = StdConv2d(3, 8, 3, padding=1, bias=True)
        self.norm = LayerNorm2d(8, eps=1e-6)
        self.gn = GroupNorm1(8)

    def forward(self, x):
        return self.gn(self.norm(self.conv(x)))
'''


def test_subclasses_of_torch_layers_keep_the_layers_attributes(tmp_path):
    # their own forward reads torch's attributes (self.weight, self.eps, self.stride ...): the base is an
    # emitted class that keeps them, in torch's layout, so the state_dict loads as it is

    c = convert_source(TORCH_LAYER_SUBCLASS_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name != "INFO"], c.diagnostics
    for line in ("class LayerNorm2d(TorchLayerNorm):", "class StdConv2d(TorchConv2d):",
                 "class GroupNorm1(TorchGroupNorm):", "super().__init__(1, num_channels, **kwargs, rngs=rngs)",
                 "self.norm = LayerNorm2d(8, eps=1e-6, rngs=rngs)"):
        assert line in c.code, line
    torch_model, flax_model = both_nets(tmp_path, TORCH_LAYER_SUBCLASS_MODEL, c.code)
    for module in (torch_model.norm, torch_model.gn):  # not the initial ones and zeros
        torch.nn.init.normal_(module.weight)
        torch.nn.init.normal_(module.bias)
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 3, 8, 8))
    assert report.passed, report.format()


LAYER_PARAMETERS_MODEL = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv2d(2, 4, 3)
        self.ln = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x, idx):
        y = x @ self.fc.weight.T + self.fc.bias
        z = self.emb.weight.sum() + self.conv.weight.mean(dim=(1, 2, 3)).sum() + (self.fc.weight ** 2).sum()
        w = self.ln.weight * self.ln.bias + self.bn.running_mean.sum()
        return y + z + w.sum() + self.emb(idx).sum()


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx):
        return self.head(self.embed(idx))
'''


def test_layer_parameters_read_in_torchs_layout_and_tying_is_converted(tmp_path):
    # `self.fc.weight` is the transposed kernel in flax, `self.emb.weight` its embedding: reads convert
    # exactly; tying a bias-free head to an embedding becomes the embedding's attend (porter/convert/tying.py)

    c = convert_source(LAYER_PARAMETERS_MODEL, filename="net.py")
    assert [(d.code, d.line) for d in c.diagnostics if d.severity.name != "INFO"] == []
    assert "self.head" not in c.code and "return self.embed.attend(self.embed(idx))" in c.code
    for line in ("y = x @ self.fc.kernel[...] + self.fc.bias", "self.emb.embedding.sum()",
                 "jnp.transpose(self.conv.kernel[...], (3, 2, 0, 1))", "(self.fc.kernel[...].T ** 2)",
                 "w = self.ln.scale * self.ln.bias + self.bn.mean.sum()"):
        assert line in c.code, line
    torch_model, flax_model = both_nets(tmp_path, LAYER_PARAMETERS_MODEL, c.code)
    torch.nn.init.normal_(torch_model.ln.weight)
    torch.nn.init.normal_(torch_model.ln.bias)
    torch_model.bn.running_mean.normal_()
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 4), torch.randint(0, 10, (2,)))
    assert report.passed, report.format()


def test_tying_a_nested_layers_parameter_is_converted():
    source = '''
import torch.nn as nn


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(10, 4)))
        self.lm_head = nn.Linear(4, 10, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # nanoGPT's tying

    def forward(self, idx):
        return self.lm_head(self.transformer.wte(idx))
'''
    c = convert_source(source, filename="gpt.py")
    assert [(d.code, d.line) for d in c.diagnostics if d.severity.name != "INFO"] == []
    assert "lm_head = " not in c.code and "# nanoGPT's tying" in c.code
    assert "return self.transformer.wte.attend(self.transformer.wte(idx))" in c.code
    # a head with a bias is not the embedding's attend: still refused
    c = convert_source(source.replace("bias=False", "bias=True"), filename="gpt.py")
    assert [(d.code, d.line) for d in c.diagnostics if d.severity.name != "INFO"] == [("PT006", 10)]
    assert "self.transformer.wte.weight = self.lm_head.weight" in c.code


def test_a_new_tensor_filled_in_place_is_drawn_from_the_modules_rngs():
    # vit: nn.Parameter(torch.empty(1, n, d).normal_(std=0.02)); torch's in-place fill of a fresh tensor
    source = '''
import torch
import torch.nn as nn


class M(nn.Module):
    def __init__(self, n, d):
        super().__init__()
        self.pos = nn.Parameter(torch.empty(1, n, d).normal_(std=0.02))
        self.a = nn.Parameter(torch.zeros(n, d).uniform_(-0.1, 0.1))
        self.b = nn.Parameter(torch.empty(d, dtype=torch.float32).normal_(1.0, 0.5))

    def forward(self, x):
        return x + torch.empty(3).normal_()
'''
    c = convert(source)
    for line in ("self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, n, d)))",
                 "jax.random.uniform(rngs.params(), (n, d), minval=-0.1, maxval=0.1)",
                 "0.5 * jax.random.normal(rngs.params(), d, jnp.float32) + 1.0"):
        assert line in c.code, line
    assert [(d.code, d.line) for d in c.diagnostics] == [("PT004", 14)]  # no key in forward
    namespace: dict = {}
    exec(c.code[:c.code.index("    def __call__")], namespace)
    model = namespace["M"](400, 50, rngs=nnx.Rngs(0))
    assert abs(float(model.pos[...].std()) - 0.02) < 0.001 and abs(float(model.b[...].mean()) - 1.0) < 0.3
    assert -0.1 <= float(model.a[...].min()) < float(model.a[...].max()) <= 0.1


NAMED_SEQUENTIAL_MODEL = '''
from collections import OrderedDict
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        layers = OrderedDict()
        for i in range(12):  # layer_10 after layer_9: the order is the dict's, not the names'
            layers[f"layer_{i}"] = nn.Linear(4, 4)
        self.layers = nn.Sequential(layers)
        self.head = nn.Sequential(OrderedDict([("fc", nn.Linear(4, 2)), ("act", nn.ReLU())]))
        self.plain = nn.Sequential(nn.Linear(2, 2), nn.Tanh())

    def forward(self, x):
        return self.plain(self.head(self.layers(x))) + self.head.fc(self.layers[0](x)).sum()
'''


def test_sequential_of_named_layers_keeps_their_names_and_order(tmp_path):
    # vit's encoder, densenet's features: nn.Sequential(OrderedDict(...)); state keys layers.layer_0.weight

    c = convert_source(NAMED_SEQUENTIAL_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name != "INFO"], c.diagnostics
    assert "self.layers = sequential(layers)" in c.code and "self.plain = nnx.Sequential(" in c.code
    torch_model, flax_model = both_nets(tmp_path, NAMED_SEQUENTIAL_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(3, 4))
    assert report.passed, report.format()


def test_a_config_field_declared_as_a_layer_constructor_builds_layers_with_rngs():
    # torchvision's efficientnet: the block class travels in a config dataclass, called as cnf.block(...)
    source = '''
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Linear(c, c)


@dataclass
class Config:
    c: int
    block: Callable[..., nn.Module]


class Net(nn.Module):
    def __init__(self, configs):
        super().__init__()
        self.blocks = nn.ModuleList([cnf.block(cnf.c) for cnf in configs])
'''
    c = convert(source)
    assert "nnx.List([cnf.block(cnf.c, rngs=rngs) for cnf in configs])" in c.code, c.code
    namespace: dict = {}
    exec(c.code, namespace)
    net = namespace["Net"]([namespace["Config"](3, namespace["Block"])], rngs=nnx.Rngs(0))
    assert net.blocks[0].fc.kernel[...].shape == (3, 3)


def test_an_initialising_branch_with_its_own_local_names_is_removed():
    # vit: `if isinstance(self.conv_proj, nn.Conv2d): fan_in = ...; nn.init.trunc_normal_(..., std=f(fan_in))`
    source = '''
import math
import torch.nn as nn


class M(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, 4, 2)
        self.fc = nn.Linear(4, 4)
        if isinstance(self.conv_proj, nn.Conv2d):
            fan_in = self.conv_proj.in_channels * self.conv_proj.kernel_size[0]
            nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        if True:
            width = 3  # used after the branch: the branch stays
            nn.init.zeros_(self.fc.bias)
        self.width = width
'''
    c = convert(source)
    assert "fan_in" not in c.code and "width = 3" in c.code
    assert [(d.code, d.line) for d in c.diagnostics if d.code in ("PT003", "PT005")] == [("PT005", 11), ("PT003", 16)]


PICKED_INITIALISER_MODEL = '''
import torch.nn as nn

INITIALISERS = dict(normal=nn.init.normal_, xavier=nn.init.xavier_uniform_)


def pick_initialiser(name):
    return INITIALISERS[name], dict(std=0.02) if name == "normal" else dict()


class Net(nn.Module):
    def __init__(self, init="normal"):
        super().__init__()
        self.init = init
        self.fc = nn.Linear(4, 3)
        self.skip = nn.Linear(4, 3) if init else None
        self.reset()

    def reset(self):
        initialise, kwargs = pick_initialiser(self.init)
        initialise(self.fc.weight, **kwargs)
        if self.skip is not None:
            initialise(self.skip.weight, **kwargs)
        return

    def forward(self, x):
        print(self.fc.weight.shape) if x.shape[0] < 0 else None
        return self.fc(x) + self.skip(x)
'''


def test_an_initialiser_picked_at_run_time_and_called_on_parameters_is_removed(tmp_path):
    # issue 12 (pytorch-tcn TCN): `initialise, kw = pick(...)` then `initialise(self.conv.weight, **kw)` in a
    # method the constructor calls stayed, and the converted constructor failed on `.weight` of an nnx layer
    c = convert_source(PICKED_INITIALISER_MODEL, filename="net.py")
    assert "def reset" not in c.code and "self.reset()" not in c.code and "print(" in c.code
    assert ("PT005", 17) in [(d.code, d.line) for d in c.diagnostics]
    torch_model, flax_model = both_nets(tmp_path, PICKED_INITIALISER_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 4))
    assert report.passed, report.format()


def test_a_builtin_or_an_imported_function_given_a_parameter_is_no_initialisation():
    c = convert("""
        import torch.nn as nn
        from mylib import tie_weights

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3)
                print(self.fc.weight)
                tie_weights(self.fc.weight, self.fc.bias)
        """)
    assert "print(" in c.code and "tie_weights(" in c.code and "PT005" not in codes(c)


def test_a_branch_that_only_computes_values_is_no_initialisation():
    # torchvision's Conv2dNormActivation: `if padding is None: padding = ...` must stay (it was removed once)
    source = '''
import torch.nn as nn


class ConvNorm(nn.Module):
    def __init__(self, c, kernel_size=3, dilation=1, padding=None):
        super().__init__()
        if padding is None:
            if isinstance(kernel_size, int):
                padding = (kernel_size - 1) // 2 * dilation
            else:
                padding = tuple((k - 1) // 2 * dilation for k in kernel_size)
        self.conv = nn.Conv2d(c, c, kernel_size, padding=padding, dilation=dilation)
'''
    c = convert(source)
    assert "padding = (kernel_size - 1) // 2 * dilation" in c.code and not codes(c).count("PT005")


MODULE_QUERIES_MODEL = '''
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.norm = nn.BatchNorm1d(d)  # its running statistics are buffers: not counted

    def forward(self, x):
        return self.norm(self.fc(x))


class Net(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.embed = nn.Embedding(10, d)
        self.blocks = nn.ModuleList([Block(d) for _ in range(2)])
        self.head = nn.Linear(d, 3, bias=False)
        self.shared = self.head  # the same parameters under two names: counted once
        self.n_params = sum(p.numel() for p in self.parameters())
        self.n_trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        self.n_block = sum(p.numel() for p in self.blocks[0].parameters())
        self.n_named = sum(p.numel() for _, p in self.named_parameters())
        self.n_linear = sum(1 for m in self.modules() if isinstance(m, nn.Linear))
        self.n_children = len([c for c in self.children()])
        self.n_blocks = len([m for m in self.modules() if isinstance(m, Block)])

    def forward(self, idx):
        x = self.embed(idx)
        for block in [m for m in self.modules() if isinstance(m, Block)]:  # siblings: the same order
            x = block(x)
        return self.head(x)


def count(model):
    return sum(p.numel() for p in model.parameters())
'''


def test_parameter_counts_and_module_queries_match_torch(tmp_path):
    # issue 12: self.parameters() / self.modules() outside weight init were kept (an nnx.Module has neither)
    c = convert_source(MODULE_QUERIES_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "sum(p.size for p in parameters_of(self))" in c.code
    assert "isinstance(m, nnx.Linear)" in c.code and "requires_grad" not in c.code
    assert "sum(1 for _, m in nnx.iter_modules(self) if isinstance(m, nnx.Linear))" in c.code
    torch_model, flax_model = both_nets(tmp_path, MODULE_QUERIES_MODEL, c.code)
    for name in ("n_params", "n_trainable", "n_block", "n_named", "n_linear", "n_children", "n_blocks"):
        assert getattr(flax_model, name) == getattr(torch_model, name), name
    assert torch_model.n_blocks == 2 and torch_model.n_params == 10 * 4 + 2 * (4 * 4 + 4 + 2 * 4) + 4 * 3
    jax_count = import_file(tmp_path / "jax_net.py").count
    assert jax_count(flax_model) == import_file(tmp_path / "torch_net.py").count(torch_model)
    report = check_equivalence(torch_model, flax_model, torch.randint(0, 10, (5,)))
    assert report.passed, report.format()


def test_isinstance_on_a_module_query_against_a_shared_converted_class_is_an_error():
    c = convert("""
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(2, 2, 3)
                self.n = sum(1 for m in self.modules() if isinstance(m, nn.Conv2d))
        """)
    assert "isinstance(m, nn.Conv2d)" in c.code and ("PT006", 8) in [(d.code, d.line) for d in c.diagnostics]


EARLY_RETURN_MODEL = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Noise(nn.Module):
    def __init__(self, d, affine=True):
        super().__init__()
        self.d = d
        if not affine: return
        self.scale = nn.Parameter(torch.ones(d))

    def forward(self, x):
        if self.training:
            x = x + 0.1 * torch.randn_like(x)
        return x * self.scale if hasattr(self, "scale") else x


class Net(nn.Module):
    def __init__(self, d=4, affine=False):
        super().__init__()
        self.fc = nn.Linear(d, d)
        if not affine:
            self.noise = Noise(d, affine=False)
            return
        self.noise = Noise(d)

    def forward(self, x):
        return self.noise(F.dropout(self.fc(x), p=0.5, training=self.training))
'''


def test_an_early_return_in_a_constructor_still_runs_the_added_statements(tmp_path):
    # issue 12: `if not affine: return` skipped the self.deterministic / self.rngs lines appended to __init__
    c = convert_source(EARLY_RETURN_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    torch_model, flax_model = both_nets(tmp_path, EARLY_RETURN_MODEL, c.code)
    assert isinstance(flax_model.dropout, nnx.Dropout) and flax_model.noise.deterministic is False
    assert isinstance(flax_model.noise.rngs, nnx.Rngs)
    flax_model.train()
    assert flax_model(np.ones((2, 4), np.float32)).shape == (2, 4)  # draws noise: needs self.rngs
    report = check_equivalence(torch_model, flax_model, torch.randn(3, 4))
    assert report.passed, report.format()
    jax_module = import_file(tmp_path / "jax_net.py")
    assert jax_module.Noise(4, rngs=nnx.Rngs(0)).deterministic is False  # no early return taken: once, at the end


ACTNORM_MODEL = '''
import torch
import torch.nn as nn


class Net(nn.Module):  # Glow's ActNorm: initialised from the first batch it sees
    def __init__(self, d=4):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, d))
        self.scale = nn.Parameter(torch.ones(1, d))
        self.register_buffer("initted", torch.tensor(False))
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        if not self.initted:
            with torch.no_grad():
                self.loc.data.copy_(-x.mean(0, keepdim=True))
                self.scale.data.copy_(1 / (x.std(0, keepdim=True) + 1e-6))
                self.initted.fill_(True)
        if self.initted and self.calls > 5:
            self.calls.zero_()
        self.calls.copy_(self.calls + 1)
        return (x + self.loc) * self.scale
'''


def test_truth_of_a_buffer_and_writes_to_buffers_convert(tmp_path):
    # issue 12: `if not self.initted:` (len() of unsized object) and `self.initted.fill_(True)` were kept
    c = convert_source(ACTNORM_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "if not self.initted[...]:" in c.code and "self.initted[...] = no_grad(True)" in c.code
    assert "if self.initted[...] and self.calls[...] > 5:" in c.code and "self.calls[...] = 0" in c.code
    assert [d.line for d in c.diagnostics if d.code == "PT005"] == [15, 20]  # eager only: said so
    torch_model, flax_model = both_nets(tmp_path, ACTNORM_MODEL, c.code)
    torch_model.train()
    porter.load_torch_state_dict(flax_model, torch_model.state_dict())
    for step in range(8):  # the first call initialises, every later one takes the other branch
        x = np.random.default_rng(step).normal(2.0, 3.0, (6, 4)).astype(np.float32)
        expected = torch_model(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(np.asarray(flax_model(x)), expected, rtol=1e-5, atol=1e-5)
    assert bool(flax_model.initted[...]) and float(flax_model.calls[...]) == float(torch_model.calls)
    np.testing.assert_allclose(np.asarray(flax_model.scale[...]), torch_model.scale.detach().numpy(), rtol=1e-5)


EINOPS_PARAMETERS_MODEL = '''
import einops
import torch
import torch.nn as nn
from einops import rearrange, repeat


class Net(nn.Module):  # a Perceiver's latents, a position table, a weight used through einops
    def __init__(self, n=3, d=4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n, d))
        self.register_buffer("pos", torch.arange(2 * d, dtype=torch.float32).reshape(2, d))
        self.w = nn.Parameter(torch.randn(d, d))

    def forward(self, x):
        lat = repeat(self.latents, "n d -> b n d", b=x.shape[0])
        pos = rearrange(self.pos, "t d -> (t d)")
        y = einops.einsum(x, self.w, "b d, d e -> b e")
        return lat.sum(1) + y + pos[: x.shape[1]]
'''


def test_einops_on_parameters_and_buffers_gets_their_arrays(tmp_path):
    # issue 12: repeat(self.latents, ...) passed the nnx.Param (einops: "Tensor type unknown")
    c = convert_source(EINOPS_PARAMETERS_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert 'repeat(self.latents[...], "n d -> b n d"' in c.code and "einops.einsum(x, self.w[...]," in c.code
    torch_model, flax_model = both_nets(tmp_path, EINOPS_PARAMETERS_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 4))
    assert report.passed, report.format()


LOCAL_PARAMETER_NAMES_MODEL = '''
import torch
import torch.nn as nn
from einops import rearrange


class Net(nn.Module):  # a gating unit: forward binds its parameters to local names, then reads them via einops
    def __init__(self, h=2, n=3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(h, n, n))
        self.bias = nn.Parameter(torch.randn(h, n))

    def forward(self, x):
        weight, bias = self.weight, self.bias
        scale = self.bias
        gate = torch.einsum("b h n d, h m n -> b h m d", rearrange(x, "b n (h d) -> b h n d", h=2), weight)
        gate = gate + rearrange(bias, "h n -> () h n ()") * rearrange(scale, "h n -> h n ()")
        return rearrange(gate, "b h n d -> b n (h d)")
'''


def test_parameters_bound_to_local_names_in_forward_are_read_as_arrays(tmp_path):
    # issue 12 (g-mlp-pytorch gMLP): `weight, bias = self.weight, self.bias` then rearrange(bias, ...)
    # handed einops the nnx.Param ("Tensor type unknown to einops")
    c = convert_source(LOCAL_PARAMETER_NAMES_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "weight, bias = self.weight[...], self.bias[...]" in c.code and "scale = self.bias[...]" in c.code
    torch_model, flax_model = both_nets(tmp_path, LOCAL_PARAMETER_NAMES_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 3, 8))
    assert report.passed, report.format()


MODULE_LEVEL_PARTIAL_MODEL = '''
import functools
from functools import partial

import torch
import torch.nn as nn

Linear = partial(nn.Linear, bias=False)
Norm = functools.partial(nn.LayerNorm, eps=1e-3)
Act = partial(nn.GELU, approximate="tanh")  # converted only at a fixed value: built for that value


class Net(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.a = Linear(d, 2 * d)
        self.norm = Norm(2 * d)
        self.act = Act()
        proj = partial(nn.Linear, bias=True)
        self.b = proj(2 * d, d)

    def forward(self, x):
        return self.b(self.act(self.norm(self.a(x))))
'''


def test_module_level_partials_of_torch_layers_become_converted_constructors(tmp_path):
    # issue 12: `Linear = partial(nn.Linear, bias=False)` at module level was kept (torch layers in an nnx module)
    c = convert_source(MODULE_LEVEL_PARTIAL_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "self.a = Linear(d, 2 * d, rngs=rngs)" in c.code and "self.norm = Norm(2 * d, rngs=rngs)" in c.code
    assert "Act = lambda *, rngs=None: partial(jax.nn.gelu, approximate=True)" in c.code
    torch_model, flax_model = both_nets(tmp_path, MODULE_LEVEL_PARTIAL_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(3, 4))
    assert report.passed, report.format()


def test_a_partial_binding_an_argument_the_converted_layer_lacks_is_an_error():
    c = convert("""
        from functools import partial
        import torch
        import torch.nn as nn

        Half = partial(nn.Linear, dtype=torch.float16)
        Swish = partial(nn.GELU, inplace=True)
        """)
    assert "Half = partial(torch_linear, dtype=jnp.float16)" in c.code  # torch's dtype: the parameters' dtype
    assert "Swish = partial(nn.GELU, inplace=True)" in c.code
    assert [(d.code, d.line) for d in c.diagnostics if d.severity.name == "ERROR"] == [("PT004", 7)]


INIT_HELPER_MODEL = '''
import math

import torch
import torch.nn as nn


def init_(t):  # lucidrains' helper: fills a fresh tensor in place and hands it back
    dim = t.shape[-1]
    std = 1 / math.sqrt(dim)
    t.uniform_(-std, std)
    return t


def small_normal(t, std=0.02):
    nn.init.normal_(t, std=std)
    return t


class Net(nn.Module):
    def __init__(self, n=64, d=256):
        super().__init__()
        self.w = nn.Parameter(init_(torch.zeros(n, d)))
        self.v = nn.Parameter(small_normal(torch.empty(d, 4)))

    def forward(self, x):
        return x @ self.w @ self.v
'''


def test_in_place_draws_in_an_init_helper_draw_from_the_constructors_rngs(tmp_path):
    # issue 12: `def init_(t): t.uniform_(-s, s); return t` called from __init__ was kept (no error)
    c = convert_source(INIT_HELPER_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "def init_(t, *, rngs: nnx.Rngs):" in c.code and "self.w = nnx.Param(init_(jnp.zeros((n, d)), rngs=rngs))" in c.code
    assert "t = jax.random.uniform(rngs.params(), t.shape, t.dtype, minval=-std, maxval=std)" in c.code
    assert "t = 0.02 * jax.random.normal(rngs.params(), t.shape, t.dtype)" not in c.code  # std is a name here
    torch_model, flax_model = both_nets(tmp_path, INIT_HELPER_MODEL, c.code)
    w, v = np.asarray(flax_model.w[...]), np.asarray(flax_model.v[...])
    assert w.shape == (64, 256) and -1 / 16 <= w.min() < -0.05 and 0.05 < w.max() <= 1 / 16  # torch's range
    assert abs(v.std() - 0.02) < 0.003 and abs(torch_model.v.std().item() - 0.02) < 0.003
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 64))
    assert report.passed, report.format()


HAND_BACK_METHOD_MODEL = '''
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):  # a sine layer: a method fills the constructor's fresh tensors in place, returning nothing
    def __init__(self, dim_in=64, dim_out=256, c=6.0):
        super().__init__()
        self.dim_in = dim_in
        weight = torch.zeros(dim_out, dim_in)
        bias = torch.zeros(dim_out)
        self.init_(weight, bias, c=c)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def init_(self, weight, bias, c):
        std = math.sqrt(c / self.dim_in)
        weight.uniform_(-std, std)
        if bias is not None:
            bias.uniform_(-std, std)

    def forward(self, x):
        return torch.sin(F.linear(x, self.weight, self.bias))
'''


def test_a_method_drawing_into_its_arguments_hands_them_back(tmp_path):
    # issue 12 (siren-pytorch SirenNet): `self.init_(weight, bias, c=c)` filled its arguments in place and
    # returned nothing; converted, the draws were kept (jax arrays have no uniform_)
    c = convert_source(HAND_BACK_METHOD_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "weight, bias = self.init_(weight, bias, c=c, rngs=rngs)" in c.code and "return weight, bias" in c.code
    torch_model, flax_model = both_nets(tmp_path, HAND_BACK_METHOD_MODEL, c.code)
    w = np.asarray(flax_model.weight[...])
    bound = math.sqrt(6.0 / 64)
    assert w.shape == (256, 64) and -bound <= w.min() < -0.9 * bound and 0.9 * bound < w.max() <= bound
    assert float(np.abs(np.asarray(flax_model.bias[...])).max()) > 0.5 * bound  # drawn, not the zeros
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 64))
    assert report.passed, report.format()


def test_an_in_place_draw_on_a_name_the_function_does_not_hand_back_is_an_error():
    # rebinding `w` or `noise` would change nothing the caller sees (timm's sequencer: for w in m.parameters())
    c = convert("""
        import torch.nn as nn

        class M(nn.Module):
            def forward(self, x):
                noise = x.clone()
                noise.normal_()
                return x + noise

        def init_weights(module, stdv):
            for weight in module.parameters():
                nn.init.uniform_(weight, -stdv, stdv)
        """)
    assert "noise.normal_()" in c.code and "nn.init.uniform_(weight, -stdv, stdv)" in c.code
    assert [(d.code, d.line) for d in c.diagnostics if d.severity.name == "ERROR"] == [("PT006", 7), ("PT003", 12)]


def test_an_init_helper_called_for_its_effect_alone_is_an_error():
    # converted, init_ returns new values: `init_(self.w)` would leave self.w as it was
    c = convert("""
        import torch
        import torch.nn as nn

        def init_(t):
            t.uniform_(-0.1, 0.1)
            return t

        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.w = nn.Parameter(torch.zeros(3))
                init_(self.w)
        """)
    assert ("PT006", 13) in [(d.code, d.line) for d in c.diagnostics]


def test_an_in_place_draw_into_a_parameter_in_the_constructor_draws_from_rngs():
    # vit-pytorch's vit_nd_pope: `self.learned_bias.uniform_(-2. * pi, 0.)` in __init__ was kept silently
    c = convert("""
        from math import pi
        import torch
        import torch.nn as nn

        class M(nn.Module):
            def __init__(self, d):
                super().__init__()
                self.learned_bias = nn.Parameter(torch.zeros(d))
                self.learned_bias.uniform_(-2. * pi, 0.)
                self.register_buffer("noise", torch.empty(d))
                self.noise.normal_(std=0.1)

            def forward(self, x):
                self.noise.normal_()
                return x + self.learned_bias
        """)
    assert ("self.learned_bias[...] = jax.random.uniform(rngs.params(), self.learned_bias.shape, "
            "self.learned_bias.dtype, minval=-2. * pi, maxval=0.)") in c.code
    assert [(d.code, d.line) for d in c.diagnostics if d.severity.name == "ERROR"] == [("PT042", 15)]
    namespace: dict = {}
    exec(c.code[:c.code.index("    def __call__")], namespace)
    m = namespace["M"](2000, rngs=nnx.Rngs(0))
    bias, noise = np.asarray(m.learned_bias[...]), np.asarray(m.noise[...])
    assert -2 * np.pi <= bias.min() < -6.0 and -0.3 < bias.max() <= 0.0 and abs(noise.std() - 0.1) < 0.01


def test_parameter_queries_handed_to_an_optimizer_are_left_to_the_training_pass():
    c = convert("""
        import torch.nn as nn
        import torch.optim as optim

        model = nn.Linear(3, 2)
        opt = optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        n = sum(p.numel() for p in model.parameters() if p.requires_grad)
        """)
    assert "optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)" in c.code  # reported, as before
    assert "n = sum(p.size for p in parameters_of(model))" in c.code


# A table of activation functions by name, a module picking one from it: torch functions used as
# values, as activation factories keep them.
FUNCTION_TABLE_MODEL = '''
import torch
import torch.nn as nn
import torch.nn.functional as F

_HAS_SILU = True
ACT_FNS = dict(silu=F.silu if _HAS_SILU else None, relu=F.relu, gelu=F.gelu, elu=F.elu, tanh=torch.tanh)


class Net(nn.Module):
    def __init__(self, act: str = "gelu"):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = ACT_FNS[act]
        self.acts = [ACT_FNS[name] for name in ("silu", "relu", "elu", "tanh")]

    def forward(self, x):
        x = self.act(self.fc(x))
        return [f(x) for f in self.acts]
'''


def test_torch_functions_used_as_values_become_their_conversions():
    code = convert(FUNCTION_TABLE_MODEL).code
    assert "silu=(lambda input, inplace=False: jax.nn.silu(input)) if _HAS_SILU" in code
    assert "tanh=lambda input: jnp.tanh(input)" in code  # torch's arguments, by name
    assert "F.relu" not in code and "F.gelu" not in code


def test_torch_functions_used_as_values_match_torch(tmp_path):
    conversion = convert(FUNCTION_TABLE_MODEL)
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"]
    torch_net, jax_net = both_nets(tmp_path, FUNCTION_TABLE_MODEL, conversion.code)
    porter.load_torch_state_dict(jax_net, torch_net.state_dict())
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    expected = torch_net(torch.from_numpy(x))
    got = jax_net(x)
    for e, g in zip(expected, got, strict=True):
        np.testing.assert_allclose(np.asarray(g), e.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_torch_function_compared_by_identity_stays_reported():
    conversion = convert('''
        import torch.nn.functional as F

        def is_relu(fn):
            return fn is F.relu
    ''')
    assert "fn is F.relu" in conversion.code
    assert "PT003" in codes(conversion)


# A factory annotated to return a module, calling the layer class it is given (the class's annotation an
# alias porter cannot read): the factory builds layers, so it takes rngs and its callers pass them.
RETURNED_LAYER_FACTORY_MODEL = '''
from typing import Callable, Union

import torch
import torch.nn as nn

LayerSpec = Union[str, Callable]


class Scaled(nn.Module):
    def __init__(self, dim, scale=1.0):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.scale = scale

    def forward(self, x):
        return self.proj(x) * self.scale


def make_layer(layer: LayerSpec, dim: int, **kwargs) -> nn.Module:
    return layer(dim, **kwargs)


class Net(nn.Module):
    def __init__(self, dim: int = 4):
        super().__init__()
        self.first = make_layer(Scaled, dim, scale=0.5)
        self.second = make_layer(Scaled, dim)

    def forward(self, x):
        return self.second(self.first(x))
'''


def test_factory_returning_a_call_of_its_layer_parameter_gets_rngs_and_matches_torch(tmp_path):
    conversion = convert(RETURNED_LAYER_FACTORY_MODEL)
    assert "return layer(dim, **kwargs, rngs=rngs)" in conversion.code
    torch_net, jax_net = both_nets(tmp_path, RETURNED_LAYER_FACTORY_MODEL, conversion.code)
    porter.load_torch_state_dict(jax_net, torch_net.state_dict())
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(jax_net(x)), torch_net(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_keyword_splat_into_a_name_that_may_hold_a_torch_layer_class_is_reported():
    conversion = convert('''
        import torch.nn as nn

        class Inner(nn.Module):
            def __init__(self, c, scale=1.0):
                super().__init__()
                self.fc = nn.Linear(c, c)

        class Net(nn.Module):
            def __init__(self, c, norm_layer=nn.BatchNorm2d, block=Inner, act_layer=nn.ReLU, device=None, dtype=None,
                         inplace=None, **kwargs):
                super().__init__()
                dd = {"device": device, "dtype": dtype}
                self.norm = norm_layer(c, **dd)
                self.plain = norm_layer(c)
                self.block = block(c, **{"scale": 2.0})
                known = {} if inplace is None else {"inplace": inplace}
                self.act = act_layer(**known)
                self.act2 = act_layer(**kwargs)
    ''')
    errors = [d for d in conversion.diagnostics if d.severity.name == "ERROR"]
    # not the plain call, not the module class, not a dict of arguments the converted ReLU takes, not **dd
    # into nn.BatchNorm2d's function (porter/convert/layer_functions.py: it takes every torch argument)
    assert [(d.code, d.line) for d in errors] == [("PT004", 19)]
    assert "**kwargs hides" in errors[0].message
    assert "self.norm = norm_layer(c, **dd, rngs=rngs)" in conversion.code


PADDING_PER_DIM_MODEL = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, k=3, c=2):
        super().__init__()
        pad = k // 2
        self.along_h = nn.Conv2d(c, c, (k, 1), padding=(pad, 0), groups=c, bias=False)
        self.volume = nn.Conv3d(1, c, (1, k, k), padding=(0, pad, pad))
        self.seq = nn.Conv1d(c, c, k, padding=[pad])

    def forward(self, x):
        y = self.along_h(x)
        v = self.volume(y[:, :1, None]).sum(2)
        return self.seq(v.flatten(2))
'''


def test_conv_padding_given_per_dim_by_expressions_converts(tmp_path):
    # issue 12: padding=(pad, 0) / (0, r // 2, r // 2) were left unconverted (nystrom-attention, lambda-networks)
    c = convert_source(PADDING_PER_DIM_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "padding=((pad, pad), (0, 0))" in c.code and "padding=((0, 0), (pad, pad), (pad, pad))" in c.code
    torch_model, flax_model = both_nets(tmp_path, PADDING_PER_DIM_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 2, 5, 6))
    assert report.passed, report.format()


SHIFT_PAD_MODEL = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


def shift(x, amt, dim=-1):  # pads are built at run time: zero pairs for the trailing dims, then a crop
    return F.pad(x, (*((0, 0) * (-dim - 1)), amt, -amt), value=0.)


class Net(nn.Module):
    def __init__(self, d=6):
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        x = self.proj(x)
        a, b = x.chunk(2, dim=-1)
        return torch.cat((shift(a, 1, dim=-2), b), dim=-1) + F.pad(x, (1, -1))
'''


def test_pad_with_starred_or_negative_widths_pads_and_crops_at_run_time(tmp_path):
    # issue 12: token-shift-gpt's `F.pad(x, (*((0, 0) * n), amt, -amt))` was kept (needs an even number of widths)
    c = convert_source(SHIFT_PAD_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "pad_nchw(x, (*((0, 0) * (-dim - 1)), amt, -amt))" in c.code and "pad_nchw(x, (1, -1))" in c.code
    torch_model, flax_model = both_nets(tmp_path, SHIFT_PAD_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 5, 6))
    assert report.passed, report.format()


FACTORY_CHOICE_MODEL = '''
import torch
import torch.nn as nn


def FeedForward(dim, mult=2):
    return nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))


class GatedFeedForward(nn.Module):
    def __init__(self, dim, mult=2):
        super().__init__()
        self.proj = nn.Linear(dim, dim * mult * 2)
        self.out = nn.Linear(dim * mult, dim)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)
        return self.out(a * torch.sigmoid(gate))


class Net(nn.Module):
    def __init__(self, dim=8, n=3, gated=False):
        super().__init__()
        expert = GatedFeedForward if gated else FeedForward
        self.experts = nn.ModuleList([expert(dim=dim, mult=2) for _ in range(n)])

    def forward(self, x):
        return sum(e(x) for e in self.experts)
'''


def test_a_name_choosing_between_a_layer_factory_and_a_module_class_builds_with_rngs(tmp_path):
    # issue 12: soft-moe's `expert_klass = GLUFeedForward if geglu else FeedForward` (FeedForward a function
    # returning nn.Sequential): `expert_klass(dim=dim)` got no rngs and failed at construct
    c = convert_source(FACTORY_CHOICE_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "expert(dim=dim, mult=2, rngs=rngs)" in c.code
    for gated in (False, True):
        torch_model, flax_model = both_nets(tmp_path, FACTORY_CHOICE_MODEL.replace("gated=False", f"gated={gated}"),
                                            c.code.replace("gated=False", f"gated={gated}"))
        report = check_equivalence(torch_model, flax_model, torch.randn(2, 8))
        assert report.passed, report.format()


MAPPED_WRAPPER_MODEL = '''
from functools import partial
import torch
import torch.nn as nn


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class Scaled(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.g = nn.Parameter(torch.tensor(0.5))
        self.fn = fn

    def forward(self, x):
        return self.fn(x) * self.g


class Net(nn.Module):
    def __init__(self, dim=8, depth=2, scaled=False):
        super().__init__()
        wrapper = Scaled if scaled else partial(PreNorm, dim)
        layers = []
        for _ in range(depth):
            a, b = nn.Linear(dim, dim), nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
            a, b = map(wrapper, (a, b))
            layers.append(nn.ModuleList([a, b]))
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for a, b in self.layers:
            x = a(x) + x
            x = b(x) + x
        return x
'''


def test_map_of_a_layer_constructor_in_a_constructor_passes_rngs(tmp_path):
    # issue 12: performer's `attn, ff = map(wrapper_fn, (attn, ff))` (wrapper_fn a partial of a module class)
    # built the wrappers without rngs and failed at construct
    c = convert_source(MAPPED_WRAPPER_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "a, b = map(partial(wrapper, rngs=rngs), (a, b))" in c.code
    for scaled in (False, True):
        torch_model, flax_model = both_nets(tmp_path, MAPPED_WRAPPER_MODEL.replace("scaled=False", f"scaled={scaled}"),
                                            c.code.replace("scaled=False", f"scaled={scaled}"))
        report = check_equivalence(torch_model, flax_model, torch.randn(2, 8))
        assert report.passed, report.format()


EARLY_RETURN_INIT_MODEL = '''
import torch
import torch.nn as nn


class Embedder(nn.Module):
    def __init__(self, n, d):
        super().__init__()
        self.emb = nn.Embedding(n, d)

    def forward(self, x):
        return self.emb(x)


class Net(nn.Module):
    def __init__(self, n=16, d=8, small_init=True):
        super().__init__()
        self.small_init = small_init
        self.tok = Embedder(n, d)
        self.out = nn.Linear(d, n)
        self.reset()

    def reset(self):
        if self.small_init:
            nn.init.normal_(self.tok.emb.weight, std=1e-5)
            return
        nn.init.kaiming_normal_(self.tok.emb.weight)

    def forward(self, x):
        return self.out(self.tok(x))
'''


def test_an_initialisation_method_with_an_early_return_is_removed_as_one(tmp_path):
    # issue 12: x-transformers' `def init_(self): if ...: nn.init.normal_(...); return` then kaiming_normal_
    # was kept (the bare return was not initialisation) and failed at construct
    c = convert_source(EARLY_RETURN_INIT_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "def reset" not in c.code and "self.reset()" not in c.code and "PT005" in codes(c)
    torch_model, flax_model = both_nets(tmp_path, EARLY_RETURN_INIT_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randint(0, 16, (2, 5)))
    assert report.passed, report.format()


def test_an_early_return_in_the_constructor_after_initialisation_stays():
    c = convert("""
        import torch.nn as nn

        class Net(nn.Module):
            def __init__(self, plain):
                super().__init__()
                self.fc = nn.Linear(4, 2)
                if plain:
                    nn.init.zeros_(self.fc.bias)
                    return
                self.extra = nn.Linear(2, 2)
        """)
    assert "return" in c.code and "self.extra = nnx.Linear(2, 2, rngs=rngs)" in c.code


BUFFER_TO_HELPER_MODEL = '''
from functools import partial

import torch
import torch.nn as nn
from einops import repeat


def project(x, *, matrix, scale=1.0):
    b = x.shape[0]
    m = repeat(matrix, 'j d -> b j d', b=b)
    return torch.einsum('bnd,bjd->bnj', x, m) * scale


class Net(nn.Module):
    def __init__(self, d=8, k=5):
        super().__init__()
        self.register_buffer("matrix", torch.randn(k, d))
        self.offset = nn.Parameter(torch.randn(k))

    def forward(self, x):
        f = partial(project, matrix=self.matrix, scale=0.5)
        return f(x) + project(x, matrix=self.offset[:, None] * self.matrix) + repeat(self.offset, 'k -> b 1 k', b=x.shape[0])
'''


def test_a_buffer_handed_to_a_function_of_the_file_or_a_partial_of_one_is_read_as_an_array(tmp_path):
    # issue 12: performer's `partial(softmax_kernel, projection_matrix=self.projection_matrix)` handed the nnx
    # Variable to a function calling einops' repeat on it: "Tensor type unknown to einops" at eager
    c = convert_source(BUFFER_TO_HELPER_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "partial(project, matrix=self.matrix[...], scale=0.5)" in c.code
    torch_model, flax_model = both_nets(tmp_path, BUFFER_TO_HELPER_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 3, 8))
    assert report.passed, report.format()


FUNCTION_VALUES_MODEL = '''
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, activation=F.gelu):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.activation = activation

    def forward(self, x):
        return self.activation(self.fc(x))


class Net(nn.Module):
    def __init__(self, d=6, sharp=True):
        super().__init__()
        self.blocks = nn.ModuleList([Block(d), Block(d, activation=F.silu), Block(d, torch.tanh)])
        self.normalise = partial(F.softmax, dtype=torch.float32) if sharp else partial(F.log_softmax, dim=1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.normalise(x * 3, dim=-1) + F.softmax(x, -1)
'''


def test_torch_functions_as_values_become_functions_with_torchs_arguments(tmp_path):
    # issue 12: `activation=F.gelu`, `partial(F.softmax, dim=-1)` (x-transformers' attn_fn) were kept as torch
    # references (PT003): the converted model called torch on jax arrays
    c = convert_source(FUNCTION_VALUES_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "partial(lambda input, dim, _stacklevel=3, dtype=None: jax.nn.softmax(jnp.asarray(input, dtype=dtype), " \
           "axis=dim), dtype=jnp.float32)" in c.code
    for sharp in (True, False):
        torch_model, flax_model = both_nets(tmp_path, FUNCTION_VALUES_MODEL.replace("sharp=True", f"sharp={sharp}"),
                                            c.code.replace("sharp=True", f"sharp={sharp}"))
        report = check_equivalence(torch_model, flax_model, torch.randn(2, 6))
        assert report.passed, report.format()


def test_a_function_value_bound_to_an_argument_its_rule_cannot_convert_is_an_error():
    c = convert("""
        from functools import partial
        import torch
        import torch.nn.functional as F

        def act(mode):
            return partial(F.gelu, approximate=mode)

        tanh_gelu = partial(F.gelu, approximate="tanh")
        """)
    assert "return partial(F.gelu, approximate=mode)" in c.code  # converted only at a literal value
    assert "tanh_gelu = lambda input: jax.nn.gelu(input, approximate=True)" in c.code
    assert [(d.code, d.line) for d in c.diagnostics if d.severity.name == "ERROR"] == [("PT004", 7)]


STARRED_DEVICE_MODEL = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        b, n, device = *x.shape[:2], x.device
        positions = torch.arange(n, device=device).float()
        return self.fc(x) + positions[None, :, None] / b
'''


def test_a_device_unpacked_after_a_starred_shape_is_dropped(tmp_path):
    # issue 12: performer's `b, n, device = *x.shape, x.device` kept x.device (PT004): failed under jit
    c = convert_source(STARRED_DEVICE_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name == "ERROR"], c.diagnostics
    assert "b, n = *x.shape[:2]," in c.code
    torch_model, flax_model = both_nets(tmp_path, STARRED_DEVICE_MODEL, c.code)
    report = check_equivalence(torch_model, flax_model, torch.randn(2, 5, 4))
    assert report.passed, report.format()


def test_in_place_and_random_torch_functions_as_values_stay_reported():
    # a function returning new values would change nothing where torch's add_ mutates; a draw needs its key
    c = convert("""
        import torch

        grow = torch.Tensor.add_
        noise = torch.randn_like
        """)
    assert "grow = torch.Tensor.add_" in c.code and "noise = torch.randn_like" in c.code
    assert [(d.code, d.line) for d in c.diagnostics if d.severity.name == "ERROR"] == [("PT003", 4), ("PT003", 5)]


def test_a_str_method_named_like_a_tensor_method_torch_would_refuse_is_left_alone():
    """pytorch/examples' word_language_model/data.py: `line.split()` is no Tensor.split (which needs a size:
    torch would raise on a tensor), so it is neither converted nor reported; `x.split(2)` still converts."""
    conversion = convert('''\
        import torch

        def words(path):
            with open(path) as f:
                return [w for line in f for w in line.split() + ["<eos>"]]

        def halves(x):
            return x.split(2)
        ''')
    assert "line.split() + " in conversion.code
    assert codes(conversion) == []
    assert "split_by_size(x, 2" in conversion.code


ADD_MODULE_MODEL = '''
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        stages = [("layer1", nn.Linear(4, 4)), ("layer2", nn.Linear(4, 3))]
        for stage in stages:
            self.add_module(*stage)  # timm's ResNet
        self.register_module("head", nn.Linear(3, 2))

    def forward(self, x):
        return self.head(self.layer2(self.layer1(x)).relu())
'''


def test_add_module_on_the_module_itself_is_setattr_and_matches_torch(tmp_path):
    conversion = convert(ADD_MODULE_MODEL)
    assert "setattr(self, *stage)" in conversion.code and 'setattr(self, "head", nnx.Linear(3, 2, rngs=rngs))' \
        in conversion.code
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"], conversion.diagnostics
    torch_net, jax_net = both_nets(tmp_path, ADD_MODULE_MODEL, conversion.code)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    assert check_equivalence(torch_net, jax_net, x).passed


def test_add_module_in_a_module_list_subclass_stays_reported():
    """(a Sequential or ModuleDict subclass's add_module converts: tests/test_named_containers.py)"""
    conversion = convert('''
        import torch.nn as nn


        class Stage(nn.ModuleList):  # add_module appends to the list
            def __init__(self):
                super().__init__()
                self.add_module("a", nn.Linear(4, 4))
        ''')
    assert "setattr" not in conversion.code
    # the class is an nnx.List subclass now (tests/test_module_list_subclass.py); its add_module an error there
    assert ("PT040", 8) in [(d.code, d.line) for d in conversion.diagnostics if d.severity.name == "ERROR"]


# Attention dropout through F.scaled_dot_product_attention, as nanoGPT and timm write it: the rate applies in
# training only; the value is the identity, so the output is the attention weights themselves.
ATTENTION_DROPOUT_MODEL = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class Net(nn.Module):
    def __init__(self, p=0.5):
        super().__init__()
        self.attn_drop = nn.Dropout(p)  # timm
        self.dropout = p  # nanoGPT

    def forward(self, q, k):
        n = k.shape[-2]
        v = torch.eye(n).expand(k.shape[0], k.shape[1], n, n)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.)
        b = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0,
                                           is_causal=True)
        return torch.stack([a, b])
'''


def test_attention_dropout_becomes_the_module_s_dropout_layer_applied_to_the_weights(tmp_path):
    c = convert_source(ATTENTION_DROPOUT_MODEL, filename="net.py")
    assert not [d for d in c.diagnostics if d.severity.name in ("ERROR", "WARNING")], c.diagnostics
    assert "scaled_dot_product_attention(q, k, v, dropout=self.attn_drop)" in c.code
    assert "self.attention_dropout = nnx.Dropout(self.dropout, rngs=rngs)" in c.code
    torch_model, flax_model = both_nets(tmp_path, ATTENTION_DROPOUT_MODEL, c.code)
    q, k = torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4)
    weights = torch_model(q, k).numpy()  # eval mode: no dropout, in both
    flax_model.eval()
    np.testing.assert_allclose(np.asarray(flax_model(q.numpy(), k.numpy())), weights, rtol=1e-5, atol=1e-6)
    flax_model.train()
    dropped = np.asarray(flax_model(q.numpy(), k.numpy()))
    kept = ~np.isclose(dropped, 0, atol=1e-7)
    # each weight is dropped or scaled by 1 / (1 - p), as torch's train mode does
    np.testing.assert_allclose(dropped[kept], 2 * weights[kept], rtol=1e-5)
    assert 0.3 < kept[weights > 1e-3].mean() < 0.7
    torch_dropped = torch_model.train()(q, k).numpy()
    torch_kept = ~np.isclose(torch_dropped, 0, atol=1e-7)
    np.testing.assert_allclose(torch_dropped[torch_kept], 2 * weights[torch_kept], rtol=1e-5)


def test_attention_dropout_that_drops_in_every_mode_is_an_error_and_one_porter_cannot_place_a_warning():
    c = convert("""
        import torch.nn as nn
        import torch.nn.functional as F

        class Net(nn.Module):
            def __init__(self, p):
                super().__init__()
                self.p = p

            def forward(self, q, k, v):
                rate = self.p if self.training else 0.0
                a = F.scaled_dot_product_attention(q, k, v, None, 0.1)
                return a + F.scaled_dot_product_attention(q, k, v, dropout_p=rate)
        """)
    found = {(d.line, d.code, d.severity.name) for d in c.diagnostics if d.code in ("PT004", "PT005")}
    assert found == {(12, "PT004", "ERROR"), (13, "PT005", "WARNING")}, c.diagnostics
    assert "F.scaled_dot_product_attention(q, k, v, None, 0.1)" in c.code
