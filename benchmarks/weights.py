"""`porter weights` on a checkpoint of about 2 GB, against a plain safetensors copy, measured in one run.

For each dtype (float32, and bfloat16 with the same byte size), this script
writes a transformer-style state_dict (token embedding, then blocks of
attention in/out projections, MLP up/down, two LayerNorms) as .safetensors
with the safetensors library, plus the converted-style Flax model that
matches it, then runs as separate processes (so each one's peak RSS is its
own, read with os.wait4):

- library: `python -c "import <what porter weights imports>"`: the interpreter
  and library baseline;
- baseline: `safetensors.torch.save_file(safetensors.torch.load_file(IN), OUT)`;
- porter: `porter weights IN -o OUT.safetensors --model model.py:Net`
  (and, with --orbax, `-o OUT_orbax`; with --torch-input, a torch.save .pt input).

It prints wall time and peak RSS of each, the ratios porter / baseline, and
the issue's bounds: peak RSS <= 1.5 x (largest tensor + library baseline), and
wall time <= 2 x the baseline copy. The input file is read once before the
timed runs, so every run finds it in the page cache.

    python benchmarks/weights.py [--gb 2] [--dtypes float32,bfloat16] [--orbax] [--torch-input]

Not part of the test suite (it writes several GB and takes minutes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

D = 2048  # model width: fc weights are 8192 x 2048 (64 MB in float32), the largest tensors
VOCAB = 8192

MODEL_FILE = textwrap.dedent(f"""
    from flax import nnx


    class Block(nnx.Module):
        def __init__(self, d, *, rngs: nnx.Rngs):
            self.ln1 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
            self.qkv = nnx.Linear(d, 3 * d, rngs=rngs)
            self.proj = nnx.Linear(d, d, rngs=rngs)
            self.ln2 = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
            self.fc1 = nnx.Linear(d, 4 * d, rngs=rngs)
            self.fc2 = nnx.Linear(4 * d, d, rngs=rngs)


    class Net(nnx.Module):
        def __init__(self, n_layers, d={D}, vocab={VOCAB}, *, rngs: nnx.Rngs):
            self.embed = nnx.Embed(vocab, d, rngs=rngs)
            self.blocks = nnx.List([Block(d, rngs=rngs) for _ in range(n_layers)])
            self.ln_f = nnx.LayerNorm(d, epsilon=1e-5, rngs=rngs)
""")

LIBRARIES = ("import porter.cli, porter.weights.cli, porter.weights.convert, porter.weights.guess, "
             "porter.check.modelspec, jax, jax.numpy, flax.nnx, torch, numpy, rich.progress, "
             "orbax.checkpoint; jax.numpy.zeros(1).block_until_ready()")

BASELINE = ("import sys; from safetensors.torch import load_file, save_file; "
            "save_file(load_file(sys.argv[1]), sys.argv[2])")


def block_shapes(d: int) -> dict[str, tuple[int, ...]]:
    return {"ln1.weight": (d,), "ln1.bias": (d,), "qkv.weight": (3 * d, d), "qkv.bias": (3 * d,),
            "proj.weight": (d, d), "proj.bias": (d,), "ln2.weight": (d,), "ln2.bias": (d,),
            "fc1.weight": (4 * d, d), "fc1.bias": (4 * d,), "fc2.weight": (d, 4 * d), "fc2.bias": (d,)}


def layers_for(gb: float, itemsize: int) -> int:
    per_block = sum(_numel(s) for s in block_shapes(D).values()) * itemsize
    rest = (VOCAB * D + 2 * D) * itemsize
    return max(1, round((gb * 1e9 - rest) / per_block))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def make_checkpoint(path: Path, n_layers: int, dtype: str, torch_copy: Path | None) -> tuple[int, int]:
    """Write the state_dict with safetensors (and torch.save); returns (file bytes, largest tensor bytes)."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(0)
    sd = {"embed.weight": torch.randn(VOCAB, D, generator=gen).to(torch_dtype)}
    for i in range(n_layers):
        for name, shape in block_shapes(D).items():
            sd[f"blocks.{i}.{name}"] = (torch.randn(shape, generator=gen) * 0.02).to(torch_dtype)
    sd["ln_f.weight"] = torch.ones(D, dtype=torch_dtype)
    sd["ln_f.bias"] = torch.zeros(D, dtype=torch_dtype)
    largest = max(t.numel() * t.element_size() for t in sd.values())
    save_file(sd, str(path))
    if torch_copy is not None:
        torch.save(sd, torch_copy)
    del sd
    return path.stat().st_size, largest


def generate(path: Path, n_layers: int, dtype: str, torch_copy: Path | None) -> tuple[int, int]:
    """make_checkpoint in a child process: this process stays small, since a child's peak RSS as the
    kernel reports it starts from its parent's resident size at fork."""
    argv = [sys.executable, __file__, "--_generate", str(path), str(n_layers), dtype, str(torch_copy or "")]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()
    return int(out[-2]), int(out[-1])


def measure(argv: list[str], label: str) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{label} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
    return wall, usage.ru_maxrss * 1024  # Linux: KiB


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def mb(n: float) -> str:
    return f"{n / 1e6:8.0f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.0, help="checkpoint size in GB (default 2)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--orbax", action="store_true", help="also write Orbax (porter's default output)")
    parser.add_argument("--torch-input", action="store_true", help="also convert a torch.save .pt of it")
    parser.add_argument("--tmp", help="directory for the files (default: a new temporary directory)")
    parser.add_argument("--_generate", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._generate:
        path, n_layers, dtype, torch_copy = args._generate
        print(*make_checkpoint(Path(path), int(n_layers), dtype, Path(torch_copy) if torch_copy else None))
        return 0
    if not sys.platform.startswith("linux"):
        raise SystemExit("peak RSS from os.wait4 is read in KiB, as on Linux; run this on Linux")
    python = sys.executable
    porter = [python, "-m", "porter"]
    tmp = Path(tempfile.mkdtemp(prefix="porter-bench-", dir=args.tmp))
    rows = []
    try:
        (tmp / "model.py").write_text(MODEL_FILE)
        lib_wall, lib_rss = measure([python, "-c", LIBRARIES], "library import")
        own = measure([python, "-c", "pass"], "bare interpreter")[1]
        print(f"interpreter + libraries (what porter weights imports): {mb(lib_rss)} peak RSS, {lib_wall:.1f} s "
              f"(bare interpreter {mb(own).strip()}: the floor any child starts from)")
        for dtype in args.dtypes.split(","):
            itemsize = 4 if dtype == "float32" else 2
            n_layers = layers_for(args.gb, itemsize)
            ckpt = tmp / f"ckpt-{dtype}.safetensors"
            pt = tmp / f"ckpt-{dtype}.pt" if args.torch_input else None
            size, largest = generate(ckpt, n_layers, dtype, pt)
            print(f"\n== {dtype}: {n_layers} blocks, {mb(size)} on disk, largest tensor {mb(largest)}")
            warm(ckpt)
            spec = f"{tmp / 'model.py'}:Net({n_layers})"
            runs = [("baseline: safetensors load_file + save_file", [python, "-c", BASELINE, str(ckpt),
                                                                      str(tmp / "copy.safetensors")])]
            runs.append(("porter weights -> safetensors", [*porter, "weights", str(ckpt), "-o",
                                                           str(tmp / "out.safetensors"), "--model", spec]))
            if args.orbax:
                runs.append(("porter weights -> orbax", [*porter, "weights", str(ckpt), "-o", str(tmp / "out_orbax"),
                                                         "--model", spec]))
            if pt is not None:
                runs.append(("porter weights .pt -> safetensors", [*porter, "weights", str(pt), "-o",
                                                                   str(tmp / "out_pt.safetensors"), "--model", spec]))
            results = {}
            for label, argv in runs:
                if pt is not None and ".pt" in label:
                    warm(pt)
                wall, rss = measure(argv, label)
                results[label] = (wall, rss)
                for leftover in ("copy.safetensors", "out.safetensors", "out_orbax", "out_pt.safetensors"):
                    target = tmp / leftover
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
            base_wall, base_rss = results[runs[0][0]]
            bound = 1.5 * (largest + lib_rss)
            print(f"{'run':<40} {'wall':>8} {'peak RSS':>11} {'wall/base':>10} {'RSS/base':>9} "
                  f"{'RSS / (largest + libraries)':>28}")
            for label, (wall, rss) in results.items():
                print(f"{label:<40} {wall:7.1f}s {mb(rss):>11} {wall / base_wall:9.2f}x {rss / base_rss:8.2f}x "
                      f"{rss / (largest + lib_rss):27.2f}x")
                rows.append((dtype, label, wall, rss, wall / base_wall, rss / (largest + lib_rss)))
            for label, (wall, rss) in results.items():
                if label.startswith("porter"):
                    ok_rss = rss <= bound
                    ok_wall = wall <= 2 * base_wall
                    print(f"  {label}: peak RSS {mb(rss).strip()} <= 1.5 x (largest + libraries) = "
                          f"{mb(bound).strip()}: {'yes' if ok_rss else 'NO'}; wall {wall:.1f} s <= 2 x baseline "
                          f"{2 * base_wall:.1f} s: {'yes' if ok_wall else 'NO'}")
            ckpt.unlink()
            if pt is not None:
                pt.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
