"""A subclass of nn.ModuleList with methods of its own becomes a subclass of nnx.List, its super().__init__(...)
kept (nnx.List's sets the list up, with layers or none). Was: an error at the base (PT003), the class left a torch
ModuleList and its layers built with nnx.Rngs(0). Checked against torch."""

import torch
from flax import nnx

from porter import convert_source
from porter.check.equivalence import check_equivalence
from porter.check.modelspec import import_file

MODEL = '''
import torch
import torch.nn as nn


class Blocks(nn.ModuleList):
    def __init__(self, d, n):
        super().__init__([nn.Linear(d, d) for _ in range(n)])
        self.scale = 0.5

    def run(self, x):
        for block in self:
            x = block(x).relu() * self.scale
        return x


class Grown(nn.ModuleList):
    def __init__(self, d):
        super().__init__()
        self.append(nn.Linear(d, d))
        self.extend([nn.Linear(d, d), nn.Tanh()])

    def last(self, x):
        return self[-1](self[len(self) - 2](x))


class Net(nn.Module):
    def __init__(self, d=4):
        super().__init__()
        self.blocks = Blocks(d, 2)
        self.grown = Grown(d)

    def forward(self, x):
        return self.grown.last(self.blocks.run(x) + self.blocks[0](x)) + len(self.blocks)
'''


def test_a_module_list_subclass_becomes_an_nnx_list_subclass_and_matches_torch(tmp_path):
    conversion = convert_source(MODEL, filename="net.py")
    assert [d for d in conversion.diagnostics if d.severity.name == "ERROR"] == []
    assert "class Blocks(nnx.List):\n    def __init__(self, d, n, *, rngs: nnx.Rngs):\n" \
           "        super().__init__([nnx.Linear(d, d, rngs=rngs) for _ in range(n)])" in conversion.code
    assert "class Grown(nnx.List):\n    def __init__(self, d, *, rngs: nnx.Rngs):\n        super().__init__()\n" \
        in conversion.code
    (tmp_path / "torch_net.py").write_text(MODEL)
    (tmp_path / "jax_net.py").write_text(conversion.code)
    torch.manual_seed(0)
    original = import_file(tmp_path / "torch_net.py").Net().eval()
    report = check_equivalence(original, import_file(tmp_path / "jax_net.py").Net(rngs=nnx.Rngs(0)), torch.randn(3, 4))
    assert report.passed, report.format()
