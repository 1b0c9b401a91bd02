"""benchmarks/gpt_speed.py times the same computation on both sides: its check (losses with torch's weights
loaded, and after AdamW steps) passes on porter's conversion of fixtures/gpt/model.py and fails when the
converted model does not hold torch's weights."""

import pytest

from benchmarks import gpt_speed


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    T, F, _ = gpt_speed.load_models(tmp_path_factory.mktemp("gpt_speed"))
    return T, F


def test_the_converted_step_computes_torchs(models):
    assert "after 3 AdamW steps" in gpt_speed.check_same_computation(*models, batch=2)


def test_the_check_fails_without_torchs_weights(models, monkeypatch):
    monkeypatch.setattr(gpt_speed, "load_torch_state_dict", lambda model, state_dict: None)
    with pytest.raises(AssertionError, match="loss with torch's weights"):
        gpt_speed.check_same_computation(*models, batch=2)
