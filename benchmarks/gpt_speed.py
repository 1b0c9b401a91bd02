"""Tokens per second of a GPT training step: porter's conversion of fixtures/gpt/model.py against torch.

One step is forward + backward + AdamW update on one batch, at nanoGPT's optimizer settings
(lr 3e-3, betas (0.9, 0.95), weight decay 0.1 on matrices only, as configure_optimizers groups them).
Side by side in one run, same config, same batch, same starting weights:

  torch eager       the original model, torch.optim.AdamW (configure_optimizers' groups)
  torch.compile     torch.compile(model) as nanoGPT's train.py does (compile time reported apart)
  nnx cached_partial  the converted model, the jitted step porter emits for training scripts
                      (nnx.cached_partial over an @nnx.jit step, optax.adamw with a decay mask)
  nnx.jit           the same step called through @nnx.jit with the objects

porter cannot convert fixtures/gpt/train.py's loop yet (PT010, docs/gpt_status.md), so the nnx step
is written here: it is the step the converted script is meant to have. Before timing, the converted
model's loss on the batch must equal torch's with torch's weights loaded (porter.load_torch_state_dict),
and so must the losses after a few AdamW steps, so both sides time the same computation.

Timing: candidates are timed in interleaved rounds (fair under a shared, loaded machine), warm-up and
compilation excluded; the table gives the median over all timed steps. Both frameworks run on one
thread by default (--threads): on a machine whose cores are busy with other work, torch's two OpenMP
threads made its eager step about 20x slower (each op waits for a descheduled thread).

    python benchmarks/gpt_speed.py [--rounds 15] [--steps 10] [--batches 1 8] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from porter import convert_source, load_torch_state_dict  # noqa: E402
from porter.check.modelspec import import_file  # noqa: E402

GPT_FILE = ROOT / "fixtures" / "gpt" / "model.py"
# fixtures/gpt/train.py's defaults (the character vocabulary of prepare.py has 65 symbols)
CONFIG = dict(block_size=16, vocab_size=65, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True)
LR, BETAS, WEIGHT_DECAY = 3e-3, (0.9, 0.95), 0.1
CHECK_STEPS = 3


def load_models(tmp: Path):
    conversion = convert_source(GPT_FILE.read_text(), filename=str(GPT_FILE))
    converted = tmp / "converted_gpt.py"
    converted.write_text(conversion.code)
    errors = sum(d.severity.name == "ERROR" for d in conversion.diagnostics)
    return import_file(GPT_FILE), import_file(converted), errors


def build(T, F, batch: int, seed: int = 0):
    torch.manual_seed(seed)
    original = T.GPT(T.GPTConfig(**CONFIG))
    converted = F.GPT(F.GPTConfig(**CONFIG), rngs=nnx.Rngs(seed))
    load_torch_state_dict(converted, original.state_dict())
    rng = np.random.default_rng(seed + batch)
    x = rng.integers(0, CONFIG["vocab_size"], (batch, CONFIG["block_size"]))
    y = rng.integers(0, CONFIG["vocab_size"], (batch, CONFIG["block_size"]))
    return original, converted, x, y


def torch_optimizer(model):
    return model.configure_optimizers(WEIGHT_DECAY, LR, BETAS, "cpu")


def torch_step_fn(model, optimizer, x, y):
    x, y = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def adamw():
    # configure_optimizers' groups: decay on tensors of 2 or more dims, none on biases and norm scales
    return optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=1e-8, weight_decay=WEIGHT_DECAY,
                       mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params))


@nnx.jit
def train_step(model, optimizer, x, y):
    def loss_fn(model):
        _, loss = model(x, y)
        return loss
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def nnx_step_fn(model, x, y, cached: bool):
    optimizer = nnx.Optimizer(model, adamw(), wrt=nnx.Param)
    xj, yj = jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32)
    if cached:
        step = nnx.cached_partial(train_step, model, optimizer)
        return lambda: float(step(xj, yj))
    return lambda: float(train_step(model, optimizer, xj, yj))


def check_same_computation(T, F, batch: int) -> str:
    """The losses before and after CHECK_STEPS AdamW steps agree; raises otherwise."""
    original, converted, x, y = build(T, F, batch)
    with torch.no_grad():
        torch_loss = original(torch.from_numpy(x), torch.from_numpy(y))[1].item()
    flax_loss = float(converted(jnp.asarray(x), jnp.asarray(y))[1])
    torch_step = torch_step_fn(original, torch_optimizer(original), x, y)
    flax_step = nnx_step_fn(converted, x, y, cached=True)
    torch_losses = [torch_step() for _ in range(CHECK_STEPS + 1)]
    flax_losses = [flax_step() for _ in range(CHECK_STEPS + 1)]
    np.testing.assert_allclose(flax_loss, torch_loss, rtol=1e-5, err_msg="loss with torch's weights")
    np.testing.assert_allclose(flax_losses, torch_losses, rtol=1e-4, err_msg="losses over AdamW steps")
    return (f"batch {batch}: loss {torch_loss:.6f} (torch) {flax_loss:.6f} (nnx); after {CHECK_STEPS} AdamW "
            f"steps {torch_losses[-1]:.6f} / {flax_losses[-1]:.6f}")


def compiled_step_fn(model, x, y):
    """torch.compile(model) and its first step (compilation) timed; returns (step, seconds) or (None, error)."""
    compiled = torch.compile(model)
    step = torch_step_fn(compiled, torch_optimizer(model), x, y)
    start = time.perf_counter()
    try:
        step()
    except Exception as error:  # compilation on CPU needs a working C++ toolchain; report, don't hide
        return None, f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
    return step, time.perf_counter() - start


def time_interleaved(candidates: dict, rounds: int, steps: int, warmup: int) -> dict[str, float]:
    for step in candidates.values():
        for _ in range(warmup):
            step()
    samples = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, step in candidates.items():
            for _ in range(steps):
                start = time.perf_counter()
                step()  # returns a Python float: the step has finished on both sides
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def run_batch(T, F, batch: int, args) -> tuple[dict, dict]:
    original, converted, x, y = build(T, F, batch)
    eager = copy.deepcopy(original)
    candidates = {"torch eager": torch_step_fn(eager, torch_optimizer(eager), x, y)}
    notes = {}
    if args.no_compile:
        notes["torch.compile"] = "skipped (--no-compile)"
    else:
        step, outcome = compiled_step_fn(copy.deepcopy(original), x, y)
        if step is None:
            notes["torch.compile"] = f"failed: {outcome}"
        else:
            candidates["torch.compile"] = step
            notes["torch.compile"] = f"first step (compilation) {outcome:.1f} s"
    start = time.perf_counter()
    candidates["nnx cached_partial"] = nnx_step_fn(converted, x, y, cached=True)
    candidates["nnx cached_partial"]()
    notes["nnx cached_partial"] = f"first step (jit compilation) {time.perf_counter() - start:.1f} s"
    _, second, _, _ = build(T, F, batch)
    candidates["nnx.jit"] = nnx_step_fn(second, x, y, cached=False)
    return time_interleaved(candidates, args.rounds, args.steps, args.warmup), notes


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per candidate per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads; 1 also for XLA")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.threads == 1:  # read when jax starts its CPU backend, at the first computation below
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    print(f"jax {jax.__version__} ({jax.default_backend()}), flax, optax {optax.__version__}, torch "
          f"{torch.__version__}; {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
          f"XLA {'1 thread' if args.threads == 1 else 'default threads'}")
    print(f"config {CONFIG}; AdamW lr {LR} betas {BETAS} weight decay {WEIGHT_DECAY} on matrices")
    print("the nnx train step is written in this benchmark: porter does not convert train.py's loop yet (PT010)")
    with tempfile.TemporaryDirectory() as tmp:
        T, F, errors = load_models(Path(tmp))
        print(f"converted {GPT_FILE.relative_to(ROOT)} ({errors} ERROR diagnostics, none in the timed path)")
        for batch in args.batches:
            print("same computation:", check_same_computation(T, F, batch))
        tokens = CONFIG["block_size"]
        rows = []
        for batch in args.batches:
            medians, notes = run_batch(T, F, batch, args)
            rows.append((batch, medians, notes))
    print(f"\nmedian of {args.rounds} x {args.steps} timed steps per candidate, interleaved; "
          f"tokens/s = batch x {tokens} / step time")
    print(f"| batch | candidate | ms / step | tokens/s | vs torch eager | vs torch.compile |")
    print("|---|---|---|---|---|---|")
    for batch, medians, notes in rows:
        eager, compiled = medians["torch eager"], medians.get("torch.compile")
        for name, seconds in medians.items():
            versus_compiled = f"{compiled / seconds:.2f}x" if compiled else "—"
            print(f"| {batch} | {name} | {seconds * 1e3:.3f} | {batch * tokens / seconds:,.0f} | "
                  f"{eager / seconds:.2f}x | {versus_compiled} |")
        for name, note in notes.items():
            print(f"  batch {batch}, {name}: {note}")


if __name__ == "__main__":
    main()
