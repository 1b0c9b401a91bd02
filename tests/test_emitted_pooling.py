"""max_pool_nchw over windows that tile the input (stride = window, no padding): reduce_window's
maximum with a cheaper derivative rule (max_pool_tiles), which must still be torch's gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from porter.emitted import max_pool_nchw

POOLS = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


@pytest.mark.parametrize("shape,window", [
    ((2, 3, 8, 8), (2, 2)),
    ((2, 3, 9, 7), (2, 2)),  # a remainder no window covers: dropped, as torch's floor mode
    ((2, 3, 9), (3,)),
    ((2, 2, 4, 6, 6), (2, 3, 2)),
    ((3, 6, 6), (2, 2)),  # unbatched (C, H, W)
])
def test_tiled_max_pool_value_and_gradient_are_torchs_with_ties(shape, window):
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal(shape).astype(np.float32), 0)  # relu: many windows tie at zero
    x[..., :2] = 0.5  # and ties at a maximum
    tx = torch.from_numpy(x).requires_grad_()
    expected = POOLS[len(window)](tx, window)
    cotangent = rng.standard_normal(tuple(expected.shape)).astype(np.float32)
    (expected * torch.from_numpy(cotangent)).sum().backward()

    value = max_pool_nchw(jnp.asarray(x), window)
    grad = jax.jit(jax.grad(lambda a: (max_pool_nchw(a, window) * cotangent).sum()))(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(value), expected.detach().numpy())
    np.testing.assert_array_equal(np.asarray(grad), tx.grad.numpy())  # the first maximum of a window wins


def test_tiled_max_pool_gradient_is_not_select_and_scatter():
    """The point of the rule: jax differentiates reduce_window's max through select-and-gather /
    select-and-scatter, which XLA:CPU runs as four index arrays the size of the input and a scatter
    of all of them (about 3x slower for LeNet's pools than this argmax and gather)."""
    x = jnp.ones((4, 6, 28, 28), jnp.float32)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda a: max_pool_nchw(a, (2, 2)).sum()))(x))
    assert "argmax" in jaxpr and "select_and" not in jaxpr
    padded = str(jax.make_jaxpr(jax.grad(lambda a: max_pool_nchw(a, (2, 2), (2, 2), ((1, 1), (1, 1))).sum()))(x))
    assert "select_and" in padded  # the general path, as before


def test_tiled_max_pool_forward_mode_second_order_and_vmap():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 4, 4)).astype(np.float32))
    pool = lambda a: max_pool_nchw(a, (2, 2))  # noqa: E731
    _, tangent = jax.jvp(pool, (x,), (jnp.ones_like(x),))
    np.testing.assert_array_equal(np.asarray(tangent), np.ones((2, 3, 2, 2), np.float32))
    hessian = jax.hessian(lambda a: (pool(a) ** 2).sum())(x[0, 0])
    assert hessian.shape == (4, 4, 4, 4) and float(jnp.trace(hessian.reshape(16, 16))) == 2.0 * 4
    np.testing.assert_array_equal(np.asarray(jax.vmap(pool)(x)), np.asarray(pool(x)))


def test_other_pools_keep_reduce_window():
    """Overlapping or padded windows and integer arrays take the general path, unchanged."""
    x = torch.arange(-40, 0, dtype=torch.int32).reshape(1, 2, 4, 5)
    np.testing.assert_array_equal(np.asarray(max_pool_nchw(jnp.asarray(x.numpy()), (2, 2))),
                                  F.max_pool2d(x.float(), 2).int().numpy())
    y = np.random.default_rng(2).standard_normal((1, 2, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(max_pool_nchw(jnp.asarray(y), (3, 3), (2, 2), ((1, 1), (1, 1)))),
                               F.max_pool2d(torch.from_numpy(y), 3, 2, 1).numpy())
