"""The seed's MNIST MLP (fixtures/models/seed_mlp.py:Model), written by hand in Flax NNX."""

import jax
import numpy as np
from flax import nnx


class Model(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(784, 128, rngs=rngs)
        self.fc2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jax.nn.relu(self.fc1(x)))


def set_linear(layer: nnx.Linear, state_dict, prefix: str) -> None:
    """torch's (out, in) weight is flax's (in, out) kernel."""
    layer.kernel[...] = np.asarray(state_dict[f"{prefix}.weight"]).T
    if f"{prefix}.bias" in state_dict:
        layer.bias[...] = np.asarray(state_dict[f"{prefix}.bias"])


def load_torch_weights(model: Model, state_dict) -> None:
    for name in ("fc1", "fc2"):
        set_linear(getattr(model, name), state_dict, name)
