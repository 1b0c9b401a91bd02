"""The emitted grad_scaler (porter/emitted_training.py) step by step against torch.amp.GradScaler('cpu'):
the same model, loss and AdamW, overflow injected into the scaled gradients at chosen steps (as float16
gradients overflow) or produced by a scale too large for the loss; per step the scale, whether the optimizer
stepped, and the parameters must equal torch's. The jax side runs as a converted training script would:
nnx.Optimizer over the transformation, the loss scaled by opt_state["scale"], one jitted step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from porter.emitted_training import grad_scaler

LR, WEIGHT_DECAY = 1e-2, 1e-2
STEPS = 30


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.fc2 = torch.nn.Linear(8, 1)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class Net(nnx.Module):
    def __init__(self, rngs):
        self.fc1 = nnx.Linear(4, 8, rngs=rngs)
        self.fc2 = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x):
        return self.fc2(jnp.tanh(self.fc1(x)))


def copy_weights(torch_net, net):
    for name in ("fc1", "fc2"):
        layer = getattr(torch_net, name)
        getattr(net, name).kernel[...] = jnp.asarray(layer.weight.detach().numpy().T)
        getattr(net, name).bias[...] = jnp.asarray(layer.bias.detach().numpy())


def params_of(net):
    return [np.asarray(getattr(net, name).kernel[...]).T for name in ("fc1", "fc2")] + \
           [np.asarray(getattr(net, name).bias[...]) for name in ("fc1", "fc2")]


def torch_params_of(torch_net):
    return [torch_net.fc1.weight, torch_net.fc2.weight, torch_net.fc1.bias, torch_net.fc2.bias]


def inject(grad, kind):
    """The scaled gradient of a float16 step that overflowed: one entry inf (or nan), torch's weight[0, 0]."""
    return grad.at[0, 0].set(jnp.inf if kind == "inf" else jnp.nan) if kind else grad


def run_torch(batches, overflow, loss_factor, **scaler_args):
    torch.manual_seed(0)
    net = TorchNet()
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler("cpu", **scaler_args)
    rows = []
    for step, (x, y) in enumerate(batches):
        loss = ((net(torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).mean() * loss_factor
        scaler.scale(loss).backward()
        if overflow.get(step):
            with torch.no_grad():
                net.fc1.weight.grad.view(-1)[0] = float("inf") if overflow[step] == "inf" else float("nan")
        scale_used = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        stepped = int(optimizer.state[net.fc1.weight]["step"]) if net.fc1.weight in optimizer.state else 0
        rows.append((scale_used, stepped, [p.detach().numpy().copy() for p in torch_params_of(net)]))
    return initial, rows, scaler.get_scale()


def run_jax(initial, batches, overflow, loss_factor, **scaler_args):
    torch_net = TorchNet()
    torch_net.load_state_dict(initial)
    net = Net(nnx.Rngs(0))
    copy_weights(torch_net, net)
    tx = grad_scaler(optax.adamw(LR, eps=1e-8, weight_decay=WEIGHT_DECAY), **scaler_args)
    optimizer = nnx.Optimizer(net, tx, wrt=nnx.Param)

    @nnx.jit(static_argnames="kind")
    def train_step(net, optimizer, x, y, kind):
        def loss_fn(net):
            loss = jnp.mean((net(x) - y) ** 2) * loss_factor
            return loss * optimizer.opt_state["scale"][...]  # scaler.scale(loss)
        grads = nnx.grad(loss_fn)(net)
        grads["fc1"]["kernel"][...] = inject(grads["fc1"]["kernel"][...], kind)
        optimizer.update(net, grads)

    rows = []
    for step, (x, y) in enumerate(batches):
        scale_used = float(optimizer.opt_state["scale"][...])
        train_step(net, optimizer, jnp.asarray(x), jnp.asarray(y), overflow.get(step))
        stepped = int(optax.tree_utils.tree_get(nnx.to_pure_dict(nnx.state(optimizer, nnx.OptState)), "count"))
        rows.append((scale_used, stepped, params_of(net)))
    return rows, float(optimizer.opt_state["scale"][...])


def batches(steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((16, 4)).astype(np.float32), rng.standard_normal((16, 1)).astype(np.float32))
            for _ in range(steps)]


def compare(overflow, loss_factor=1.0, **scaler_args):
    data = batches()
    initial, torch_rows, torch_final = run_torch(data, overflow, loss_factor, **scaler_args)
    jax_rows, jax_final = run_jax(initial, data, overflow, loss_factor, **scaler_args)
    for step, (torch_row, jax_row) in enumerate(zip(torch_rows, jax_rows)):
        assert jax_row[0] == torch_row[0], f"scale at step {step}"
        assert jax_row[1] == torch_row[1], f"optimizer steps taken by step {step}"
        for torch_param, jax_param in zip(torch_row[2], jax_row[2]):
            np.testing.assert_allclose(jax_param, torch_param, rtol=1e-5, atol=1e-6, err_msg=f"step {step}")
    assert jax_final == torch_final
    return [row[0] for row in torch_rows], [row[1] for row in torch_rows]


def test_injected_overflow_skips_the_step_and_backs_off_as_torch():
    overflow = {3: "inf", 4: "inf", 10: "nan", 17: "inf", 18: "inf", 19: "inf", 27: "inf"}
    scales, taken = compare(overflow, init_scale=2.0**16, growth_interval=4)
    skipped = [step for step in range(STEPS) if taken[step] == (taken[step - 1] if step else 0)]
    assert skipped == sorted(overflow)  # torch itself skipped exactly the injected steps
    changes = {np.sign(after - before) for before, after in zip(scales, scales[1:])}
    assert changes == {-1, 0, 1}  # grown and backed off on the way


def test_default_rule_grows_only_after_growth_interval_finite_steps():
    scales, taken = compare({}, init_scale=8.0, growth_factor=4.0, backoff_factor=0.25, growth_interval=7)
    assert scales[:7] == [8.0] * 7 and scales[7:14] == [32.0] * 7 and scales[14] == 128.0 and taken[-1] == STEPS


def test_a_scale_too_large_for_the_loss_overflows_and_backs_off_to_a_finite_one():
    # no injection: the scaled loss itself overflows float32 until the scale is small enough
    # backoff by 2**-20: a scale jumps past the borderline range where torch and XLA order the backward
    # differently (one overflows an intermediate the other does not); the scaler, not autodiff, is compared
    scales, taken = compare({}, loss_factor=1e3, init_scale=2.0**127, backoff_factor=2.0**-20, growth_interval=50)
    assert taken[0] == 0 and taken[-1] > 0 and scales[-1] < 2.0**127


def test_growth_that_would_overflow_the_scale_keeps_it():
    scales, _ = compare({}, loss_factor=1e-30, init_scale=2.0**127, growth_interval=1)
    assert scales == [2.0**127] * STEPS


def test_disabled_scaler_is_the_inner_optimizer():
    scales, taken = compare({}, enabled=False)
    assert scales == [1.0] * STEPS and taken[-1] == STEPS


@pytest.mark.parametrize("kind", ["inf", "nan"])
def test_the_skipped_step_leaves_parameters_and_adam_state_untouched(kind):
    tx = grad_scaler(optax.adamw(1e-1), init_scale=4.0)
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    bad = {"w": jnp.array([1.0, jnp.inf if kind == "inf" else jnp.nan, 1.0])}
    skipped_updates, skipped_state = tx.update(bad, state, params)
    assert not np.any(np.asarray(skipped_updates["w"]))
    jax.tree.map(np.testing.assert_array_equal, skipped_state["inner"], state["inner"])
    assert float(skipped_state["scale"]) == 2.0 and int(skipped_state["growth_tracker"]) == 0
