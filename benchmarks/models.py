"""Benchmark the seed's models: torch eager, torch.compile, porter's conversion and the same model written by hand.

    python benchmarks/models.py                        # MLP, LeNet, TinyGPT at batch 1, 64, 256
    python benchmarks/models.py --quick                # fewer repeats: a couple of minutes
    python benchmarks/models.py --models lenet gpt --batch-sizes 64 --no-compile
    python benchmarks/models.py --json bench.json [--plot bench.png]

Each model is converted now by `porter.convert_source` (what porter emits
today; `--expected` takes the reviewed goldens in fixtures/expected/
instead), the torch weights are copied into the conversion and into the
hand-written NNX version in benchmarks/handwritten/ (the real limit for what
porter emits), and `porter.check.bench.bench_models` times forward and train
step of all of them in this one process. The jax variants (converted,
hand-written, and the converted train step as porter emits it in a training
loop) are timed call for call in turn, so their ratios survive a busy machine
best. Converted and hand-written run under the same low-overhead pattern
(`jax.jit` of a function of the flat state, merged inside the trace). A
script, not a test: the numbers depend on the machine and on what else runs
on it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONVERTED = "jax.jit (converted)"
HANDWRITTEN = "jax.jit (hand-written)"
EMITTED = "fast_partial (converted)"


@dataclass
class Model:
    key: str
    file: str
    cls: str
    handwritten: str | None = None  # module in benchmarks/handwritten/
    kwargs: dict = field(default_factory=dict)
    input: str = "float"  # "float" or "tokens"
    shape: tuple = ()  # per-example input shape
    vocab: int = 0


GPT_CONFIG = dict(vocab_size=256, n_embd=128, n_head=4, n_layer=2, block_size=64)
MODELS = [
    Model("mlp", "seed_mlp.py", "Model", "mlp", shape=(784,)),
    Model("lenet", "seed_lenet.py", "Net", "lenet", shape=(3, 32, 32)),
    Model("gpt", "transformer_block.py", "TinyGPT", "gpt", GPT_CONFIG, input="tokens", shape=(64,), vocab=256),
    Model("convbn", "conv_bn_net.py", "ConvBNNet", shape=(3, 32, 32)),  # no hand-written version
]
DEFAULT_MODELS = ["mlp", "lenet", "gpt"]


def converted_file(model: Model, expected: bool, workdir: Path) -> Path:
    from porter import convert_source

    if expected:
        return ROOT / "fixtures" / "expected" / model.file
    source = ROOT / "fixtures" / "models" / model.file
    path = workdir / model.file
    if not path.exists():
        path.write_text(convert_source(source.read_text(), filename=str(source)).code)
    return path


def build(model: Model, converted: Path):
    """(torch model, converted flax model, hand-written flax model with the torch weights, or None)."""
    import torch
    from flax import nnx

    from porter.check.modelspec import import_file

    source = ROOT / "fixtures" / "models" / model.file
    torch_module = import_file(source, preseed={"torch": torch, "nn": torch.nn, "F": torch.nn.functional})
    torch.manual_seed(0)
    torch_model = getattr(torch_module, model.cls)(**model.kwargs)
    flax_model = getattr(import_file(converted), model.cls)(**model.kwargs, rngs=nnx.Rngs(0))
    return torch_model, flax_model, build_handwritten(model, torch_model.state_dict())


def build_handwritten(model: Model, state_dict):
    from flax import nnx

    if model.handwritten is None:
        return None
    module = importlib.import_module(f"benchmarks.handwritten.{model.handwritten}")
    handwritten = getattr(module, model.cls)(**model.kwargs, rngs=nnx.Rngs(0))
    module.load_torch_weights(handwritten, state_dict)
    return handwritten


def make_input(model: Model, batch: int, rng: np.random.Generator) -> np.ndarray:
    if model.input == "tokens":
        return rng.integers(0, model.vocab, size=(batch, *model.shape)).astype(np.int64)
    return rng.standard_normal((batch, *model.shape)).astype(np.float32)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=[m.key for m in MODELS], default=DEFAULT_MODELS)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64, 256])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="10 repeats after 2 warm-up calls")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-emitted", action="store_true",
                        help="skip the train step as porter emits it (nnx.jit through fast_partial)")
    parser.add_argument("--expected", action="store_true", help="use fixtures/expected/ instead of converting now")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="the statistic of the ratios (min resists a busy machine)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="intra-op threads for both frameworks (default: their own defaults)")
    parser.add_argument("--verbose", action="store_true", help="print each benchmark's full table too")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--plot", metavar="PATH.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmup = 10, 2
    return parser, args


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_args(argv)
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
                    torch_model, flax_model, handwritten = build(model, converted_file(model, args.expected,
                                                                                       Path(tmp)))
                except Exception as exc:  # a conversion that does not import or build: say so, go on
                    print(f"== {key} batch {batch}: cannot build: {type(exc).__name__}: {exc}\n", flush=True)
                    summary.append((key, batch, None))
                    continue
                x = make_input(model, batch, np.random.default_rng(batch))
                res = bench_models(torch_model, flax_model, x, name=f"{key} ({model.file}:{model.cls})",
                                   repeats=args.repeats, warmup=args.warmup, compile=not args.no_compile,
                                   stat=args.stat, handwritten=handwritten, emitted_step=not args.no_emitted)
                print(res.format() if args.verbose else progress_line(key, batch, res), flush=True)
                results.append(res)
                summary.append((key, batch, res))
    print()
    print(summary_table(summary, "forward"))
    print()
    print(summary_table(summary, "train"))
    print()
    print(compile_table(summary))
    print(torch_compile_notes(summary))
    if args.json:
        write_json(results, args.json)
    if args.plot:
        plot(results, args.plot)
    return 0


def progress_line(key: str, batch: int, res) -> str:
    train = res.ratio(CONVERTED, "train", base=HANDWRITTEN) if res.has(HANDWRITTEN) else None
    shown = "-" if train is None else f"{train:.2f}"
    return f"{key} batch {batch}: done (converted / hand-written train speed {shown})"


def _ms(res, variant: str, what: str) -> str:
    if not res.has(variant):
        return "-"
    m = getattr(getattr(res.result(variant), what), f"{res.settings['stat']}_ms")
    return "-" if m is None else f"{m:.3f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary_table(summary, what: str) -> str:
    """One row per model and batch: each variant's time, then the ratios the issue asks for."""
    emitted = what == "train"
    head = ["model", "batch", "torch eager ms", "torch.compile ms", "converted ms", "hand-written ms"]
    head += ["as emitted ms"] if emitted else []
    head += ["conv/hand", "conv x eager", "compile x eager"] + (["emitted x eager"] if emitted else [])
    rows = [tuple(head)]
    for key, batch, res in summary:
        if res is None:
            rows.append((key, str(batch), *["n/a"] * (len(head) - 2)))
            continue
        variants = ["torch eager", "torch.compile", CONVERTED, HANDWRITTEN] + ([EMITTED] if emitted else [])
        row = [key, str(batch)] + [_ms(res, v, what) for v in variants]
        row += [_x(res.ratio(CONVERTED, what, base=HANDWRITTEN)), _x(res.ratio(CONVERTED, what)),
                _x(res.ratio("torch.compile", what))]
        row += [_x(res.ratio(EMITTED, what))] if emitted else []
        rows.append(tuple(row))
    stat = next((r.settings["stat"] for _, _, r in summary if r is not None), "median")
    title = {"forward": "forward (inference)", "train": "train step (forward, backward, SGD update)"}[what]
    lines = [f"{title}: ms = {stat} per call; conv/hand = hand-written time / converted time (1.00: as fast as "
             f"the hand-written NNX); x eager = torch eager time / that variant's"]
    if emitted:
        lines.append("  as emitted: the converted model's step the way porter writes a training loop "
                     "(nnx.jit through fast_partial); converted and hand-written: jax.jit of the split state")
    return "\n".join(lines + _aligned(rows))


def compile_table(summary) -> str:
    head = ("model", "batch", "torch.compile fwd/train s", "converted fwd/train s", "hand-written fwd/train s",
            "as emitted train s")
    rows = [head]
    for key, batch, res in summary:
        if res is None:
            continue
        cells = []
        for variant in ("torch.compile", CONVERTED, HANDWRITTEN, EMITTED):
            if not res.has(variant):
                cells.append("-")
                continue
            r = res.result(variant)
            measured = (r.train,) if variant == EMITTED else (r.forward, r.train)
            cells.append(" / ".join("-" if m.compile_s is None else f"{m.compile_s:.2f}" for m in measured))
        rows.append((key, str(batch), *cells))
    return "\n".join(["compile times (jax: lower + compile; torch.compile: its first call)"] + _aligned(rows))


def torch_compile_notes(summary) -> str:
    errors = sorted({m.error for _, _, res in summary if res is not None and res.has("torch.compile")
                     for m in (res.result("torch.compile").forward, res.result("torch.compile").train) if m.error})
    return "\n".join(f"torch.compile: {e}" for e in errors)


def _aligned(rows) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in rows]


if __name__ == "__main__":
    sys.exit(main())
