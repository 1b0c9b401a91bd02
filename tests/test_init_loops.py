"""timm's ResNet.init_weights: a loop over `self.modules()` calling each block's own init-only method
(`m.zero_init_last()`) only initialises too (porter/convert/weight_init.py): the method goes with a PT005, as
every initialisation does (was: PT040/PT003 errors and a converted model failing when built)."""

from flax import nnx
import torch

from porter import convert_source
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import import_file

MODEL = '''
import torch
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def zero_init_last(self):
        if getattr(self.bn, 'weight', None) is not None:
            nn.init.zeros_(self.bn.weight)

    def forward(self, x):
        return x + self.bn(self.conv(x))


class Net(nn.Module):
    def __init__(self, c=4, zero_init_last=True):
        super().__init__()
        self.layer1 = Block(c)
        self.init_weights(zero_init_last=zero_init_last)

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = True) -> None:
        """Initialise."""
        for n, m in self.named_modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, 'zero_init_last'):
                    m.zero_init_last()

    def forward(self, x):
        return self.layer1(x)
'''


def test_a_loop_calling_each_modules_init_only_method_is_initialisation(tmp_path):
    conversion = convert_source(MODEL, filename="net.py")
    assert [d for d in conversion.diagnostics if d.severity.name == "ERROR"] == []
    assert "init_weights" not in conversion.code and "zero_init_last(self)" not in conversion.code
    removed = [d.message for d in conversion.diagnostics if d.code == "PT005"]
    assert any("method init_weights" in text for text in removed) and any("method zero_init_last" in text
                                                                           for text in removed)
    (tmp_path / "torch_net.py").write_text(MODEL)
    (tmp_path / "jax_net.py").write_text(conversion.code)
    torch.manual_seed(0)
    original = import_file(tmp_path / "torch_net.py").Net().eval()
    report = check_equivalence(original, import_file(tmp_path / "jax_net.py").Net(rngs=nnx.Rngs(0)),
                               torch.randn(2, 4, 6, 6))
    assert report.passed, report.format()


def test_a_method_of_the_same_name_doing_more_elsewhere_keeps_the_loop():
    other = MODEL + '''

class Other(nn.Module):
    def __init__(self):
        super().__init__()
        self.count = 0

    def zero_init_last(self):
        self.count += 1
'''
    conversion = convert_source(other.replace("class Block(", "class Other0(nn.Module):\n    def zero_init_last(self):\n"
                                              "        self.count = 1\n\n\nclass Block("), filename="net.py")
    assert "m.zero_init_last()" in conversion.code
