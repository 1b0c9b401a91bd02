"""End to end on every fixture model: convert, load torch's weights strictly,
and compare eval outputs (rel <= 1e-5) and gradients (rel <= 1e-4) with torch."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from flax import nnx

from porter import check_equivalence, convert_source, load_torch_state_dict
from porter.check.modelspec import import_file

ROOT = Path(__file__).resolve().parent.parent
CONVENTIONAL = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional}


@dataclass
class Case:
    file: str
    name: str
    inputs: callable
    kwargs: dict = field(default_factory=dict)
    instance: bool = False  # the fixture builds the model at module level


def floats(*shape):
    return lambda rng: (rng.standard_normal(shape).astype(np.float32),)


def token_ids(*shape, high):
    return lambda rng: (rng.integers(0, high, shape).astype(np.int64),)


CASES = [
    Case("seed_mlp.py", "Model", floats(4, 784)),
    Case("seed_lenet.py", "Net", floats(4, 3, 32, 32)),
    Case("seed_linear_regression.py", "model", floats(50, 1), instance=True),
    Case("transformer_block.py", "Block", floats(2, 16, 32), dict(n_embd=32, n_head=4, block_size=16)),
    Case("transformer_block.py", "TinyGPT", token_ids(2, 12, high=50),
         dict(vocab_size=50, n_embd=32, n_head=4, n_layer=2, block_size=16)),
    Case("conv_bn_net.py", "ConvBNNet", floats(2, 3, 16, 16)),
    Case("op_zoo.py", "Zoo", lambda rng: (*floats(2, 3, 8, 8)(rng), *floats(2, 6, 8)(rng))),
]


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights unlike any initialiser (so a missed transpose or a swapped scale/bias shows),
    and batch-norm statistics far from 0 and 1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen))
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


def build_pair(case: Case, tmp_path: Path):
    source = ROOT / "fixtures" / "models" / case.file
    torch_module = import_file(source, preseed=CONVENTIONAL)
    converted = tmp_path / f"converted_{case.file}"
    converted.write_text(convert_source(source.read_text()).code)
    flax_module = import_file(converted)
    if case.instance:
        return getattr(torch_module, case.name), getattr(flax_module, case.name)
    torch.manual_seed(0)
    torch_model = getattr(torch_module, case.name)(**case.kwargs)
    flax_model = getattr(flax_module, case.name)(**case.kwargs, rngs=nnx.Rngs(0))
    return torch_model, flax_model


@pytest.mark.parametrize("case", CASES, ids=[f"{c.file}:{c.name}" for c in CASES])
def test_converted_fixture_matches_torch(case, tmp_path):
    torch_model, flax_model = build_pair(case, tmp_path)
    randomize(torch_model, seed=1)
    inputs = case.inputs(np.random.default_rng(2))
    report = check_equivalence(torch_model, flax_model, *inputs)
    print(report.format())
    assert report.passed, report.format()
    outputs = [r for r in report.rows if r.kind == "output"]
    grads = [r for r in report.rows if r.kind != "output"]
    assert outputs and grads
    assert max(r.rel for r in outputs) <= 1e-5
    assert max(r.rel for r in grads) <= 1e-4
    n_params = sum(1 for _ in torch_model.parameters())
    assert len([r for r in grads if r.kind == "grad param"]) == n_params


@pytest.mark.parametrize("case", CASES, ids=[f"{c.file}:{c.name}" for c in CASES])
def test_strict_load_of_the_original_state_dict(case, tmp_path):
    torch_model, flax_model = build_pair(case, tmp_path)
    report = load_torch_state_dict(flax_model, torch_model.state_dict(), strict=True)
    assert report.ok


def test_a_wrong_conversion_is_caught(tmp_path):
    """The check can fail: swap the LeNet's activation for tanh in the converted code."""
    case = CASES[1]
    torch_model, _ = build_pair(case, tmp_path)
    code = (tmp_path / "converted_seed_lenet.py").read_text().replace("jax.nn.relu(self.fc1", "jnp.tanh(self.fc1")
    broken = tmp_path / "broken.py"
    broken.write_text(code)
    flax_model = import_file(broken).Net(rngs=nnx.Rngs(0))
    report = check_equivalence(torch_model, flax_model, *case.inputs(np.random.default_rng(2)))
    assert not report.passed
