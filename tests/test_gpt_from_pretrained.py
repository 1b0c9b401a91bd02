"""nanoGPT's `GPT.from_pretrained` (issue 16) builds transformers' GPT2LMHeadModel, imported in the method's
body, to copy its weights: torch inside the converted module, reported at error level naming the package
(passes/residual.py reads function-level imports of torch packages too)."""

import textwrap

from porter import convert_source

SOURCE = '''
import torch
import torch.nn as nn


class GPT(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc = nn.Linear(n, n)

    def forward(self, x):
        return self.fc(x)

    @classmethod
    def from_pretrained(cls, model_type):
        from transformers import GPT2LMHeadModel
        model = GPT(4)
        model_hf = GPT2LMHeadModel.from_pretrained(model_type)
        return model
'''


def test_a_model_of_a_torch_package_built_in_a_method_is_an_error_naming_the_package():
    conversion = convert_source(textwrap.dedent(SOURCE))
    errors = [d for d in conversion.diagnostics if d.severity.name == "ERROR" and d.line == 18]
    assert any(d.code == "PT040" and "transformers" in d.message and "GPT2LMHeadModel" in d.message
               for d in errors), conversion.diagnostics


FUNCTIONAL = '''
import torch.nn as nn
from torchvision.transforms import functional as F


class Resize(nn.Module):
    def forward(self, x):
        return F.resize(x, [4, 4])
'''


def test_a_module_of_a_torch_package_called_is_not_said_to_build_a_class():
    conversion = convert_source(textwrap.dedent(FUNCTIONAL))
    assert not any("builds F" in d.message for d in conversion.diagnostics), conversion.diagnostics


SAMPLE = '''
import torch
import torch.nn as nn


class GPT(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc = nn.Linear(n, n)

    def forward(self, x):
        return self.fc(x)

    @classmethod
    def from_pretrained(cls, name):
        return cls(4)


init_from = 'resume'
if init_from == 'resume':
    checkpoint = torch.load('ckpt.pt', map_location='cpu')
    model = GPT(4)
    model.load_state_dict(checkpoint['model'])
else:
    model = GPT.from_pretrained(init_from)
'''


def test_a_model_also_bound_to_from_pretrained_still_loads_its_checkpoint():
    """nanoGPT's sample.py binds `model` to GPT(...) or GPT.from_pretrained(...): both converted models, so the
    resume branch's torch.load and load_state_dict convert (they were PT003 and PT040)."""
    conversion = convert_source(textwrap.dedent(SAMPLE))
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"], conversion.diagnostics
    assert "load_numpy_state(model, checkpoint['model'])" in conversion.code
    assert "checkpoint = load_checkpoint('ckpt.pt')" in conversion.code
