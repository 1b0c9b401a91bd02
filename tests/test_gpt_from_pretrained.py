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
