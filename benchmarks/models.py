"""Benchmark the seed's models: torch eager and torch.compile against porter's conversion under jax.jit.

    python benchmarks/bench_models.py                       # all models, batch 1, 64, 256
    python benchmarks/bench_models.py --models lenet gpt --batch-sizes 1 64 --no-compile
    python benchmarks/bench_models.py --json bench.json [--plot bench.png]

Each model is converted now by `porter.convert_source` (what porter emits
today; `--expected` takes the reviewed goldens in fixtures/expected/
instead), the torch weights are copied into the conversion, and
`porter.check.bench.bench_models` times forward and train step in this one
process (see that module for what is measured and how). A script, not a test:
the numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass
class Model:
    key: str
    file: str
    cls: str
    kwargs: dict = field(default_factory=dict)
    input: str = "float"  # "float" or "tokens"
    shape: tuple = ()  # per-example input shape
    vocab: int = 0


MODELS = [
    Model("mlp", "seed_mlp.py", "Model", shape=(784,)),
    Model("lenet", "seed_lenet.py", "Net", shape=(3, 32, 32)),
    Model("gpt", "transformer_block.py", "TinyGPT",
          dict(vocab_size=256, n_embd=128, n_head=4, n_layer=2, block_size=64), input="tokens", shape=(64,),
          vocab=256),
    Model("convbn", "conv_bn_net.py", "ConvBNNet", shape=(3, 32, 32)),
]


def build(model: Model, expected: bool, workdir: Path):
    import torch
    from flax import nnx

    from porter import convert_source
    from porter.check.modelspec import import_file

    source = ROOT / "fixtures" / "models" / model.file
    torch_module = import_file(source, preseed={"torch": torch, "nn": torch.nn, "F": torch.nn.functional})
    if expected:
        converted = ROOT / "fixtures" / "expected" / model.file
    else:
        converted = workdir / model.file
        converted.write_text(convert_source(source.read_text(), filename=str(source)).code)
    flax_module = import_file(converted)
    torch.manual_seed(0)
    torch_model = getattr(torch_module, model.cls)(**model.kwargs)
    flax_model = getattr(flax_module, model.cls)(**model.kwargs, rngs=nnx.Rngs(0))
    return torch_model, flax_model


def make_input(model: Model, batch: int, rng: np.random.Generator) -> np.ndarray:
    if model.input == "tokens":
        return rng.integers(0, model.vocab, size=(batch, *model.shape)).astype(np.int64)
    return rng.standard_normal((batch, *model.shape)).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=[m.key for m in MODELS], default=[m.key for m in MODELS])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--expected", action="store_true", help="use fixtures/expected/ instead of converting now")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="the statistic of the x-eager ratios (min resists a busy machine)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="intra-op threads for both frameworks (default: their own defaults)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--plot", metavar="PATH.png")
    args = parser.parse_args(argv)

    from porter.check.bench import bench_models, have_matplotlib, limit_threads, plot, write_json

    if args.threads:
        limit_threads(args.threads)

    if args.plot and not have_matplotlib():
        parser.error("--plot needs matplotlib (pip install matplotlib)")
    results, summary = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.models:
            model = next(m for m in MODELS if m.key == key)
            for batch in args.batch_sizes:
                try:
                    torch_model, flax_model = build(model, args.expected, Path(tmp))
                except Exception as exc:  # a conversion that does not import or build: say so, go on
                    print(f"== {key} batch {batch}: cannot build: {type(exc).__name__}: {exc}\n", flush=True)
                    summary.append((key, batch, None))
                    continue
                x = make_input(model, batch, np.random.default_rng(batch))
                res = bench_models(torch_model, flax_model, x, name=f"{key} ({model.file}:{model.cls})",
                                   repeats=args.repeats, warmup=args.warmup, compile=not args.no_compile,
                                   stat=args.stat)
                print(res.format() + "\n", flush=True)
                results.append(res)
                summary.append((key, batch, res))
    print(summary_table(summary))
    if args.json:
        write_json(results, args.json)
    if args.plot:
        plot(results, args.plot)
    return 0


def summary_table(summary) -> str:
    head = ("model", "batch", "fwd eager ms", "fwd compile x", "fwd jax x", "train eager ms", "train compile x",
            "train jax x")
    rows = [head]
    for key, batch, res in summary:
        if res is None:
            rows.append((key, str(batch), *["n/a"] * 6))
            continue

        def ms(variant, what):
            m = getattr(getattr(res.result(variant), what), f"{res.settings['stat']}_ms")
            return "-" if m is None else f"{m:.3f}"

        def x(variant, what):
            r = res.ratio(variant, what)
            return "-" if r is None else f"{r:.2f}"

        rows.append((key, str(batch), ms("torch eager", "forward"), x("torch.compile", "forward"),
                     x("jax.jit (converted)", "forward"), ms("torch eager", "train"),
                     x("torch.compile", "train"), x("jax.jit (converted)", "train")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    stat = summary[0][2].settings["stat"] if summary and summary[0][2] else "median"
    lines = [f"summary (ms: {stat}; x: times faster than torch eager, on the {stat})"]
    lines += ["  " + "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
