"""Weight layouts: how a torch parameter's array becomes the flax variable's.

Rules name a layout by its key in LAYOUTS (rules/torch_nn.toml, `layout`),
so the converter and the weight loader share one source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Layout:
    name: str
    to_flax: Callable[[np.ndarray], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]
    doc: str
    # converted code reading the flax variable (its source text, the layer's spatial dims) in torch's layout:
    # `self.fc.weight` in a module's code becomes `self.fc.kernel[...].T`
    torch_code: Callable[[str, int], str] = lambda variable, spatial: variable

    def flax_shape(self, torch_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.to_flax(np.empty(torch_shape, dtype=np.int8)).shape


def _conv_kernel_to_flax(w: np.ndarray) -> np.ndarray:
    # (out, in, *spatial) -> (*spatial, in, out)
    return np.transpose(w, (*range(2, w.ndim), 1, 0))


def _conv_kernel_to_torch(k: np.ndarray) -> np.ndarray:
    return np.transpose(k, _conv_kernel_torch_order(k.ndim - 2))


def _conv_kernel_torch_order(spatial: int) -> tuple[int, ...]:
    # (*spatial, in, out) -> (out, in, *spatial)
    return (spatial + 1, spatial, *range(spatial))


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in [
        Layout("same", lambda a: a, lambda a: a, "Same shape and order in both frameworks."),
        Layout("matrix_transpose", lambda a: np.swapaxes(a, 0, 1), lambda a: np.swapaxes(a, 0, 1),
               "torch (out, in) -> flax (in, out), as Linear.weight -> kernel.",
               lambda variable, spatial: f"{variable}[...].T"),
        Layout("conv_kernel", _conv_kernel_to_flax, _conv_kernel_to_torch,
               "torch (out, in/groups, *spatial) -> flax (*spatial, in/groups, out), as Conv.weight -> kernel.",
               lambda variable, spatial: f"jnp.transpose({variable}[...], {_conv_kernel_torch_order(spatial)})"),
    ]
}
