"""The training-loop pass on before/after sources, and loops it must leave alone."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from porter import convert_source, load_torch_state_dict

PRELUDE = """\
import torch
import torch.nn as nn

model = nn.Linear(4, 2)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
"""


def convert(body: str):
    return convert_source(PRELUDE + textwrap.dedent(body), filename="train.py")


def codes(c):
    return [d.code for d in c.diagnostics if d.code not in ("PT003", "PT007")]  # optimizer rules: separate tests


def test_loop_becomes_a_train_step_and_a_call():
    c = convert("""
        for x, y in batches:
            optimizer.zero_grad()
            out = model(x)
            loss = ((out - y) ** 2).mean()
            loss.backward()
            optimizer.step()
            print(loss.item())
        """)
    assert textwrap.dedent("""\
        @nnx.jit
        def train_step(model, optimizer, x, y):
            def loss_fn(model):
                out = model(x)
                loss = ((out - y) ** 2).mean()
                return loss

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss
        """) in c.code
    assert "train_step_fast = fast_partial(train_step, model, optimizer)" in c.code
    assert "for x, y in batches:\n    loss = train_step_fast(jnp.asarray(x), jnp.asarray(y))\n    print(loss.item())\n" \
        in c.code
    assert "zero_grad" not in c.code and "backward" not in c.code and ".step()" not in c.code
    assert codes(c) == []


def test_zero_grad_after_step_and_outputs_used_later():
    c = convert("""
        for epoch in range(3):
            for x, y in batches:
                out = model(x)
                loss = ((out - y) ** 2).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                correct = (out.argmax(-1) == y).sum()
        """)
    assert "return loss, (out,)" in c.code
    assert "(loss, (out,)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)" in c.code
    assert "        out = train_step_fast(jnp.asarray(x), jnp.asarray(y))\n" \
           "        correct = (jnp.argmax(out, axis=-1) == y).sum()\n" in c.code
    # defined once, before the outermost loop
    assert c.code.index("def train_step") < c.code.index("for epoch in range(3):")


def test_objective_expression_and_closure_over_globals():
    c = convert("""
        for step in range(100):
            optimizer.zero_grad()
            pred = model(x)
            loss = (pred - y) ** 2
            loss.mean().backward()
            optimizer.step()
        print(loss.mean())
        """)
    assert "def train_step(model, optimizer):" in c.code
    assert "return loss.mean(), (loss,)" in c.code
    assert "    loss = train_step_fast()\n" in c.code


def test_gradient_accumulation_becomes_an_accumulate_and_an_apply_step():
    c = convert("""
        optimizer.zero_grad()
        for i, (x, y) in enumerate(batches):
            loss = model(x).sum() / 4
            loss.backward()
            if (i + 1) % 4 == 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
        """)
    assert "backward" not in c.code and "zero_grad" not in c.code and ".step()" not in c.code
    assert "optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(learning_rate=0.1))" in c.code
    assert "grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))" in c.code
    assert "    _, grads = accumulate_grads_fast(grads, jnp.asarray(x))\n" \
           "    if (i + 1) % 4 == 0:\n" \
           "        grads = apply_grads_fast(grads)\n" in c.code
    assert codes(c) == []  # no PT003 for the clip call folded into the optimizer
    assert any("gradient accumulation" in d.message for d in c.diagnostics if d.code == "PT007")


def test_gradient_accumulation_matches_torch_over_24_steps():
    """Summed gradients of loss / k, a step every k batches, momentum: the same parameters as torch."""
    source = textwrap.dedent("""\
        import torch
        import torch.nn as nn

        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for i, (x, y) in enumerate(batches):
            loss = ((model(x) - y) ** 2).mean() / 3
            loss.backward()
            if (i + 1) % 3 == 0:
                optimizer.step()
                optimizer.zero_grad()
        """)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((5, 2)).astype(np.float32))
               for _ in range(72)]
    torch_ns = {"batches": [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]}
    exec(source, torch_ns)
    torch.manual_seed(0)
    initial = torch.nn.Linear(4, 2).state_dict()
    conversion = convert_source(source)
    code = conversion.code.replace("optimizer = nnx.Optimizer(", "load_torch_state_dict(model, initial)\n"
                                                                 "optimizer = nnx.Optimizer(")
    jax_ns = {"batches": batches, "load_torch_state_dict": load_torch_state_dict, "initial": initial}
    exec(compile(code, "converted.py", "exec"), jax_ns)
    assert "apply_grads_fast(grads)" in code
    for name, value in torch_ns["model"].state_dict().items():
        got = {"weight": jax_ns["model"].kernel[...].T, "bias": jax_ns["model"].bias[...]}[name]
        np.testing.assert_allclose(np.asarray(got), value.numpy(), rtol=1e-5, atol=1e-6)
    assert jax_ns["optimizer"].step[...] == 24


def test_side_effects_in_the_forward_pass_are_reported():
    c = convert("""
        for x, y in batches:
            optimizer.zero_grad()
            out = model(x)
            print(out.shape)
            loss = (out - y).sum()
            loss.backward()
            optimizer.step()
        """)
    assert "PT010" in codes(c) and "loss.backward()" in c.code


def test_no_grad_device_placement_and_data_loading():
    c = convert_source(textwrap.dedent("""\
        import torch
        from torch.utils.data import DataLoader

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = torch.nn.Linear(4, 2)
        model.to(device)
        loader = DataLoader(torch.utils.data.TensorDataset(torch.zeros(8, 4)), batch_size=2)


        @torch.no_grad()
        def evaluate(x):
            return model(x.to(device))


        with torch.no_grad():
            y = model(torch.ones(1, 4).cuda())
        """))
    code = c.code
    assert 'device = jax.devices()[0]' in code
    assert "model.to(device)" not in code
    assert "DataLoader(torch.utils.data.TensorDataset(torch.zeros(8, 4)), batch_size=2)" in code
    assert "@torch.no_grad()" not in code and "def evaluate(x):\n    return model(x)\n" in code
    assert "\ny = model(jnp.ones((1, 4)))\n" in code
    assert "import torch" in code  # still needed for the data
    assert [d.code for d in c.diagnostics] == ["PT007", "PT011"]


TO_CALLS = '''
import torch


def cast_all(x, y, device, dt):
    return [x.to(device), x.to(y.dtype), x.to(dtype=dt), x.to(dt), x.to(y), x.to("cpu", torch.float16),
            x.to(device, non_blocking=True), x.to(torch.int32)]
'''


def test_tensor_to_keeps_every_dtype_the_torch_call_casts_to():
    # PT602 used to drop a dtype held in a variable (x.to(dt) -> x): every cast must survive
    conversion = convert_source(TO_CALLS, filename="to.py")
    assert not conversion.diagnostics
    namespace: dict = {}
    exec(compile(conversion.code, "to.py", "exec"), namespace)
    torch_ns: dict = {}
    exec(compile(TO_CALLS, "to_torch.py", "exec"), torch_ns)
    x = np.linspace(-2.6, 3.7, 7, dtype=np.float32)
    for dt_torch, dt_jax in ((torch.float16, jnp.float16), (torch.int8, jnp.int8), (torch.bfloat16, jnp.bfloat16)):
        y = torch.zeros(2, dtype=dt_torch)
        expected = torch_ns["cast_all"](torch.from_numpy(x), y, torch.device("cpu"), y.dtype)
        got = namespace["cast_all"](jnp.asarray(x), jnp.zeros(2, dt_jax), jax.devices()[0], dt_jax)
        for e, g in zip(expected, got):
            assert str(g.dtype) == str(e.dtype).removeprefix("torch."), (e.dtype, g.dtype)
            np.testing.assert_array_equal(np.asarray(g, np.float32), e.float().numpy())


def test_clipping_porter_cannot_fold_keeps_the_loop_and_says_so():
    # norm_type=1 has no optax form: the clip used to vanish with the loop's conversion
    c = convert("""
        for x, y in batches:
            optimizer.zero_grad()
            loss = model(x).sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=1)
            optimizer.step()
        """)
    assert "clip_grad_norm_(model.parameters(), 1.0, norm_type=1)" in c.code and "loss.backward()" in c.code
    assert "PT010" in codes(c)


def test_clipping_after_every_backward_of_an_accumulation_is_reported():
    c = convert("""
        for i, (x, y) in enumerate(batches):
            loss = model(x).sum() / 4
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if (i + 1) % 4 == 0:
                optimizer.step()
                optimizer.zero_grad()
        """)
    assert "loss.backward()" in c.code and "optimizer.step()" in c.code
    [d] = [d for d in c.diagnostics if d.code == "PT010"]
    assert "clips the running sum" in d.message and d.line == 7


TWO_OPTIMIZERS = """\
import torch
import torch.nn as nn

model = nn.Linear(4, 2)
warmup = torch.optim.SGD(model.parameters(), lr=0.1)
finetune = torch.optim.Adam(model.parameters(), lr=0.001)
scheduler = torch.optim.lr_scheduler.StepLR(finetune, step_size=2)
for x, y in batches:
    warmup.zero_grad()
    loss = model(x).sum()
    loss.backward()
    warmup.step()
for x, y in batches:
    finetune.zero_grad()
    loss = model(x).sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    finetune.step()
    scheduler.step()
"""


def test_two_optimizers_over_one_model_keep_their_own_schedule_and_clipping():
    # they used to share one entry (keyed by the model): the SGD got Adam's clipping and injection
    c = convert_source(TWO_OPTIMIZERS)
    assert "warmup = nnx.Optimizer(model, optax.sgd(learning_rate=0.1), wrt=nnx.Param)" in c.code
    assert "finetune = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(1.0), " \
           "optax.inject_hyperparams(optax.adam)(learning_rate=0.001)), wrt=nnx.Param)" in c.code
    assert "train_step_fast = fast_partial(train_step, model, warmup)" in c.code
    assert "train_step2_fast = fast_partial(train_step2, model, finetune)" in c.code
    assert codes(c) == []


GAN = """\
import torch
import torch.nn as nn

generator = nn.Linear(4, 8)
discriminator = nn.Linear(8, 1)
opt_g = torch.optim.Adam(generator.parameters(), lr=2e-4)
opt_d = torch.optim.Adam(discriminator.parameters(), lr=2e-4)
for real, noise in batches:
    opt_d.zero_grad()
    loss_d = discriminator(real).mean() - discriminator(generator(noise).detach()).mean()
    loss_d.backward()
    opt_d.step()
    opt_g.zero_grad()
    loss_g = discriminator(generator(noise)).mean()
    loss_g.backward()
    opt_g.step()
"""


def test_gan_two_models_two_optimizers_is_reported_by_name():
    c = convert_source(GAN)
    assert "opt_g = nnx.Optimizer(generator, optax.adam(learning_rate=2e-4), wrt=nnx.Param)" in c.code
    assert "opt_d = nnx.Optimizer(discriminator, optax.adam(learning_rate=2e-4), wrt=nnx.Param)" in c.code
    [d] = [d for d in c.diagnostics if d.code == "PT010"]
    assert d.line == 8 and "several optimizers step in one loop (opt_d, opt_g" in d.message
    assert "loss_g.backward()" in c.code


# ----------------------------------------------------------------------------
# zero_grad() where people write it: between forward and backward, set_to_none, the model's

SHAPED_LOOP = """\
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
losses = []
for x, y in batches:
{body}
    losses.append(loss.item())
"""


def errors(conversion):
    return [d.format() for d in conversion.diagnostics if d.severity != "info"]


def losses_of_both(source: str, batch_count: int = 20):
    """Per-step losses of `source` run with torch and converted, from the same initial weights."""
    conversion, torch_ns, jax_ns = run_both(source, batch_count)
    return conversion, torch_ns["losses"], jax_ns["losses"]


def run_both(source: str, batch_count: int = 20):
    """`source` run with torch and converted, from the same initial weights: (conversion, namespaces)."""
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((6, 4)).astype(np.float32) for _ in range(batch_count)]
    batches = [(x, x[:, :3].argmax(1)) for x in inputs]  # labels it can learn
    torch_ns = {"batches": [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]}
    exec(compile(source, "torch.py", "exec"), torch_ns)
    torch.manual_seed(0)
    initial = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).state_dict()
    conversion = convert_source(source, filename="train.py")
    code = conversion.code.replace("optimizer = nnx.Optimizer(", "load_torch_state_dict(model, initial)\n"
                                                                 "optimizer = nnx.Optimizer(")
    jax_ns = {"batches": batches, "load_torch_state_dict": load_torch_state_dict, "initial": initial}
    exec(compile(code, "converted.py", "exec"), jax_ns)
    return conversion, torch_ns, jax_ns


@pytest.mark.parametrize("body", [
    # zero_grad between the forward pass and backward(), the fixture project's shape
    "    logits = model(x)\n    loss = F.cross_entropy(logits, y)\n    optimizer.zero_grad()\n"
    "    loss.backward()\n    optimizer.step()",
    "    logits = model(x)\n    loss = F.cross_entropy(logits, y)\n    optimizer.zero_grad(set_to_none=True)\n"
    "    loss.backward()\n    optimizer.step()",
    "    optimizer.zero_grad(set_to_none=True)\n    logits = model(x)\n    loss = F.cross_entropy(logits, y)\n"
    "    loss.backward()\n    optimizer.step()",
    "    model.zero_grad()\n    loss = F.cross_entropy(model(x), y)\n    loss.backward()\n    optimizer.step()",
    "    loss = F.cross_entropy(model(x), y)\n    model.zero_grad(set_to_none=False)\n    loss.backward()\n"
    "    optimizer.step()",
    # a statement before the forward pass stays in the loop; zero_grad() in the middle is skipped
    "    y = y.long()\n    logits = model(x)\n    loss = F.cross_entropy(logits, y)\n    optimizer.zero_grad()\n"
    "    loss.backward()\n    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)\n    optimizer.step()",
    # placement after zero_grad() rebinds the batch: it stays in the loop (it made an UnboundLocalError)
    "    optimizer.zero_grad()\n    x, y = x.to('cpu'), y.to('cpu')\n    loss = F.cross_entropy(model(x), y)\n"
    "    loss.backward()\n    optimizer.step()",
], ids=["between", "between-set-to-none", "before-set-to-none", "model-before", "model-between", "clipped",
        "placement-after-zero-grad"])
def test_zero_grad_anywhere_before_backward_trains_like_torch(body):
    conversion, torch_losses, jax_losses = losses_of_both(SHAPED_LOOP.format(body=body))
    assert errors(conversion) == []
    assert "zero_grad" not in conversion.code and "backward" not in conversion.code
    assert "loss = train_step_fast(" in conversion.code
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=2e-5)
    assert torch_losses[-1] < torch_losses[0] - 0.1  # it trained


def test_zero_grad_outside_loops_goes_for_the_optimizer_and_its_model():
    c = convert("""
        optimizer.zero_grad(set_to_none=True)
        model.zero_grad()
        other = nn.Linear(2, 2)
        other.zero_grad()
        """)
    assert "optimizer.zero_grad" not in c.code and "model.zero_grad" not in c.code
    assert "other.zero_grad()" in c.code and "PT040" in codes(c)


def test_zero_grad_between_backward_and_step_is_reported():
    # it zeroes what step() reads: not the same training, so the loop stays as it is
    c = convert("""
        for x, y in batches:
            loss = model(x).sum()
            loss.backward()
            optimizer.zero_grad()
            optimizer.step()
        """)
    assert "PT010" in codes(c) and "loss.backward()" in c.code


def test_zero_grad_of_another_model_stays_in_the_forward_and_is_reported():
    c = convert("""
        other = nn.Linear(4, 2)
        for x, y in batches:
            loss = model(x).sum()
            other.zero_grad()
            loss.backward()
            optimizer.step()
        """)
    assert "PT010" in codes(c) and "loss.backward()" in c.code


@pytest.mark.parametrize("body", [
    # zeroed before each backward(): the step every 3 batches sees the last batch's gradient only
    "    optimizer.zero_grad()\n    loss = F.cross_entropy(model(x), y)\n    loss.backward()\n"
    "    if (len(losses) + 1) % 3 == 0:\n        optimizer.step()",
    "    loss = F.cross_entropy(model(x), y) / 3\n    loss.backward()\n"
    "    if (len(losses) + 1) % 3 == 0:\n        optimizer.step()\n        model.zero_grad(set_to_none=True)",
    "    loss = F.cross_entropy(model(x), y)\n    optimizer.zero_grad()\n    loss.backward()\n"
    "    if (len(losses) + 1) % 3 == 0:\n        optimizer.step()",
], ids=["zeroed-before", "accumulated-model-zero-grad", "zeroed-between"])
def test_accumulation_zero_grad_placements_train_like_torch(body):
    conversion, torch_losses, jax_losses = losses_of_both(SHAPED_LOOP.format(body=body), batch_count=30)
    assert errors(conversion) == []
    assert "zero_grad" not in conversion.code and "apply_grads_fast(grads)" in conversion.code
    np.testing.assert_allclose(jax_losses, torch_losses, rtol=2e-5)
    assert torch_losses[-1] != torch_losses[0]


# ----------------------------------------------------------------------------
# Learning-rate schedulers in scripts: the rate each optimizer step uses, as torch's

SCHEDULED = """\
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
optimizer = torch.optim.{optimizer}
scheduler = torch.optim.lr_scheduler.{scheduler}
losses, lrs = [], []
for epoch in range(6):
    model.train()
    for x, y in batches:
        lrs.append(scheduler.get_last_lr()[0])
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
{per_batch}        losses.append(loss.item())
{per_epoch}"""


@pytest.mark.parametrize("optimizer,scheduler,every", [
    # fixtures/scripts/project/train_encoder.py's: StepLR stepped once an epoch
    ("Adam(model.parameters(), lr=1e-2)", "StepLR(optimizer, step_size=2, gamma=0.5)", "epoch"),
    ("SGD(model.parameters(), lr=0.5)", "StepLR(optimizer, step_size=2, gamma=0.5)", "epoch"),
    # train.py's cosine: once a batch over the whole run, once an epoch, and past T_max
    ("AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)", "CosineAnnealingLR(optimizer, T_max=24)", "batch"),
    ("SGD(model.parameters(), lr=0.5, momentum=0.9)", "CosineAnnealingLR(optimizer, T_max=6, eta_min=0.01)",
     "epoch"),
    ("SGD(model.parameters(), lr=0.5)", "CosineAnnealingLR(optimizer, T_max=10)", "batch"),
], ids=["steplr-adam-epoch", "steplr-sgd-epoch", "cosine-adamw-batch", "cosine-sgd-epoch", "cosine-past-tmax"])
def test_scheduled_script_uses_torch_s_rate_at_every_optimizer_step(optimizer, scheduler, every):
    source = SCHEDULED.format(optimizer=optimizer, scheduler=scheduler,
                              per_batch="        scheduler.step()\n" if every == "batch" else "",
                              per_epoch="    scheduler.step()\n" if every == "epoch" else "")
    conversion, torch_ns, jax_ns = run_both(source, batch_count=4)
    assert errors(conversion) == [] and "loss = train_step_fast(" in conversion.code
    assert len(jax_ns["lrs"]) == 24 and len(set(torch_ns["lrs"])) > 2
    np.testing.assert_allclose(jax_ns["lrs"], torch_ns["lrs"], rtol=1e-6)
    # the rate the jitted step applies is the scheduler's: the losses follow torch's step by step
    np.testing.assert_allclose(jax_ns["losses"], torch_ns["losses"], rtol=2e-5)
    applied = float(jax_ns["optimizer"].opt_state.hyperparams["learning_rate"][...])
    assert applied == pytest.approx(torch_ns["optimizer"].param_groups[0]["lr"], rel=1e-6)


def test_fixture_project_loops_convert_with_zero_grad_between_forward_and_backward():
    """Issue 18's repro in its fixture project: both scripts' loops used to stay (PT010, half converted)."""
    from pathlib import Path
    project = Path(__file__).resolve().parent.parent / "fixtures" / "scripts" / "project"
    for name in ("train.py", "train_encoder.py"):
        conversion = convert_source((project / name).read_text(), filename=name)
        assert "PT010" not in {d.code for d in conversion.diagnostics}, name
        assert "= train_step_fast(" in conversion.code and ".backward()" not in conversion.code, name


def test_an_unseeded_shuffle_is_reported_at_its_line_with_the_fix():
    """PT011 no longer claims the same order for a shuffle without a generator of its own (building the
    model draws from torch's global generator in the original only): each such loader, sampler or
    random_split is reported at its line with generator=torch.Generator().manual_seed(s)."""
    c = convert_source(textwrap.dedent("""\
        import torch
        from torch.utils.data import DataLoader, RandomSampler, TensorDataset, random_split
        torch.manual_seed(0)
        data = TensorDataset(torch.zeros(8, 2))
        seeded = DataLoader(data, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))
        ordered = DataLoader(data, batch_size=2)
        shuffled = DataLoader(data, batch_size=2, shuffle=True)
        positional = DataLoader(data, 2, True)
        sampled = DataLoader(data, sampler=RandomSampler(data))
        train, val = random_split(data, [6, 2])
        """))
    pt011 = [d for d in c.diagnostics if d.code == "PT011"]
    assert pt011[0].line == 3 and "where each shuffle has a seeded generator of its own" in pt011[0].message
    unseeded = pt011[1:]
    assert [d.line for d in unseeded] == [7, 8, 9, 10]
    assert all("generator=torch.Generator().manual_seed(s)" in d.message for d in unseeded)
