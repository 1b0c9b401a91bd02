"""Which train-step pattern should porter emit? Measured side by side in one run.

Candidates, all computing the same SGD step on the converted model:
  nnx.jit            @nnx.jit def step(model, optimizer, x, y), called with the objects
  cached_partial     the same function through nnx.cached_partial(step, model, optimizer)
  fast_partial       the same function through porter's emitted fast_partial(step, model, optimizer)
                     (porter emits this: split once, jax.jit over the Variables' values, changes written back)
  jax.jit+split      jax.jit over a pure function of nnx.split state, merged inside
and torch eager on the original as the reference. Median of repeated timed
calls after warm-up; compile time is excluded.

    python benchmarks/train_step.py [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
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
from porter.emitted_training import fast_partial  # noqa: E402

CASES = [
    ("transformer Block, batch 1", "transformer_block.py", "Block", dict(n_embd=64, n_head=4, block_size=32),
     (1, 32, 64)),
    ("seed MLP, batch 64", "seed_mlp.py", "Model", {}, (64, 784)),
]


def median_ms(fn, repeats: int) -> float:
    for _ in range(5):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def build(file: str, name: str, kwargs: dict, tmp: Path):
    source = ROOT / "fixtures" / "models" / file
    torch_module = import_file(source, preseed={"torch": torch, "nn": torch.nn, "F": torch.nn.functional})
    converted = tmp / file
    converted.write_text(convert_source(source.read_text()).code)
    flax_module = import_file(converted)
    torch.manual_seed(0)
    torch_model = getattr(torch_module, name)(**kwargs)
    flax_model = getattr(flax_module, name)(**kwargs, rngs=nnx.Rngs(0))
    load_torch_state_dict(flax_model, torch_model.state_dict())
    return torch_model, flax_model


def loss_of(out, y):
    return ((out - y) ** 2).mean()


def torch_step_fn(model, x, y):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        optimizer.zero_grad()
        loss = loss_of(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach().numpy()
    return step


@nnx.jit
def nnx_step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: loss_of(m(x), y))(model)
    optimizer.update(model, grads)
    return loss


def split_step_fn(model, optimizer):
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, x, y):
        model, optimizer = nnx.merge(graphdef, state)
        loss, grads = nnx.value_and_grad(lambda m: loss_of(m(x), y))(model)
        optimizer.update(model, grads)
        return loss, nnx.state((model, optimizer))
    return step, state


def run_case(label, file, name, kwargs, shape, repeats, tmp):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    torch_model, flax_model = build(file, name, kwargs, tmp)
    with torch.no_grad():
        y = np.zeros(torch_model(torch.from_numpy(x)).shape, np.float32)
    torch_model.train()
    flax_model.eval()  # dropout off on both sides would need torch.eval(): compare step cost, not randomness
    torch_model.eval()
    xj, yj = jnp.asarray(x), jnp.asarray(y)
    results = {"torch eager": median_ms(torch_step_fn(torch_model, x, y), repeats)}

    optimizer = nnx.Optimizer(flax_model, optax.sgd(1e-3), wrt=nnx.Param)
    results["nnx.jit"] = median_ms(lambda: nnx_step(flax_model, optimizer, xj, yj), repeats)
    cached = nnx.cached_partial(nnx_step, flax_model, optimizer)
    results["cached_partial"] = median_ms(lambda: cached(xj, yj), repeats)
    fast = fast_partial(nnx_step, flax_model, optimizer)
    results["fast_partial (emitted)"] = median_ms(lambda: fast(xj, yj), repeats)
    step, state = split_step_fn(flax_model, optimizer)
    box = {"state": state}

    def split_call():
        loss, box["state"] = step(box["state"], xj, yj)
        return loss
    results["jax.jit+split"] = median_ms(split_call, repeats)

    print(f"\n{label}: median ms per train step (lower is better)")
    base = results["torch eager"]
    for key, ms in results.items():
        print(f"  {key:26s} {ms:8.3f} ms   {base / ms:5.2f}x torch eager")
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.default_backend()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            run_case(*case, args.repeats, Path(tmp))


if __name__ == "__main__":
    main()
