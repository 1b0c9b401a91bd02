"""`torch.zeros(n, **dd)` with `dd = {'device': device, 'dtype': dtype}` (timm 1.x): converted as if the entries
were written out, the device dropped and the dtype kept (porter/convert/device_dicts.py); any other dict
stays an error. Checked against torch."""

import textwrap

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from porter import convert_source
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import import_file

MODEL = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, d=8, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d, **dd))
        self.scale = nn.Parameter(torch.ones(d, **dd) * 0.5)
        self.fc = nn.Linear(d, d, **dd)

    def forward(self, x):
        return self.fc(x) * self.scale + self.cls_token
'''


def errors(conversion):
    return [(d.code, d.line) for d in conversion.diagnostics if d.severity.name == "ERROR"]


def test_factories_splatting_a_device_dtype_dict_convert():
    conversion = convert_source(MODEL, filename="m.py")
    assert errors(conversion) == []
    assert "self.cls_token = nnx.Param(jnp.zeros((1, 1, d), dtype=dd['dtype']))" in conversion.code
    assert "self.scale = nnx.Param(jnp.ones(d, dtype=dd['dtype']) * 0.5)" in conversion.code


def test_factories_splatting_a_device_dtype_dict_match_torch(tmp_path):
    conversion = convert_source(MODEL, filename="m.py")
    (tmp_path / "torch_net.py").write_text(MODEL)
    (tmp_path / "jax_net.py").write_text(conversion.code)
    torch.manual_seed(0)
    original = import_file(tmp_path / "torch_net.py").Net().eval()
    converted_class = import_file(tmp_path / "jax_net.py").Net
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    report = check_equivalence(original, converted_class(rngs=nnx.Rngs(0)), x)
    assert report.passed, report.format()
    # a None dtype is the default one; a dtype given is kept, as torch keeps it
    assert original.cls_token.dtype == torch.float32 and converted_class(rngs=nnx.Rngs(0)).cls_token.dtype == jnp.float32
    half = converted_class(dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert import_file(tmp_path / "torch_net.py").Net(dtype=torch.bfloat16).cls_token.dtype == torch.bfloat16
    assert half.cls_token.dtype == jnp.bfloat16 and half.scale.dtype == jnp.bfloat16


@pytest.mark.parametrize("binding", [
    "dd = {'device': device, 'dtype': dtype, 'requires_grad': True}",  # another key
    "dd = {'device': device, 'dtype': dtype}\n        dd['dtype'] = torch.float16",  # changed after
    "dd = {'device': device, 'dtype': dtype} if device else {'device': device}",  # a binding lacking dtype
    "dd = {'device': device, 'dtype': dtype}\n        dd.update(other)",  # handed to a call
    "dd = dict(device=device, dtype=dtype)",  # not a display
])
def test_any_other_dict_splatted_into_a_factory_stays_an_error(binding):
    source = textwrap.dedent('''
    import torch
    import torch.nn as nn


    class Net(nn.Module):
        def __init__(self, d=8, device=None, dtype=None, other=None):
            super().__init__()
            BINDING
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d, **dd))
    ''').replace("BINDING", binding)
    conversion = convert_source(source, filename="m.py")
    line = source.splitlines().index("        self.cls_token = nn.Parameter(torch.zeros(1, 1, d, **dd))") + 1
    assert ("PT004", line) in errors(conversion), conversion.diagnostics
    assert "torch.zeros(1, 1, d, **dd)" in conversion.code


LAYER_DTYPES = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, d=4, device=None, dtype=None):
        super().__init__()
        self.fc = nn.Linear(d, d, bias=True, device=device, dtype=dtype)
        self.conv = nn.Conv2d(d, d, 1, dtype=dtype)
        self.norm = nn.LayerNorm(d, dtype=dtype)
        self.low = nn.Linear(d, d, dtype=torch.bfloat16)

    def forward(self, x):
        return self.norm(self.fc(self.conv(x).permute(0, 2, 3, 1)))
'''


def test_a_layers_dtype_argument_becomes_its_param_dtype_and_matches_torch(tmp_path):
    """timm's `nn.Linear(a, b, bias=True, device=device, dtype=dtype)` (was: PT004, left torch; corpus ResNet's fc)."""
    conversion = convert_source(LAYER_DTYPES, filename="m.py")
    assert errors(conversion) == []
    assert "self.fc = nnx.Linear(d, d, use_bias=True, param_dtype=dtype or jnp.float32, rngs=rngs)" in conversion.code
    assert "self.low = nnx.Linear(d, d, param_dtype=jnp.bfloat16, rngs=rngs)" in conversion.code
    (tmp_path / "torch_net.py").write_text(LAYER_DTYPES)
    (tmp_path / "jax_net.py").write_text(conversion.code)
    torch.manual_seed(0)
    original = import_file(tmp_path / "torch_net.py").Net().eval()
    converted_class = import_file(tmp_path / "jax_net.py").Net
    x = np.random.default_rng(0).standard_normal((2, 4, 3, 3)).astype(np.float32)
    report = check_equivalence(original, converted_class(rngs=nnx.Rngs(0)), x)
    assert report.passed, report.format()
    half = converted_class(dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert half.fc.kernel.dtype == half.conv.kernel.dtype == half.norm.scale.dtype == jnp.bfloat16
    assert half.low.kernel.dtype == jnp.bfloat16 and original.low.weight.dtype == torch.bfloat16
