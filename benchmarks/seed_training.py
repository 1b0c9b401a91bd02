"""Per-step time of each seed training script: the torch original next to its conversion, in one run.

Each script runs unmodified (fixtures/training/X.py, then its golden conversion
fixtures/training/expected/X.py), in this process, with a clock on each optimizer step:
- torch: a global optimizer step post-hook notes the time after every `optimizer.step()`;
- jax: every function the script decorates with `nnx.jit` is wrapped so that its result is waited for
  (`jax.block_until_ready`) and the time noted on return.
A step's time is the interval between two such notes: the whole loop iteration (batch from the
DataLoader, forward, backward, update, the script's logging). The first jax step also traces and compiles
the train step: it is reported apart ("first step"), and ms/step is the median over the steps after
`--warmup` (default 3), on both sides.

    python benchmarks/seed_training.py [--scripts seed_mnist_mlp_train ...] [--threads N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "training"
SCRIPTS = ("seed_linear_regression_train", "seed_mnist_mlp_train", "seed_cifar_cnn_train")


def _execute(script: Path) -> None:
    namespace = {"__name__": "__main__", "__file__": str(script)}
    with redirect_stdout(io.StringIO()):
        exec(compile(script.read_text(), str(script), "exec"), namespace)


def torch_step_ends(script: Path) -> list[float]:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    ends = [time.perf_counter()]
    handle = register_optimizer_step_post_hook(lambda *_: ends.append(time.perf_counter()))
    try:
        _execute(script)
    finally:
        handle.remove()
    return ends


def jax_step_ends(script: Path) -> list[float]:
    import jax
    from flax import nnx

    ends = [time.perf_counter()]
    original_jit = nnx.jit

    def timed_jit(fun=None, **kwargs):
        if fun is None:
            return lambda f: timed_jit(f, **kwargs)
        jitted = original_jit(fun, **kwargs)

        def call(*args, **kw):
            result = jax.block_until_ready(jitted(*args, **kw))
            ends.append(time.perf_counter())
            return result
        return call

    nnx.jit = timed_jit
    try:
        _execute(script)
    finally:
        nnx.jit = original_jit
    return ends


def summarise(ends: list[float], warmup: int) -> tuple[float, float, int]:
    """(median ms/step after warm-up, first step ms, steps)."""
    steps = [b - a for a, b in zip(ends, ends[1:])]
    steady = steps[warmup:] or steps
    return statistics.median(steady) * 1e3, steps[0] * 1e3, len(steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scripts", nargs="+", default=list(SCRIPTS), choices=SCRIPTS)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the median (default 3)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (jax/XLA uses its own pool)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run each script this many times (alternating torch, jax); best median kept")
    args = parser.parse_args(argv)

    import jax
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__} "
          f"({jax.devices()[0].platform}); median of the steps after {args.warmup} warm-up steps")
    header = ("script", "steps", "torch ms/step", "jax ms/step", "jax first step (compile)", "torch / jax")
    rows = [header]
    for name in args.scripts:
        torch_runs, jax_runs = [], []
        for _ in range(args.repeats):
            torch_runs.append(summarise(torch_step_ends(FIXTURES / f"{name}.py"), args.warmup))
            jax_runs.append(summarise(jax_step_ends(FIXTURES / "expected" / f"{name}.py"), args.warmup))
        torch_ms, _, steps = min(torch_runs)
        jax_ms, jax_first, _ = min(jax_runs)
        jax_first = jax_runs[0][1]  # the first run compiles; later runs reuse jax's in-memory cache
        rows.append((name, str(steps), f"{torch_ms:.3f}", f"{jax_ms:.3f}", f"{jax_first:.0f} ms",
                     f"{torch_ms / jax_ms:.2f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print("torch / jax > 1: the converted script's step is faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
