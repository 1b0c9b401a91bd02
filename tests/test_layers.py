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


def test_layer_classes_in_a_module_level_table_become_constructors_taking_rngs():
    """A module-level table of layer classes (a registry: porter/convert/registries.py) holds functions with
    torch's arguments and rngs, each building the converted layer; the report says so where the table is."""
    import numpy as np
    import torch
    from flax import nnx
    from porter import convert_source

    source = (
        "import torch.nn as nn\n\n\n"
        "LAYERS = {'norm': nn.BatchNorm2d, 'act': nn.GELU}\n"
    )
    conversion = convert_source(source)
    messages = {d.col: d.message for d in conversion.diagnostics if d.code == "PT007" and d.line == 4}
    assert "torch.nn.BatchNorm2d used as a value (a layer constructor) becomes a function with torch's " \
        "arguments (num_features, eps, momentum, affine, track_running_stats, device, dtype) and rngs" in messages[19]
    assert "torch.nn.GELU used as a value" in messages[42]
    namespace: dict = {}
    exec(compile(conversion.code, "converted.py", "exec"), namespace)
    norm = namespace["LAYERS"]["norm"](3, rngs=nnx.Rngs(0))
    assert isinstance(norm, nnx.Module) and norm.scale[...].shape == (3,)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    expected = torch.nn.BatchNorm2d(3)(torch.from_numpy(x)).detach().numpy()  # train mode: batch statistics
    np.testing.assert_allclose(np.asarray(norm(x)), expected, rtol=1e-5, atol=1e-5)
    gelu = namespace["LAYERS"]["act"](rngs=nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(gelu(x)), torch.nn.GELU()(torch.from_numpy(x)).numpy(), rtol=1e-6, atol=1e-6)
