"""Every rule's [[rule.verify]] cases, run against torch (porter/rules/verify.py).

Adding a rule means adding data: its verify cases become tests here. The
hypothesis profile (tests/conftest.py) sets how many examples each case draws.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from porter.rules.loader import load_rules
from porter.rules.verify import run_case

# functions, tensor methods and constants; layer cases run inside a module with loaded weights (tests/test_layers.py)
LAYER_FILES = ("torch_nn.toml", "einops.toml")
RULES = [rule for rule in load_rules().rules if rule.kind in ("function", "method", "constant")
         and rule.file not in LAYER_FILES]
BY_ID = {rule.id: rule for rule in RULES}
CASES = [(rule.id, i, rule.source[0]) for rule in RULES for i in range(len(rule.verify))]


# JAX compiles every new shape (about 0.05 s of CPU each), so each case draws a third of the profile's
# examples (at least 3): every rule runs on every CI run (profile 'ci': 3), more locally ('dev': 16).
EXAMPLES = max(3, settings().max_examples // 3)


@pytest.mark.parametrize("rule_id,index", [c[:2] for c in CASES], ids=[f"{r}-{i}:{s}" for r, i, s in CASES])
@settings(max_examples=EXAMPLES, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_rule_matches_torch(rule_id, index, data):
    rule = BY_ID[rule_id]
    run_case(rule, rule.verify[index], data)
