"""The float64 verdict (porter/check/conditioning.py): a float32 check that fails only where float32's own
rounding decides the result is explained; a conversion that computes something else is not."""

import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
from flax import nnx

from porter.check.equivalence import check_equivalence


class TGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2, bias=False)
        self.out = nn.Linear(2, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(x)))


class FGate(nnx.Module):
    """TGate by hand, with a ReLU whose derivative at exactly 0 is 1 (torch's is 0), or a leaky one."""

    def __init__(self, *, rngs: nnx.Rngs, slope: float = 0.0):
        self.fc = nnx.Linear(2, 2, use_bias=False, rngs=rngs)
        self.out = nnx.Linear(2, 3, rngs=rngs)
        self.slope = slope

    def __call__(self, x):
        h = self.fc(x)
        return self.out(jnp.where(h >= 0, h, self.slope * h))


def gate_model() -> TGate:
    torch.manual_seed(0)
    model = TGate()
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.25]]))
    return model


def test_a_gradient_decided_by_rounding_is_explained():
    # x = (0.1, 0.1): the first unit's pre-activation is exactly 0, where the two ReLUs' conventions differ;
    # one float32 rounding of x opens or closes that gate in torch itself
    x = np.full((1, 2), 0.1, np.float32)
    report = check_equivalence(gate_model(), FGate(rngs=nnx.Rngs(0)), x, layers=False)
    grad = report.row("input[0]", "grad input")
    assert grad.rel > 0.1  # far out of tolerance
    assert report.passed, report.format()
    assert grad.ok and grad.note.startswith("float32 rounding"), grad.note
    assert any(note.startswith("float64 verdict: 2 of 2") for note in report.notes), report.notes  # fc.weight too
    assert "2 by the float64 verdict" in report.format().splitlines()[-1]


def test_a_different_function_is_not_explained():
    x = np.random.default_rng(0).standard_normal((4, 2)).astype(np.float32)
    report = check_equivalence(gate_model(), FGate(rngs=nnx.Rngs(0), slope=0.01), x, layers=False)
    assert not report.passed
    assert all("not float32 rounding" in row.note for row in report.failures), report.format()
    assert any(note.startswith("float64 verdict: 0 of") for note in report.notes), report.notes


def test_the_verdict_runs_the_original_in_the_checks_mode():
    # train mode, one SGD step: the verdict starts from the original as the check found it, not as trained
    x = np.full((1, 2), 0.1, np.float32)
    report = check_equivalence(gate_model(), FGate(rngs=nnx.Rngs(0)), x, layers=False, mode="train", train_steps=1)
    assert report.row("input[0]", "grad input").note.startswith("float32 rounding")
    state = [row for row in report.rows if row.kind == "state"]
    assert state and all(not row.note.startswith("float32 rounding") for row in state)  # never judged


def test_the_converted_model_in_float64_agrees_with_the_original_in_float64():
    # the second witness: jax's 64-bit types on for the run, the model left in float32 afterwards
    from porter.check.equivalence import _converted_in_float64, _run_reference
    from porter.weights.loader import load_torch_state_dict

    torch_model, flax_model = gate_model(), FGate(rngs=nnx.Rngs(0))
    load_torch_state_dict(flax_model, torch_model.state_dict())
    x = np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32)
    cotangents = {"output": np.random.default_rng(2).standard_normal((4, 3)).astype(np.float32)}
    got = _converted_in_float64(torch_model, flax_model, [(0, x)], cotangents, None)
    exact = _run_reference(torch_model.double(), [(0, x.astype(np.float64))], "cpu", cotangents, False).arrays
    assert set(got) == set(exact) and len(got) == 5  # output, input grad, fc.weight, out.weight, out.bias
    for key, value in got.items():
        assert value.dtype == np.float64, key
        np.testing.assert_allclose(value, exact[key], rtol=1e-12, atol=1e-14)
    assert flax_model.fc.kernel[...].dtype == jnp.float32
    assert FGate(rngs=nnx.Rngs(0), slope=0.5)(jnp.ones((1, 2))).dtype == jnp.float32  # x64 switched off again
