"""Optimizers and learning-rate schedulers: what porter emits trains step for step like torch.

Each case is a small torch script (a model, an optimizer, maybe a scheduler).
torch runs it; porter converts it and the converted script runs too; the
converted model gets the torch model's initial weights; then both take the
same 20 steps on the same batches (a regression loss, float32), stepping the
scheduler after every optimizer step as the torch code would (or every 5 steps,
"per epoch"). Stated float32 tolerances, checked at every step and at the end:

- learning rates (get_last_lr) agree to 1e-6 relative (the optax schedule is
  evaluated in float32);
- the loss at every step and the final parameters agree to 1e-5 relative to the
  largest torch magnitude (max |jax - torch| / max |torch|, per tensor).

The float32 difference is rounding only: in float64 optax.adam and torch's Adam
agree to 1e-15 on the same steps (learning rates up to 0.01 here; at 0.1 Adam
amplifies float32 rounding past 1e-5 in 25 steps, in float64 it does not).
"""

import functools
import textwrap

import jax
import jax.numpy as jnp
import libcst as cst
import numpy as np
import pytest
import torch
from flax import nnx

from porter import convert_source, load_torch_state_dict
from porter.convert.context import ConversionContext
from porter.convert.training_builders import clip_transform, model_of_params
from porter.emitted_training import fast_partial
from porter.rules.loader import load_rules

MODEL = textwrap.dedent("""\
    import torch
    import torch.nn as nn
    import torch.optim as optim


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(4, 4)
            self.fc2 = nn.Linear(4, 4)
            self.fc3 = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc3(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


    net = Net()
    """)
STEPS = 20
LR_RTOL = 1e-6
RTOL = 1e-5


def _convert_and_build(snippet: str):
    source = MODEL + textwrap.dedent(snippet)
    torch.manual_seed(0)
    torch_namespace = {}
    exec(compile(source, "<torch>", "exec"), torch_namespace)
    conversion = convert_source(source)
    errors = [d for d in conversion.diagnostics if d.severity.value == "error"]
    assert not errors, (errors, conversion.code)
    assert "import torch" not in conversion.code, conversion.code
    jax_namespace = {}
    exec(compile(conversion.code, "<converted>", "exec"), jax_namespace)
    load_torch_state_dict(jax_namespace["net"], torch_namespace["net"].state_dict())
    return torch_namespace, jax_namespace, conversion.code


@nnx.jit
def _jax_step(net, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda model: jnp.mean((model(x) - y) ** 2))(net)
    optimizer.update(net, grads)
    return loss


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(graphdef, params, x, y):
    return jax.value_and_grad(lambda p: jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2))(params)


def _eager_step(net, optimizer):
    """The gradient jitted once for all cases (same model), the optimizer update run eagerly: one XLA
    compilation per optax operation and shape, shared by every case, instead of one per case."""

    def step(x, y):
        loss, grads = _loss_and_grads(*nnx.split(net), x, y)
        optimizer.update(net, grads)
        return loss

    return step


def _rel(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def train_both(snippet: str, steps: int = STEPS, every: int = 1, metric: bool = False, jit: bool = False) -> str:
    """Runs the torch script and its conversion side by side; asserts they agree; returns the converted code.

    `jit`: the step as the training pass emits it (nnx.jit through fast_partial), so the
    scheduler's writes must reach the compiled step's state.
    """
    t, j, code = _convert_and_build(snippet)
    if jit:
        jax_step = fast_partial(_jax_step, j["net"], j["optimizer"])
    else:
        jax_step = _eager_step(j["net"], j["optimizer"])
    rng = np.random.default_rng(0)
    scheduled = "scheduler" in t
    for step in range(steps):
        x = rng.standard_normal((16, 4)).astype(np.float32)
        y = rng.standard_normal((16, 4)).astype(np.float32)
        t["optimizer"].zero_grad()
        torch_loss = ((t["net"](torch.from_numpy(x)) - torch.from_numpy(y)) ** 2).mean()
        torch_loss.backward()
        t["optimizer"].step()
        jax_loss = jax_step(jnp.asarray(x), jnp.asarray(y))
        assert _rel(jax_loss, torch_loss.item()) <= RTOL, (step, float(jax_loss), torch_loss.item())
        if scheduled and (step + 1) % every == 0:
            if metric:
                t["scheduler"].step(torch_loss.item())
                j["scheduler"].step(float(jax_loss))
            else:
                t["scheduler"].step()
                j["scheduler"].step()
            torch_lrs, jax_lrs = t["scheduler"].get_last_lr(), j["scheduler"].get_last_lr()
            assert len(torch_lrs) == len(jax_lrs)
            for a, b in zip(jax_lrs, torch_lrs):
                assert abs(a - b) <= LR_RTOL * max(abs(b), 1e-12), (step, jax_lrs, torch_lrs)
    for name, value in t["net"].state_dict().items():
        layer, kind = name.split(".")
        module = getattr(j["net"], layer)
        actual = np.asarray(module.kernel[...]).T if kind == "weight" else np.asarray(module.bias[...])
        assert _rel(actual, value.numpy()) <= RTOL, (name, _rel(actual, value.numpy()))
    return code


# ----------------------------------------------------------------------------
# Optimizers

OPTIMIZERS = [
    "optimizer = optim.SGD(net.parameters(), lr=0.1)",
    "optimizer = optim.SGD(net.parameters(), lr=0.05, momentum=0.9)",
    "optimizer = optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)",
    "optimizer = optim.Adam(net.parameters(), lr=0.01)",
    "optimizer = optim.Adam(net.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)",
    "optimizer = optim.Adam(net.parameters(), lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)",
    "optimizer = optim.AdamW(net.parameters(), lr=0.01)",
    "optimizer = optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.5)",
    "optimizer = optim.RMSprop(net.parameters(), lr=0.01)",
    "optimizer = optim.RMSprop(net.parameters(), lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01)",
    "optimizer = optim.Adagrad(net.parameters(), lr=0.1)",
    "optimizer = optim.Adagrad(net.parameters(), lr=0.1, initial_accumulator_value=0.1, eps=1e-8, weight_decay=0.01)",
    "optimizer = optim.Adadelta(net.parameters())",
    "optimizer = optim.Adadelta(net.parameters(), lr=0.5, rho=0.8, weight_decay=0.1)",
    "optimizer = optim.Adamax(net.parameters(), lr=0.01, weight_decay=0.01)",
    "optimizer = optim.NAdam(net.parameters(), lr=0.01)",
    "optimizer = optim.NAdam(net.parameters(), lr=0.01, weight_decay=0.1, momentum_decay=0.01)",
    "optimizer = optim.NAdam(net.parameters(), lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)",
    "optimizer = optim.RAdam(net.parameters(), lr=0.01)",
    "optimizer = optim.RAdam(net.parameters(), lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)",
    "optimizer = optim.RAdam(net.parameters(), lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)",
    # parameter groups: per-group learning rate, weight decay, betas
    "optimizer = optim.SGD([{'params': net.fc2.parameters(), 'lr': 0.01}, {'params': net.fc1.parameters()}], "
    "lr=0.05, momentum=0.9)",
    "optimizer = optim.Adam([{'params': net.fc1.parameters(), 'weight_decay': 0.1}, "
    "{'params': net.fc2.parameters(), 'lr': 0.005, 'betas': (0.8, 0.99)}], lr=0.01)",
    "optimizer = optim.AdamW([{'params': net.fc2.parameters(), 'weight_decay': 0.0}, "
    "{'params': net.fc1.parameters()}], lr=0.01)",
]


@pytest.mark.parametrize("snippet", OPTIMIZERS)
def test_optimizer_trains_like_torch(snippet):
    train_both(snippet)


def test_parameters_in_no_group_stay_frozen_as_in_torch():
    code = train_both("optimizer = optim.Adam([{'params': net.fc2.parameters(), 'lr': 0.02}, "
                      "{'params': net.fc3.parameters()}], lr=0.01)")
    assert "param_group_labels(\"fc2\", \"fc3\")" in code


# ----------------------------------------------------------------------------
# Schedulers (the scheduler is stepped where the torch code steps it)

SCHEDULERS = [
    ("optimizer = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)\n"
     "scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)"),
    ("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
     "scheduler = optim.lr_scheduler.MultiStepLR(optimizer, milestones=[3, 8, 8, 15], gamma=0.5)"),
    ("optimizer = optim.Adam(net.parameters(), lr=0.01)\n"
     "scheduler = optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)"),
    ("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
     "scheduler = optim.lr_scheduler.LinearLR(optimizer, start_factor=0.25, total_iters=10)"),
    ("optimizer = optim.SGD(net.parameters(), lr=0.1, weight_decay=0.01)\n"  # past T_max: torch's cosine goes back up
     "scheduler = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10, eta_min=0.01)"),
    ("optimizer = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)\n"  # cycles SGD's momentum too
     "scheduler = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, total_steps=20)"),
    ("optimizer = optim.Adam(net.parameters(), lr=0.01)\n"  # cycles Adam's b1
     "scheduler = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.02, total_steps=30, three_phase=True, "
     "anneal_strategy='linear')"),
    ("optimizer = optim.AdamW(net.parameters(), lr=0.01)\n"
     "scheduler = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, epochs=5, steps_per_epoch=5, "
     "cycle_momentum=False, pct_start=0.4)"),
    ("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
     "scheduler = optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=lambda epoch: 1 / (epoch + 1))"),
    ("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
     "warmup = optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=5)\n"
     "cosine = optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=15)\n"
     "scheduler = optim.lr_scheduler.SequentialLR(optimizer, schedulers=[warmup, cosine], milestones=[5])"),
    ("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
     "scheduler = optim.lr_scheduler.ConstantLR(optimizer, factor=0.5, total_iters=4)"),
    ("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
     "scheduler = optim.lr_scheduler.PolynomialLR(optimizer, total_iters=10, power=2.0)"),
    ("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
     "scheduler = optim.lr_scheduler.MultiplicativeLR(optimizer, lr_lambda=lambda epoch: 0.9)"),
    ("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
     "scheduler = optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=3, T_mult=2, eta_min=0.001)"),
    ("optimizer = optim.NAdam(net.parameters(), lr=0.01)\n"
     "scheduler = optim.lr_scheduler.StepLR(optimizer, 4)"),
    ("optimizer = optim.Adagrad(net.parameters(), lr=0.1)\n"
     "scheduler = optim.lr_scheduler.ExponentialLR(optimizer, 0.95)"),
]


@pytest.mark.parametrize("snippet", SCHEDULERS)
def test_scheduler_stepped_every_batch_matches_torch(snippet):
    code = train_both(snippet)
    assert "optax.inject_hyperparams(" in code


@pytest.mark.parametrize("snippet", [SCHEDULERS[0], SCHEDULERS[4]])
def test_scheduler_stepped_every_epoch_matches_torch(snippet):
    train_both(snippet, steps=30, every=5)


@pytest.mark.parametrize("snippet", [SCHEDULERS[5], SCHEDULERS[6]])
def test_scheduler_drives_the_jitted_train_step(snippet):
    """Learning rate and momentum (b1) written by the scheduler reach fast_partial's compiled step."""
    train_both(snippet, jit=True)


def test_reduce_lr_on_plateau_matches_torch():
    train_both("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
               "scheduler = optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=1, factor=0.5, threshold=0.05)",
               steps=30, metric=True)


def test_scheduler_over_parameter_groups_matches_torch():
    """The training analysis finds the model of parameter groups too, so the scheduled optimizer is injected."""
    train_both("optimizer = optim.SGD([{'params': net.fc2.parameters(), 'lr': 0.05}, "
               "{'params': net.fc1.parameters()}], lr=0.1, momentum=0.9)\n"
               "scheduler = optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=[lambda e: 0.9 ** e, "
               "lambda e: 1 / (1 + e)])")


def test_imported_scheduler_name_is_replaced_by_the_helper():
    code = train_both("from torch.optim.lr_scheduler import StepLR\n"
                      "optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
                      "scheduler = StepLR(optimizer, step_size=3)")
    assert "from torch" not in code
    assert "scheduler = StepLR(optimizer, step_size=3)" in code


def test_two_schedulers_stepping_one_optimizer_fail_loudly():
    """torch compounds two schedulers on one optimizer; the emitted ones refuse rather than differ."""
    _, j, _ = _convert_and_build("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
                                 "first = optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)\n"
                                 "scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=2)")
    j["first"].step()
    with pytest.raises(NotImplementedError, match="two learning-rate schedulers"):
        j["scheduler"].step()


def test_scheduler_built_after_another_changed_the_rate_fails_loudly():
    _, j, _ = _convert_and_build("optimizer = optim.SGD(net.parameters(), lr=0.1)\n"
                                 "warmup = optim.lr_scheduler.LinearLR(optimizer, start_factor=0.5)\n"
                                 "scheduler = optim.lr_scheduler.StepLR(optimizer, step_size=2)")
    with pytest.raises(NotImplementedError, match="built after another scheduler"):
        j["scheduler"].step()


def test_unscheduled_optimizer_is_plain_optax():
    code = _convert_and_build("optimizer = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)")[2]
    assert "optimizer = nnx.Optimizer(net, optax.sgd(learning_rate=0.1, momentum=0.9), wrt=nnx.Param)" in code
    assert "import optax" in code


# ----------------------------------------------------------------------------
# What is reported instead of converted

@pytest.mark.parametrize("snippet,message", [
    ("optimizer = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, dampening=0.1)", "dampening"),
    ("optimizer = optim.Adam(net.parameters(), amsgrad=True)", "amsgrad"),
    ("optimizer = optim.Adam(net.parameters(), maximize=True)", "maximize"),
    ("optimizer = optim.Adagrad(net.parameters(), lr_decay=0.01)", "lr_decay"),
    ("optimizer = optim.SGD(filter(lambda p: p.requires_grad, net.parameters()), lr=0.1)", "must be MODEL.parameters()"),
    ("optimizer = optim.SGD([{'params': net.fc1.parameters()}, {'params': net.parameters()}], lr=0.1)", "submodules"),
    ("optimizer = optim.RMSprop(net.parameters(), momentum=0.9)\n"
     "scheduler = optim.lr_scheduler.StepLR(optimizer, 2)", "RMSprop with momentum and a learning-rate scheduler"),
    ("scheduler = optim.lr_scheduler.StepLR(optimizer, 2, last_epoch=3)", "last_epoch"),
])
def test_inexact_uses_are_reported_and_left_unchanged(snippet, message):
    conversion = convert_source(MODEL + "optimizer = None\n" + snippet + "\n")
    errors = [d for d in conversion.diagnostics if d.code == "PT004"]
    assert any(message in d.message for d in errors), conversion.diagnostics
    assert snippet.splitlines()[0] in conversion.code


def test_lbfgs_is_reported():
    conversion = convert_source(MODEL + "optimizer = optim.LBFGS(net.parameters())\n")
    # and the residual check's PT040 on the same line: net.parameters() is no nnx.Module method either
    assert [d.code for d in conversion.diagnostics if d.severity.value == "error"] == ["PT003", "PT040"]


# ----------------------------------------------------------------------------
# Gradient clipping, for the training pass

def _clip(source: str) -> str | None:
    ctx = ConversionContext(rules=load_rules())
    ctx.imports.update({"torch": "torch", "nn": "torch.nn", "clip_grad_norm_": "torch.nn.utils.clip_grad_norm_"})
    return clip_transform(cst.parse_expression(source), ctx)


@pytest.mark.parametrize("source,expected", [
    ("torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)", "optax.clip_by_global_norm(1.0)"),
    ("nn.utils.clip_grad_norm_(net.parameters(), max_norm=5)", "optax.clip_by_global_norm(5)"),
    ("clip_grad_norm_(net.parameters(), 0.5)", "clip_by_global_norm_torch(0.5)"),
    ("torch.nn.utils.clip_grad_norm_(net.parameters(), args.clip)", "clip_by_global_norm_torch(args.clip)"),
    ("torch.nn.utils.clip_grad_value_(net.parameters(), 0.1)", "optax.clip(0.1)"),
    ("torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0, norm_type=1)", None),
    ("torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0, error_if_nonfinite=True)", None),
    ("torch.nn.utils.clip_grad_norm_(params, 1.0)", None),
    ("torch.nn.utils.clip_grad_norm_(net.parameters())", None),
])
def test_clip_transform(source, expected):
    assert _clip(source) == expected


def test_clip_by_global_norm_torch_matches_torch():
    from porter.emitted_training import clip_by_global_norm_torch

    rng = np.random.default_rng(0)
    for scale in (0.01, 0.3, 3.0):
        grads = [rng.standard_normal(s).astype(np.float32) * scale for s in ((4, 3), (3,))]
        tensors = [torch.zeros(g.shape, requires_grad=True) for g in grads]
        for tensor, g in zip(tensors, grads):
            tensor.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_norm_(tensors, 0.5)
        clipped, _ = clip_by_global_norm_torch(0.5).update([jnp.asarray(g) for g in grads], None)
        for tensor, c in zip(tensors, clipped):
            np.testing.assert_allclose(np.asarray(c), tensor.grad.numpy(), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("source,model", [
    ("optim.SGD(net.parameters())", "net"),
    ("optim.SGD(list(self.model.parameters()))", "self.model"),
    ("optim.SGD([{'params': net.a.parameters()}, {'params': net.b.c.parameters(), 'lr': 1}])", "net"),
    ("optim.SGD([{'params': net.a.parameters(), 'lr': 1}])", "net.a"),
    ("optim.SGD(params)", None),
])
def test_model_of_params(source, model):
    assert model_of_params(cst.parse_expression(source)) == model


# ----------------------------------------------------------------------------
# End to end with the training pass: clipping folded into the optimizer, the scheduler stepped in the loop

LOOP = textwrap.dedent("""\
    criterion = nn.MSELoss()
    optimizer = optim.{optimizer}
    scheduler = optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=20)


    def train(batches):
        for x, y in batches:
            optimizer.zero_grad()
            loss = criterion(net(x), y)
            loss.backward()
            {clip}
            optimizer.step()
            scheduler.step()
    """)


@pytest.mark.parametrize("optimizer,clip,emitted", [
    ("SGD(net.parameters(), lr=0.05, momentum=0.9)", "torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)",
     "clip_by_global_norm_torch(0.5)"),
    ("Adam(net.parameters(), lr=0.01)", "torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0)",
     "optax.clip_by_global_norm(1.0)"),
    ("AdamW(net.parameters(), lr=0.01)", "torch.nn.utils.clip_grad_value_(net.parameters(), 0.05)",
     "optax.clip(0.05)"),
])
def test_clipped_scheduled_training_loop_matches_torch(optimizer, clip, emitted):
    source = MODEL + LOOP.format(optimizer=optimizer, clip=clip)
    torch.manual_seed(0)
    t, j = {}, {}
    exec(compile(source, "<torch>", "exec"), t)
    code = convert_source(source).code
    assert emitted in code and "optax.inject_hyperparams(" in code, code
    exec(compile(code, "<converted>", "exec"), j)
    load_torch_state_dict(j["net"], t["net"].state_dict())
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((16, 4)).astype(np.float32), 4 * rng.standard_normal((16, 4)).astype(np.float32))
               for _ in range(STEPS)]
    t["train"]([(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches])
    j["train"](batches)
    for name, value in t["net"].state_dict().items():
        layer, kind = name.split(".")
        module = getattr(j["net"], layer)
        actual = np.asarray(module.kernel[...]).T if kind == "weight" else np.asarray(module.bias[...])
        assert _rel(actual, value.numpy()) <= RTOL, (name, _rel(actual, value.numpy()))
    assert t["scheduler"].get_last_lr() == pytest.approx(j["scheduler"].get_last_lr(), rel=LR_RTOL)
