"""Tokens per second of fixtures/gpt/model.py's generate() as porter converts it, against the torch original.

Candidates, all on the same weights (the torch model's, loaded into the conversions), batch 1, a one-token
prompt, past the block size:

  torch eager      the original generate under torch.no_grad()
  porter           the converted generate: its step compiled (nnx.jit, once per context width) over a token
                   buffer of the final size (porter/convert/passes/decode_loops.py)
  porter eager     the loop as porter converted it before (the decode loops concern left out): every token a
                   new shape, every operation compiled again for it; slow, so fewer tokens (--eager-tokens)

Each candidate's first call is timed apart (compilation included: what a sampling script pays once), then
--repeats warm calls (the median). One thread per framework (OMP_NUM_THREADS=1; XLA without its thread pool).

    python benchmarks/gpt_sample_speed.py [--tokens 100] [--eager-tokens 20] [--repeats 3] [--no-eager]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from porter import convert_source  # noqa: E402
from porter.check.modelspec import import_file  # noqa: E402
from porter.convert import pipeline  # noqa: E402
from porter.convert.passes.decode_loops import DecodeLoops  # noqa: E402
from porter.weights.loader import load_torch_state_dict  # noqa: E402

GPT = ROOT / "fixtures" / "gpt" / "model.py"
CONFIG = dict(block_size=32, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=True)


def converted_module(work: Path, eager: bool):
    saved = pipeline.CONCERNS
    if eager:
        pipeline.CONCERNS = tuple(c for c in saved if c is not DecodeLoops)
    try:
        code = convert_source(GPT.read_text(), filename=str(GPT)).code
    finally:
        pipeline.CONCERNS = saved
    path = work / ("gpt_eager.py" if eager else "gpt_compiled.py")
    path.write_text(code)
    return import_file(path)


def timed(generate, repeats: int) -> tuple[float, float]:
    """(first call's seconds, median of the warm calls' seconds)."""
    start = time.perf_counter()
    generate()
    first = time.perf_counter() - start
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        generate()
        warm.append(time.perf_counter() - start)
    return first, statistics.median(warm)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--eager-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--no-eager", action="store_true", help="leave out the eager conversion")
    args = parser.parse_args()
    torch.set_num_threads(1)

    T = import_file(GPT)
    torch.manual_seed(0)
    original = T.GPT(T.GPTConfig(**CONFIG)).eval()
    prompt = np.zeros((1, 1), np.int64)
    rows = []

    def torch_generate(n):
        with torch.no_grad():
            return original.generate(torch.from_numpy(prompt), n, temperature=0.8, top_k=args.top_k)

    def jax_generate(model, n):
        return lambda: jax.block_until_ready(model.generate(prompt, n, temperature=0.8, top_k=args.top_k,
                                                            rngs=nnx.Rngs(0)))

    with tempfile.TemporaryDirectory() as tmp:
        candidates = [("torch eager", args.tokens, lambda: torch_generate(args.tokens)),
                      ("porter", args.tokens, None)]
        if not args.no_eager:
            candidates += [("porter eager", args.eager_tokens, None)]
        for name, n, generate in candidates:
            if generate is None:
                F = converted_module(Path(tmp), eager=name == "porter eager")
                model = F.GPT(F.GPTConfig(**CONFIG), rngs=nnx.Rngs(0))
                assert load_torch_state_dict(model, original.state_dict()).ok
                model.eval()
                generate = jax_generate(model, n)
            first, warm = timed(generate, args.repeats)
            rows.append((name, n, first, warm))
            print(f"  {name}: first call {first:.2f} s, warm {warm:.3f} s", file=sys.stderr, flush=True)

    print(f"generate(): batch 1, 1-token prompt, block_size {CONFIG['block_size']}, {CONFIG['n_layer']} layers x "
          f"{CONFIG['n_embd']}, top_k {args.top_k}; {jax.default_backend()} (jax {jax.__version__}, "
          f"torch {torch.__version__}), one thread each")
    print(f"{'candidate':<14} {'tokens':>6} {'first call s':>12} {'tokens/s':>9} {'warm call s':>11} {'tokens/s':>9}")
    for name, n, first, warm in rows:
        print(f"{name:<14} {n:>6} {first:>12.2f} {n / first:>9.1f} {warm:>11.3f} {n / warm:>9.1f}")


if __name__ == "__main__":
    main()
