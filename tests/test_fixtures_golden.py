"""Fixtures convert to their reviewed golden output and report.

After an intended change, regenerate with PORTER_UPDATE_GOLDEN=1 and review the diff.
"""

import os
from pathlib import Path

import pytest

from porter import convert_source

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "fixtures" / "models").glob("*.py"))
EXPECTED = ROOT / "fixtures" / "expected"


def report(conversion) -> str:
    return "".join(d.format() + "\n" for d in conversion.diagnostics)


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_fixture_converts_to_golden_output(path):
    conversion = convert_source(path.read_text(), filename=f"fixtures/models/{path.name}")
    golden_code = EXPECTED / path.name
    golden_report = EXPECTED / f"{path.stem}.report.txt"
    if os.environ.get("PORTER_UPDATE_GOLDEN") == "1":
        golden_code.write_text(conversion.code)
        golden_report.write_text(report(conversion))
    assert conversion.code == golden_code.read_text()
    assert report(conversion) == golden_report.read_text()


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_converting_the_output_again_changes_nothing(path):
    once = convert_source(path.read_text()).code
    twice = convert_source(once)
    assert twice.code == once
    assert twice.diagnostics == []
