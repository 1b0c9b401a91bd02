"""Tokens per second of fixtures/gpt/train.py as porter converts it, against the torch original.

benchmarks/gpt_speed.py times one step in-process; this one times the scripts themselves, as a user runs
them: porter converts fixtures/gpt into a temporary directory (no hand edit), prepare.py writes the
corpus, and each candidate runs train.py for --iters iterations (4 micro-batches each, the fixture's
accumulation, clipping and cosine schedule), printing its own per-iteration time (`time X ms`, the
script's own t1 - t0 around accumulate + clip + step + the next batch). Candidates:

  torch eager      the original train.py
  torch.compile    the original with --compile=True
  porter           the converted train.py (jitted accumulate and apply steps)

Rounds interleave the candidates (fair on a shared machine); the first --warmup iterations of every run
(compilation) are left out; the table gives the median over all timed iterations. One thread per
framework (OMP_NUM_THREADS=1; XLA without its thread pool), as gpt_speed.py.

    python benchmarks/gpt_train_speed.py [--rounds 3] [--iters 30] [--warmup 5] [--batches 1 8]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GPT = ROOT / "fixtures" / "gpt"
ITERATION = re.compile(r"^iter (\d+): loss ([0-9.]+), time ([0-9.]+)ms", re.M)
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def convert(work: Path) -> Path:
    done = subprocess.run([sys.executable, "-m", "porter", "convert", str(GPT), "-o", str(work / "jax")],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if done.returncode != 0:
        sys.exit(f"porter convert failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return work / "jax"


def run(script: Path, cwd: Path, args: list[str]) -> list[tuple[int, float, float]]:
    """(iteration, loss, ms) of every iteration the script logged."""
    env = {k: v for k, v in os.environ.items() if k != "RANK"} | ONE_THREAD | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{script} {' '.join(args)} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return [(int(i), float(loss), float(ms)) for i, loss, ms in ITERATION.findall(done.stdout)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="first iterations of each run not timed")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="porter-gpt-train-speed-") as tmp:
        work = Path(tmp)
        jax_dir = convert(work)
        subprocess.run([sys.executable, str(GPT / "prepare.py")], cwd=work, check=True, capture_output=True)
        candidates = {"torch eager": (GPT / "train.py", []), "torch.compile": (GPT / "train.py", ["--compile=True"]),
                      "porter": (jax_dir / "train.py", [])}
        print(f"fixtures/gpt/train.py, {args.iters} iterations x 4 micro-batches of block 16, one thread each")
        print("| batch | candidate | ms / iteration | tokens/s | vs torch eager | loss at iteration 0 |")
        print("|---|---|---|---|---|---|")
        for batch in args.batches:
            common = [f"--batch_size={batch}", f"--max_iters={args.iters}", "--eval_interval=100000",
                      "--log_interval=1", f"--lr_decay_iters={args.iters}", f"--out_dir={work / 'out'}"]
            times: dict[str, list[float]] = {name: [] for name in candidates}
            first_loss: dict[str, float] = {}
            for _ in range(args.rounds):
                for name, (script, extra) in candidates.items():
                    logged = run(script, work, [*common, *extra])
                    first_loss[name] = logged[0][1]
                    times[name] += [ms for i, _, ms in logged if i >= args.warmup]
            tokens = batch * 4 * 16
            eager = statistics.median(times["torch eager"])
            for name, values in times.items():
                ms = statistics.median(values)
                print(f"| {batch} | {name} | {ms:.2f} | {tokens / ms * 1000:,.0f} | {eager / ms:.2f}x | "
                      f"{first_loss[name]:.4f} |")


if __name__ == "__main__":
    main()
