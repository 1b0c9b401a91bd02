"""nanoGPT's model methods that porter converts beyond the layers (issue 16): the flash switch
`hasattr(torch.nn.functional, 'scaled_dot_product_attention')` (a feature probe of a name porter converts:
True, with a note; passes/feature_probes.py)."""

import textwrap

import pytest

from porter import convert_source


def convert(source: str):
    return convert_source(textwrap.dedent(source), filename="m.py")


PROBE = '''
import torch
import torch.nn as nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self, flash):
        super().__init__()
        self.flash = {probe} and flash

    def forward(self, q, k, v):
        if self.flash:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
'''


@pytest.mark.parametrize("probe", ["hasattr(torch.nn.functional, 'scaled_dot_product_attention')",
                                   'hasattr(F, "scaled_dot_product_attention")',
                                   "hasattr(nn.functional, 'scaled_dot_product_attention')"])
def test_a_probe_of_a_converted_function_is_true_with_a_note(probe):
    conversion = convert(PROBE.replace("{probe}", probe))
    assert not [d for d in conversion.diagnostics if d.severity.name == "ERROR"], conversion.diagnostics
    assert "self.flash = flash" in conversion.code and "hasattr" not in conversion.code
    note = [d for d in conversion.diagnostics if d.code == "PT007" and d.line == 10]
    assert note and "scaled_dot_product_attention" in note[0].message and "True" in note[0].message
    assert "import torch" not in conversion.code


def test_a_probe_alone_becomes_true():
    conversion = convert(PROBE.replace("{probe} and flash",
                                       "hasattr(torch.nn.functional, 'scaled_dot_product_attention')"))
    assert "self.flash = True\n" in conversion.code


@pytest.mark.parametrize("probe", ["hasattr(torch, 'compile')", "hasattr(torch.nn.functional, 'no_such_op')",
                                   "hasattr(F, name)"])
def test_a_probe_of_what_porter_does_not_convert_stays_reported(probe):
    conversion = convert(PROBE.replace("{probe}", probe))
    assert any(d.severity.name == "ERROR" and d.line == 10 for d in conversion.diagnostics), conversion.diagnostics
    assert probe in conversion.code
