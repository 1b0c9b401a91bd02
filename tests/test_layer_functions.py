"""Torch layers built from arguments porter cannot see (`nn.Conv2d(c, d, bias=False, **kwargs)`, timm's
`nn.Linear(a, b, **dd)` with `dd = {'device': device, 'dtype': dtype}`): the call becomes a function
generated from the layer's rule (porter/convert/layer_functions.py) that translates torch's arguments
when the model is built. Each checked against torch."""

import textwrap

import numpy as np
import pytest
import torch
from flax import nnx

from porter import convert_source
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import import_file
from porter.convert import layer_functions

# googlenet / inception_v3's BasicConv2d, and timm's device/dtype keywords
KWARGS_MODEL = '''
import torch
import torch.nn as nn


class BasicConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        norm = {"eps": 1e-3, "elementwise_affine": False}
        self.a = BasicConv2d(3, 4, kernel_size=3, padding=1)
        self.b = BasicConv2d(4, 6, kernel_size=(1, 3), stride=(2, 1), padding=(0, 1))
        self.c = BasicConv2d(6, 6, kernel_size=3, padding="same", groups=2)
        self.bn = nn.BatchNorm2d(6, momentum=0.3, **dd)
        self.norm = nn.LayerNorm([6], **norm, **dd)
        self.drop = nn.Dropout(0.0, **{"inplace": True})
        self.fc = nn.Linear(6, 2, **dd)

    def forward(self, x):
        return self.fc(self.drop(self.norm(self.bn(self.c(self.b(self.a(x)))).mean((2, 3)))))
'''


def convert(source: str):
    return convert_source(textwrap.dedent(source), filename="m.py")


def test_layers_built_with_kwargs_convert_and_match_torch(tmp_path):
    conversion = convert(KWARGS_MODEL)
    assert not [d for d in conversion.diagnostics if d.severity.value == "error"], conversion.diagnostics
    code = conversion.code
    assert "self.conv = torch_conv2d(in_channels, out_channels, bias=False, **kwargs, rngs=rngs)" in code
    assert "self.fc = torch_linear(6, 2, **dd, rngs=rngs)" in code
    assert "def torch_conv2d(in_channels, out_channels, kernel_size, stride=1," in code
    (tmp_path / "torch_net.py").write_text(KWARGS_MODEL)
    (tmp_path / "jax_net.py").write_text(code)
    torch.manual_seed(0)
    original = import_file(tmp_path / "torch_net.py").Net()
    converted = import_file(tmp_path / "jax_net.py").Net(rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    for mode in ("eval", "train"):
        report = check_equivalence(original, converted, x, mode=mode)
        assert report.passed, report


def test_an_argument_converted_only_at_its_default_raises_naming_it(tmp_path):
    source = KWARGS_MODEL.replace("groups=2)", "groups=2, padding_mode='reflect')")
    conversion = convert(source)
    (tmp_path / "jax_net.py").write_text(conversion.code)
    with pytest.raises(NotImplementedError, match=r"torch.nn.Conv2d\(padding_mode='reflect'\)"):
        import_file(tmp_path / "jax_net.py").Net(rngs=nnx.Rngs(0))


def test_a_torch_dtype_is_the_parameters_dtype(tmp_path):
    source = KWARGS_MODEL.replace("def __init__(self, device=None, dtype=None)",
                                  "def __init__(self, device=None, dtype=torch.float16)")
    (tmp_path / "jax_net.py").write_text(convert(source).code)
    net = import_file(tmp_path / "jax_net.py").Net(rngs=nnx.Rngs(0))
    torch_net = torch.nn.Linear(6, 2, dtype=torch.float16)
    assert net.fc.kernel[...].dtype == np.float16 and torch_net.weight.dtype == torch.float16
    assert net.a.conv.kernel[...].dtype == np.float32  # no dtype passed there


@pytest.mark.parametrize("name", ["torch_conv2d", "torch_batchnorm2d", "torch_layernorm", "torch_linear",
                                  "torch_groupnorm", "torch_dropout", "torch_embedding"])
def test_the_functions_are_generated_from_the_rules_and_compile(name):
    source, helpers = layer_functions.generated(name)
    compile(source, name, "exec")
    assert source.startswith(f"def {name}(")


def test_a_layer_with_a_builder_of_its_own_stays_reported():
    conversion = convert('''
        import torch.nn as nn


        class Net(nn.Module):
            def __init__(self, **kw):
                super().__init__()
                self.up = nn.ConvTranspose2d(4, 4, 2, **kw)
        ''')
    assert [d.code for d in conversion.diagnostics if d.severity.value == "error"] == ["PT004"]
    assert "nn.ConvTranspose2d(4, 4, 2, **kw)" in conversion.code
