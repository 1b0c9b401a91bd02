"""Issue 16's training loop, as nanoGPT's train.py writes it: gradient accumulation over an inner loop of
micro-batches (the forward under `with ctx:`, the next batch fetched before backward), a GradScaler
(`scaler.scale(loss).backward()`, `unscale_`, `step`, `update`), clipping under `if grad_clip != 0.0:`,
`zero_grad(set_to_none=True)`, and a hand-written cosine schedule written into `optimizer.param_groups`
every iteration. Converted, it is one jitted accumulate step, one jitted apply step, grad_scaler and the
clip in the optimizer's chain, and set_learning_rate; `porter check --script` compares every micro-batch's
loss (200 for 50 steps) and the final weights with torch's.

The script (tests/data/training/gpt_micro_batches_train.py) draws its batches without torch's generator,
so both runs see the same ones: get_batch's torch.randint is data-side work of its own (issue 16)."""

from pathlib import Path

import pytest

import porter
from porter.check.training import check_training

SCRIPT = Path(__file__).resolve().parent / "data" / "training" / "gpt_micro_batches_train.py"
FACTORY = '''
    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        optimizer = torch.optim.AdamW(self.parameters(), lr=learning_rate, betas=betas, weight_decay=weight_decay)
        return optimizer
'''
VARIANTS = {
    "clip 1, scaler off": [],
    # dtype float16 turns the scaler on (ctx stays nullcontext on CPU: float32 compute, scaled loss);
    # growth every 5 finite steps: the scale grows from 2**16 to 2**26 over the run, torch's rule in both
    "scaler on, growing, clip 0.1": [("dtype = 'float32'", "dtype = 'float16'"), ("grad_clip = 1.0", "grad_clip = 0.1"),
                                     ("enabled=(dtype == 'float16'))", "enabled=(dtype == 'float16'), growth_interval=5)")],
    # nanoGPT's own spelling and default dtype on a CPU: torch's CUDA scaler turns itself off, so must porter's
    "cuda scaler off a GPU": [("dtype = 'float32'", "dtype = 'float16'"),
                              ("torch.amp.GradScaler(device_type, ", "torch.cuda.amp.GradScaler(")],
    "no clip, constant lr": [("grad_clip = 1.0", "grad_clip = 0.0"), ("decay_lr = True", "decay_lr = False")],
    # nanoGPT's tied head: check --script carries the tie into the converted model's initial weights
    "tied head": [("        self.head = nn.Linear(n_embd, vocab_size)\n",
                   "        self.head = nn.Linear(n_embd, vocab_size, bias=False)\n        self.head.weight = self.wte.weight\n")],
    # the optimizer built by the model's configure_optimizers (nanoGPT): rebuilt over its tx for clip and scaler
    "configure_optimizers": [("        return logits, loss\n", "        return logits, loss\n" + FACTORY),
                             ("optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(beta1, "
                              "beta2), weight_decay=weight_decay)",
                              "optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), "
                              "device_type)")],
}


def variant(name: str) -> str:
    source = SCRIPT.read_text()
    for old, new in VARIANTS[name]:
        assert old in source, old
        source = source.replace(old, new)
    return source


def errors(conversion) -> list:
    return [d for d in conversion.diagnostics if d.severity == "error"]


def test_the_loop_becomes_an_accumulate_and_an_apply_step():
    converted = porter.convert_source(SCRIPT.read_text(), filename="train.py")
    assert errors(converted) == []
    code = converted.code
    assert "def accumulate_grads(model, grads, loss_scale, X, Y):" in code
    assert "        return loss * loss_scale, (logits, loss,)\n" in code  # scaler.scale(loss).backward()
    assert "            logits, loss, grads = accumulate_grads_fast(grads, optimizer.opt_state[\"scale\"][...], " \
           "jnp.asarray(X), jnp.asarray(Y))\n" in code  # under `with ctx:`, before the next get_batch
    assert "    grads = apply_grads_fast(grads)\n" in code  # the step returns the sum zeroed
    assert "grad_scaler(optax.chain(clip_by_global_norm_torch(grad_clip) if grad_clip != 0.0 else " \
           "optax.identity(), optax.inject_hyperparams(optax.adamw)(" in code
    # torch's scaler for CUDA turns itself off without CUDA: the converted one off a GPU
    assert "enabled=(dtype == 'float16') and (device_type != 'cuda' or jax.default_backend() == 'gpu'))" in code
    assert "    set_learning_rate(optimizer, lr)\n" in code
    assert "scaler" not in code.split("def get_lr")[1]  # the GradScaler is the optimizer's now
    assert "torch" not in code.replace("torch's", "").split("def get_lr")[1]


def test_a_ddp_switch_in_the_micro_batch_loop_goes():
    source = SCRIPT.read_text().replace("        with ctx:\n", "        if ddp:\n            model.require_backward_grad_sync"
                                        " = (micro_step == gradient_accumulation_steps - 1)\n        with ctx:\n", 1)
    converted = porter.convert_source("ddp = False\n" + source, filename="train.py")
    assert errors(converted) == []
    assert "require_backward_grad_sync" not in converted.code


def test_a_statement_between_forward_and_backward_that_changes_the_loss_is_reported():
    source = SCRIPT.read_text().replace("        X, Y = get_batch('train')\n        scaler",
                                        "        loss = loss + 0.0\n        scaler", 1)
    converted = porter.convert_source(source, filename="train.py")
    reported = [d for d in errors(converted) if d.code == "PT010"]
    assert len(reported) == 1 and "`loss = loss + 0.0` between the forward pass and backward()" in reported[0].message


@pytest.mark.parametrize("name", list(VARIANTS))
def test_check_script_matches_torch_at_every_micro_batch_for_50_steps(tmp_path, name):
    original = tmp_path / "torch" / "train.py"
    original.parent.mkdir()
    original.write_text(variant(name))
    converted = porter.convert_source(original.read_text(), filename=str(original))
    assert errors(converted) == []
    target = tmp_path / "jax" / "train.py"
    target.parent.mkdir()
    target.write_text(converted.code)
    result = check_training(original, target, steps=50)
    assert result.passed, result.format()
    assert len(result.steps) == 200  # accumulation 4: one loss per micro-batch
    print(name, "max rel loss diff", result.max_loss_rel)


def test_overflowing_scaled_losses_skip_the_step_and_back_off_as_torch_does(tmp_path):
    """Scaler on (float32 compute), the loss of iterations 3 and 7 times 1e36: the scaled loss overflows in
    both frameworks, both skip those two steps and halve the scale. Every one of the 240 micro-batch losses
    (inf where they overflow) and the final weights agree; the one difference is the count of optimizer
    steps, which check --script takes from torch's optimizer.step() (a skipped step does not call it) and
    from nnx's update (the skipped step still calls it, with zero updates)."""
    source = SCRIPT.read_text()
    for old, new in (("dtype = 'float32'", "dtype = 'float16'"),
                     ("data = (np.arange", "overflow = torch.tensor([1e36 if i in (3, 7) else 1.0 for i in range(100)])"
                                           "\ndata = (np.arange"),
                     ("            loss = loss / gradient_accumulation_steps\n",
                      "            loss = loss / gradient_accumulation_steps * overflow[iter_num]\n")):
        assert old in source
        source = source.replace(old, new)
    original = tmp_path / "torch" / "train.py"
    original.parent.mkdir()
    original.write_text(source)
    converted = porter.convert_source(source, filename=str(original))
    assert errors(converted) == []
    target = tmp_path / "jax" / "train.py"
    target.parent.mkdir()
    target.write_text(converted.code)
    result = check_training(original, target, float64=False)  # to the end: 60 iterations
    assert result.problems == ["the scripts took different numbers of optimizer steps (torch 58, jax 60)"]
    assert len(result.steps) == 240 and all(row.ok for row in result.steps), result.format()
    assert [row.torch for row in result.steps].count(float("inf")) == 8  # 2 iterations x 4 micro-batches
    assert result.state and all(row.ok for row in result.state), result.format()
