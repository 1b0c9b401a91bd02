"""Every layer rule (rules/torch_nn.toml, rules/einops.toml) against torch, driven by its
`[[rule.verify]]` cases: the argument domain is data in the rule; see tests/layer_harness.py.

Adding a layer is data: a rule with a verify case. The same cases are plain
functions of their inputs for stateless layers (`nn.ReLU()(x)`), so the
function harness can run those too; layers with parameters need the weights
loaded, which is what this harness adds.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layer_harness import run_layer_case
from porter.rules.loader import load_rules

LAYER_FILES = ("torch_nn.toml", "einops.toml")
RULES = [rule for rule in load_rules().rules if rule.file in LAYER_FILES]
BY_ID = {rule.id: rule for rule in RULES}
CASES = [(rule.id, i) for rule in RULES for i in range(len(rule.verify))]
# a few examples per case keep CI in budget: every rule is exercised on every run, more locally
EXAMPLES = max(3, settings().max_examples // 3)
# torch's own advice (padding='same' with even kernels, dropout with one RNN layer) is not a finding here
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_every_layer_rule_has_a_verify_case():
    assert [rule.id for rule in RULES if not rule.verify] == []


@pytest.mark.parametrize("rule_id,index", CASES, ids=[f"{r}-{i}:{BY_ID[r].source[0].rsplit('.', 1)[-1]}"
                                                      for r, i in CASES])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_layer_rule_matches_torch(rule_id, index, data):
    rule = BY_ID[rule_id]
    run_layer_case(rule, rule.verify[index], data)


# Normalisation layers also in train mode: batch statistics in the output, and the running statistics
# after one training forward and SGD step (porter.check_equivalence(mode="train", train_steps=1) compares
# every state_dict entry). The rules' own verify cases give the domain.
TRAIN_MODE_RULES = ["PT104", "PT105", "PT127", "PT106", "PT128", "PT129", "PT130", "PT131", "PT132"]
TRAIN_CASES = [(rule_id, i) for rule_id in TRAIN_MODE_RULES for i, case in enumerate(BY_ID[rule_id].verify)
               if "SyncBatchNorm" not in case.code]  # torch trains SyncBatchNorm only on GPUs, in a process group


@pytest.mark.parametrize("rule_id,index", TRAIN_CASES, ids=[f"{r}-{i}:{BY_ID[r].source[0].rsplit('.', 1)[-1]}"
                                                            for r, i in TRAIN_CASES])
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_normalisation_layer_matches_torch_in_train_mode(rule_id, index, data):
    rule = BY_ID[rule_id]
    run_layer_case(rule, rule.verify[index], data, mode="train", train_steps=1)


def test_layer_class_used_as_a_value_is_reported_with_its_converted_form():
    """Outside code that builds layers (here a module-level table) `nn.BatchNorm2d` as a value stays: what
    arrives where it is used cannot be known; the report shows what a call of the class becomes, from the
    rule itself. (Where layers are built it becomes a function: tests/test_real_patterns.py.)"""
    from porter import convert_source

    source = (
        "import torch.nn as nn\n\n\n"
        "LAYERS = {'norm': nn.BatchNorm2d, 'act': nn.GELU}\n"
    )
    conversion = convert_source(source)
    assert "LAYERS = {'norm': nn.BatchNorm2d, 'act': nn.GELU}" in conversion.code
    messages = {d.message.split(" is used")[0]: d for d in conversion.diagnostics if d.code == "PT003"}
    assert "`BatchNorm2d(num_features)` converts to `TorchBatchNorm(num_features, epsilon=1e-05, momentum=0.9, " \
        "axis=1, use_fast_variance=False, rngs=rngs)`" in messages["torch.nn.BatchNorm2d"].message
    assert "`GELU()` converts to `partial(jax.nn.gelu, approximate=False)`, a function, not a layer" in \
        messages["torch.nn.GELU"].message
