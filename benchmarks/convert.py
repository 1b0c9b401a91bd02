"""How fast `porter convert` is, against the floor of any libcst tool.

    python benchmarks/convert.py [--corpus DIR ...] [--lines 50000] [--repeat 2] [--check]

The corpus: torch's own `torch/nn/modules` and `torch/optim` from the
installed torch, any `--corpus` directories (e.g. an installed timm's
`timm/models`), and generated PyTorch model code (seeded, written to a
temporary directory) until it holds at least `--lines` lines. Nothing of it is
committed.

Measured in the same run, on the same files:
- the floor: `libcst.parse_module(src).code` per file (parse + code
  generation, what any libcst tool pays), one process;
- porter: the tree runner (porter/convert/tree.py, what `porter convert DIR`
  runs, minus writing) with 1 process, 2 processes and every core.

It prints lines per second and the ratios: porter 1-process / floor (goal
>= 0.5) and porter 2-process / 1-process (goal >= 1.6). `--check` exits 1 when
a goal is missed. Each figure is the best of `--repeat` runs.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import libcst

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from porter.convert.tree import Task, convert_paths, default_jobs  # noqa: E402


# ---------------------------------------------------------------------------- the corpus
def installed_sources() -> list[Path]:
    import importlib.util

    origin = Path(importlib.util.find_spec("torch").origin).parent
    files = []
    for sub in ("nn/modules", "optim"):
        files += sorted((origin / sub).glob("*.py"))
    return files


LAYERS = [
    ("nn.Linear({a}, {b})", "x = self.{n}(x)"),
    ("nn.Conv2d({a}, {b}, kernel_size=3, padding=1)", "x = self.{n}(x)"),
    ("nn.BatchNorm2d({b})", "x = self.{n}(x)"),
    ("nn.LayerNorm({b})", "x = self.{n}(x)"),
    ("nn.Dropout(p=0.{p})", "x = self.{n}(x)"),
    ("nn.GELU()", "x = self.{n}(x)"),
    ("nn.Embedding({a}, {b})", "x = self.{n}(x)"),
]
OPS = [
    "x = F.relu(x)",
    "x = x.view(x.size(0), -1)",
    "x = x.reshape(b, -1, {a})",
    "x = x.permute(0, 2, 1)",
    "x = x.transpose(1, 2).contiguous()",
    "x = torch.cat([x, x], dim=-1)",
    "x = x.mean(dim=1, keepdim=True)",
    "x = F.softmax(x, dim=-1)",
    "attn = (q @ k.transpose(-2, -1)) * self.scale",
    "x = torch.flatten(x, 1)",
    "x = x + residual",
    "x = x.sum(dim=-1)",
    "x = F.gelu(x)",
    "x = torch.matmul(x, x.transpose(-1, -2))",
]
PLAIN = [
    "total = sum(sizes) // max(len(sizes), 1)",
    "names = [name.lower() for name in names if name]",
    "if verbose:\n        print(f\"step {{step}}: {{value:.3f}}\")",
    "config = dict(width=width, depth=depth, drop=drop)",
    "for key, value in sorted(options.items()):\n        setattr(self, key, value)",
    "return {{\"width\": width, \"depth\": depth}}",
]


def generated_module(rng: random.Random, index: int) -> str:
    """A model file in the style of real ones: docstrings, layers, forward passes, plain helpers."""
    out = [f'"""Generated model family {index}: blocks, a head and the helpers around them."""',
           "import math", "from dataclasses import dataclass", "from typing import Optional", "",
           "import torch", "import torch.nn as nn", "import torch.nn.functional as F", "", ""]
    out += ["@dataclass", f"class Config{index}:", '    """Sizes of the model."""',
            f"    width: int = {rng.choice([64, 128, 256])}", f"    depth: int = {rng.randint(2, 12)}",
            "    drop: float = 0.1", "    name: Optional[str] = None", "", ""]
    for k in range(rng.randint(3, 6)):
        name = f"Block{index}_{k}"
        out += [f"class {name}(nn.Module):", f'    """Block {k}: {rng.choice(["conv", "mlp", "attention"])} and a residual."""',
                "", "    def __init__(self, dim, hidden=None, drop=0.0):", "        super().__init__()",
                "        hidden = hidden or dim * 4", "        self.scale = dim ** -0.5"]
        layers = []
        for j in range(rng.randint(3, 7)):
            make, use = rng.choice(LAYERS)
            n = f"layer{j}"
            out.append(f"        self.{n} = " + make.format(a=rng.choice(["dim", "hidden", 64]), b=rng.choice(["dim", 32, 128]),
                                                            p=rng.randint(1, 5)))
            layers.append(use.format(n=n))
        out += ["", "    def forward(self, x, mask=None):", "        # the residual path keeps the input",
                "        residual = x", "        b = x.shape[0]", "        q = k = x"]
        for j in range(rng.randint(4, 10)):
            out.append("        " + (layers[j % len(layers)] if j % 2 == 0 else
                                     rng.choice(OPS).format(a=rng.choice([8, 16, 32]))))
        out += ["        return x", ""]
        out += [f"    def extra_repr(self):", '        return f"dim={self.scale}"', "", ""]
    for k in range(rng.randint(2, 5)):
        out += [f"def helper_{index}_{k}(sizes, names, width=8, depth=2, drop=0.0, options=None, verbose=False,",
                "             step=0, value=0.0):", '    """A plain helper: no torch in it."""',
                "    options = options or {}"]
        out += ["    " + rng.choice(PLAIN) for _ in range(rng.randint(2, 5))]
        out += ["    return sizes", "", ""]
    out += [f"def build_{index}(cfg: Config{index}):",
            f"    blocks = [Block{index}_0(cfg.width) for _ in range(cfg.depth)]",
            "    return nn.Sequential(*blocks)", ""]
    return "\n".join(out)


def build_corpus(extra: list[Path], lines_wanted: int, workdir: Path) -> list[Path]:
    files = installed_sources()
    for directory in extra:
        files += sorted(p for p in directory.rglob("*.py"))
    total = sum(_lines(p) for p in files)
    rng = random.Random(0)
    index = 0
    while total < lines_wanted:
        path = workdir / f"generated_{index:04d}.py"
        text = generated_module(rng, index)
        path.write_text(text)
        files.append(path)
        total += text.count("\n")
        index += 1
    return files


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return f.read().count(b"\n")


# ---------------------------------------------------------------------------- measuring
def floor(sources: list[str]) -> float:
    start = time.perf_counter()
    for source in sources:
        libcst.parse_module(source).code
    return time.perf_counter() - start


def porter(tasks: list[Task], jobs: int) -> tuple[float, int]:
    start = time.perf_counter()
    results = convert_paths(tasks, jobs=jobs)
    return time.perf_counter() - start, sum(r.status == "failed" and any(d.code == "PT031" for d in r.diagnostics)
                                            for r in results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, action="append", default=[],
                        help="a directory of real PyTorch code to add (e.g. site-packages/timm/models)")
    parser.add_argument("--lines", type=int, default=50_000, help="generate code up to this many lines in all")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs per figure")
    parser.add_argument("--jobs", type=int, default=None, help="'all cores' means this many (default: every core)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a goal (0.5x floor, 1.6x with 2) is missed")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="porter-bench-") as work:
        files = build_corpus(args.corpus, args.lines, Path(work))
        sources = [p.read_text(encoding="utf-8") for p in files]
        lines = sum(s.count("\n") for s in sources)
        tasks = [Task(str(p), str(p), p.name, "python") for p in files]
        convert_paths(tasks[:3], jobs=1)  # warm: rules loaded, helpers imported
        cores = args.jobs or default_jobs()
        best = {"floor": float("inf"), 1: float("inf"), 2: float("inf"), cores: float("inf")}
        crashed = 0
        for _ in range(args.repeat):
            best["floor"] = min(best["floor"], floor(sources))
            for jobs in sorted({1, 2, cores}):
                seconds, crashed = porter(tasks, jobs)
                best[jobs] = min(best[jobs], seconds)

    rate = {key: lines / seconds for key, seconds in best.items()}
    print(f"corpus: {len(files)} files, {lines} lines "
          f"(torch/nn/modules + torch/optim{' + ' + ', '.join(map(str, args.corpus)) if args.corpus else ''}"
          f" + generated); {os.cpu_count()} cores; python {sys.version.split()[0]}, libcst {libcst.__version__ if hasattr(libcst, '__version__') else ''}")
    print(f"floor  libcst parse+codegen, 1 process: {rate['floor']:9.0f} lines/s")
    print(f"porter 1 process:                      {rate[1]:9.0f} lines/s   {rate[1] / rate['floor']:.2f} x floor (goal >= 0.5)")
    print(f"porter 2 processes:                    {rate[2]:9.0f} lines/s   {rate[2] / rate[1]:.2f} x 1 process (goal >= 1.6)")
    if cores not in (1, 2):
        print(f"porter {cores} processes (all cores):       {rate[cores]:9.0f} lines/s   {rate[cores] / rate[1]:.2f} x 1 process")
    if crashed:
        print(f"note: {crashed} file(s) failed with an internal error (PT031)")
    ok = rate[1] / rate["floor"] >= 0.5 and rate[2] / rate[1] >= 1.6
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
