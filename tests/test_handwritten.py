"""The hand-written NNX models of benchmarks/handwritten/ compute what porter's conversions compute.

`benchmarks/models.py` compares porter's output with these models, so they must
be the same function on the same weights: each gets the torch original's weights
through its own loader, the conversion through porter's, and the outputs agree.
The models are written as a Flax user would (NHWC convolutions, einsum attention),
not as porter emits them.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from porter import load_torch_state_dict
from porter.check.modelspec import import_file

ROOT = Path(__file__).resolve().parent.parent
GPT = dict(vocab_size=256, n_embd=128, n_head=4, n_layer=2, block_size=64)
CASES = [  # fixture, class, constructor arguments, hand-written module, input
    ("seed_mlp.py", "Model", {}, "mlp", ("float", (3, 784))),
    ("seed_lenet.py", "Net", {}, "lenet", ("float", (3, 3, 32, 32))),
    ("transformer_block.py", "TinyGPT", GPT, "gpt", ("tokens", (2, 64))),
]


def handwritten_module(name: str):
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.handwritten.{name}")


def make_input(kind: str, shape: tuple) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "tokens":
        return rng.integers(0, GPT["vocab_size"], size=shape).astype(np.int32)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("fixture,cls,kwargs,hand,spec", CASES, ids=[c[3] for c in CASES])
def test_handwritten_equals_converted_on_the_same_weights(fixture, cls, kwargs, hand, spec):
    torch_module = import_file(ROOT / "fixtures" / "models" / fixture,
                               preseed={"torch": torch, "nn": torch.nn, "F": torch.nn.functional})
    torch.manual_seed(0)
    torch_model = getattr(torch_module, cls)(**kwargs).eval()
    state_dict = torch_model.state_dict()
    converted = getattr(import_file(ROOT / "fixtures" / "expected" / fixture), cls)(**kwargs, rngs=nnx.Rngs(0))
    load_torch_state_dict(converted, state_dict)
    module = handwritten_module(hand)
    handwritten = getattr(module, cls)(**kwargs, rngs=nnx.Rngs(1))  # other init: the loader must set everything
    module.load_torch_weights(handwritten, state_dict)
    converted.eval()
    handwritten.eval()

    x = make_input(*spec)
    expected = np.asarray(converted(x))
    np.testing.assert_allclose(np.asarray(handwritten(x)), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        original = torch_model(torch.from_numpy(x.astype(np.int64) if spec[0] == "tokens" else x)).numpy()
    np.testing.assert_allclose(np.asarray(handwritten(x)), original, rtol=1e-5, atol=1e-5)


def test_handwritten_gpt_trains_with_dropout():
    """In train mode the hand-written GPT applies dropout (as the original and the conversion do),
    so its timed train step does the same work."""
    module = handwritten_module("gpt")
    model = module.TinyGPT(**GPT, rngs=nnx.Rngs(0))
    x = make_input("tokens", (1, 16))
    model.eval()
    eval_out = np.asarray(model(x))
    model.train()
    assert not np.allclose(np.asarray(model(x)), eval_out)
    grads = nnx.grad(lambda m: m(x).sum())(model)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
