"""The seed's CIFAR-10 LeNet (fixtures/models/seed_lenet.py:Net), written by hand in Flax NNX.

Channels-last inside: the NCHW input is transposed to NHWC once, the convs and
pools run on NHWC, and the flatten takes (H, W, C) order; fc1's rows are
permuted when the torch weights are loaded, so the function is torch's.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .mlp import set_linear


class Net(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, 6, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, kernel_size=(5, 5), padding="VALID", rngs=rngs)
        self.fc1 = nnx.Linear(5 * 5 * 16, 120, rngs=rngs)
        self.fc2 = nnx.Linear(120, 84, rngs=rngs)
        self.fc3 = nnx.Linear(84, 10, rngs=rngs)

    def __call__(self, x):  # x: (N, 3, 32, 32), torch's layout
        x = jnp.transpose(x, (0, 2, 3, 1))
        x = nnx.max_pool(jax.nn.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(jax.nn.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)  # (H, W, C) order
        x = jax.nn.relu(self.fc1(x))
        x = jax.nn.relu(self.fc2(x))
        return self.fc3(x)


def set_conv(layer: nnx.Conv, state_dict, prefix: str) -> None:
    """torch's OIHW weight is flax's HWIO kernel."""
    layer.kernel[...] = np.asarray(state_dict[f"{prefix}.weight"]).transpose(2, 3, 1, 0)
    layer.bias[...] = np.asarray(state_dict[f"{prefix}.bias"])


def load_torch_weights(model: Net, state_dict) -> None:
    set_conv(model.conv1, state_dict, "conv1")
    set_conv(model.conv2, state_dict, "conv2")
    set_linear(model.fc1, state_dict, "fc1")
    # torch flattens (C, H, W), this model (H, W, C): reorder fc1's input rows to match
    chw = np.arange(16 * 5 * 5).reshape(16, 5, 5)
    model.fc1.kernel[...] = np.asarray(model.fc1.kernel[...])[chw.transpose(1, 2, 0).reshape(-1)]
    set_linear(model.fc2, state_dict, "fc2")
    set_linear(model.fc3, state_dict, "fc3")
