"""The emitted fast_partial (porter/emitted_training.py): nnx.cached_partial's contract at jax.jit's cost."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from porter.emitted_training import fast_partial


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(3, 2, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.calls = nnx.Variable(jnp.zeros((), jnp.int32))

    def __call__(self, x):
        self.calls[...] += 1
        return self.drop(self.fc(x))


def train_step(model, optimizer, x, y):
    def loss_fn(model):
        return jnp.mean((model(x) - y) ** 2)

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def build():
    model = Net(nnx.Rngs(0))
    return model, nnx.Optimizer(model, optax.adam(0.1), wrt=nnx.Param)


def test_steps_match_nnx_cached_partial_and_update_the_objects():
    x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    model, optimizer = build()
    reference_model, reference_optimizer = build()
    fast = fast_partial(nnx.jit(train_step), model, optimizer)
    cached = nnx.cached_partial(nnx.jit(train_step), reference_model, reference_optimizer)
    for _ in range(3):
        assert float(fast(x, y)) == float(cached(x, y))
    # parameters, optimizer state, a counter the forward increments and the dropout's rng count all moved
    np.testing.assert_array_equal(model.fc.kernel[...], reference_model.fc.kernel[...])
    assert not np.array_equal(model.fc.kernel[...], build()[0].fc.kernel[...])
    assert int(optimizer.step[...]) == int(reference_optimizer.step[...]) == 3
    assert int(model.calls[...]) == 3
    assert int(model.drop.rngs.count[...]) == int(reference_model.drop.rngs.count[...]) == 3


def test_values_written_between_calls_reach_the_step():
    """A learning rate set by the script (set_learning_rate) is read at every call, not frozen at binding."""
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.inject_hyperparams(optax.sgd)(learning_rate=0.0), wrt=nnx.Param)
    step = fast_partial(train_step, model, optimizer)
    before = np.asarray(model.kernel[...])
    step(jnp.ones((1, 2)), jnp.ones((1, 1)))
    np.testing.assert_array_equal(model.kernel[...], before)  # rate 0: nothing moves
    optimizer.opt_state.hyperparams["learning_rate"][...] = jnp.asarray(0.5)
    step(jnp.ones((1, 2)), jnp.ones((1, 1)))
    assert not np.array_equal(model.kernel[...], before)


def test_a_step_that_adds_a_variable_is_refused():
    model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))

    def grows(model, x):
        model.extra = nnx.Param(x)
        return x

    with pytest.raises(ValueError, match="added or removed Variables"):
        fast_partial(grows, model)(jnp.ones(2))


def test_static_arguments_and_a_second_binding_reuse_the_compiled_step_with_their_own_values():
    traces = []

    def scaled(model, x, *, scale):
        traces.append(scale)
        return model(x) * scale

    first, second = nnx.Linear(2, 3, rngs=nnx.Rngs(0)), nnx.Linear(2, 3, rngs=nnx.Rngs(1))
    x = jnp.ones((1, 2))
    out = fast_partial(scaled, first, static_argnames=("scale",))(x, scale=2)
    np.testing.assert_allclose(out, first(x) * 2, rtol=1e-6)
    out = fast_partial(scaled, second, static_argnames=("scale",))(x, scale=2)  # generate() called again
    np.testing.assert_allclose(out, second(x) * 2, rtol=1e-6)  # the second model's weights, not the first's
    assert traces == [2]
    fast_partial(scaled, second, static_argnames=("scale",))(x, scale=3)  # a new static value: traced again
    wider = nnx.Linear(2, 4, rngs=nnx.Rngs(0))  # another structure's values: traced again
    np.testing.assert_allclose(fast_partial(scaled, wider, static_argnames=("scale",))(x, scale=3), wider(x) * 3,
                               rtol=1e-6)
    assert traces == [2, 3, 3]
