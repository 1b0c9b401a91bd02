"""`porter weights` on a checkpoint of about 2 GB, against a plain safetensors copy, measured in one run.

For each dtype (float32, and bfloat16 with the same byte size), this script
writes a transformer-style state_dict (token embedding, then blocks of
attention in/out projections, MLP up/down, two LayerNorms) as .safetensors
(and as a torch.save .pt), plus the converted-style Flax model that matches
it, then runs as separate processes (so each one's peak RSS is its own, read
with os.wait4):

- library: `python -c "import <what porter weights imports>"`: the interpreter
  and library baseline;
- baseline: `safetensors.torch.save_file(safetensors.torch.load_file(IN), OUT)`
  (the faster and leaner of the library's two plain copies: its numpy
  load_file/save_file takes about twice the time and memory);
- with Orbax outputs, Orbax's own save of the same arrays (all in memory, one
  `StandardCheckpointer.save`): the speed no Orbax writer beats;
- porter: `porter weights IN -o OUT --model model.py:Net(n)` for each input
  (.safetensors, .pt) and output (safetensors, Orbax).

It prints wall time and peak RSS of each, the ratios porter / baseline, and
the issue's bounds: peak RSS <= 1.5 x (largest tensor + library baseline), and
wall time <= 2 x the baseline copy. Each input is read before each run (it is
in the page cache) and os.sync() runs before each (untimed), so no run waits
on another's writes. porter fsyncs its output before renaming it into place;
the baseline does not (its file may still be in the page cache when it exits).
Runs are interleaved --repeat times; the fastest wall time counts.

    python benchmarks/weights.py [--size 2GB] [--dtypes float32,bfloat16] [--inputs safetensors,pt]
                                 [--outputs safetensors,orbax] [--repeat 2]

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


ORBAX_BASELINE = ("import sys; from safetensors.numpy import load_file; import orbax.checkpoint as ocp; "
                  "tree = {k.replace('.', '_'): v for k, v in load_file(sys.argv[1]).items()}; "
                  "c = ocp.StandardCheckpointer(); c.save(sys.argv[2], tree); c.wait_until_finished(); c.close()")
ORBAX_BASELINE_LABEL = "baseline: orbax's own save of the same arrays"


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
    """(wall seconds, peak RSS bytes) of one child process, started with no dirty pages left by earlier runs
    (os.sync first, untimed: every run pays for its own writes only)."""
    os.sync()
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


def parse_size(text: str) -> float:
    """'2GB', '500MB', '0.5' (GB) -> GB."""
    text = text.strip().upper().removesuffix("B")
    scale = {"G": 1.0, "M": 1e-3, "K": 1e-6}.get(text[-1:], None)
    return float(text[:-1]) * scale if scale is not None else float(text)


def runs_for(python: str, tmp: Path, inputs: list[tuple[str, Path]], baseline_input: Path, spec: str,
             outputs: list[str]) -> list[tuple[str, list[str], Path]]:
    """(label, argv, output path) of the baseline, then porter weights for each input and output format."""
    copy = tmp / "copy.safetensors"
    runs = [("baseline: safetensors load_file + save_file", [python, "-c", BASELINE, str(baseline_input), str(copy)],
             copy)]
    if "orbax" in outputs:  # Orbax's own speed, the floor of any Orbax output
        orbax_copy = tmp / "copy_orbax"
        runs.append((ORBAX_BASELINE_LABEL, [python, "-c", ORBAX_BASELINE, str(baseline_input), str(orbax_copy)],
                     orbax_copy))
    for tag, source in inputs:
        for fmt in outputs:
            out = tmp / ("out.safetensors" if fmt == "safetensors" else "out_orbax")
            runs.append((f"porter weights {tag} -> {fmt}", [python, "-m", "porter", "weights", str(source), "-o",
                                                             str(out), "--model", spec, "--no-progress"], out))
    return runs


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", "--gb", dest="size", default="2GB",
                        help="checkpoint size: 2GB (default), 500MB, or a number of GB")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--inputs", default="safetensors,pt", help="input formats: safetensors, pt (torch.save zip)")
    parser.add_argument("--outputs", default="safetensors,orbax", help="output formats: safetensors, orbax")
    parser.add_argument("--repeat", type=int, default=2,
                        help="runs of each, interleaved; the fastest wall time and the largest peak RSS are "
                             "reported (other processes on the machine only ever slow a run down)")
    parser.add_argument("--tmp", help="directory for the files (default: a new temporary directory)")
    parser.add_argument("--_generate", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._generate:
        path, n_layers, dtype, torch_copy = args._generate
        print(*make_checkpoint(Path(path), int(n_layers), dtype, Path(torch_copy) if torch_copy else None))
        return 0
    if not sys.platform.startswith("linux"):
        raise SystemExit("peak RSS from os.wait4 is read in KiB, as on Linux; run this on Linux")
    gb = parse_size(args.size)
    inputs = [x for x in args.inputs.split(",") if x]
    outputs = [x for x in args.outputs.split(",") if x]
    python = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="porter-bench-", dir=args.tmp))
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    try:
        (tmp / "model.py").write_text(MODEL_FILE)
        lib_wall, lib_rss = measure([python, "-c", LIBRARIES], "library import")
        own = measure([python, "-c", "pass"], "bare interpreter")[1]
        print(f"interpreter + libraries (what porter weights imports): {mb(lib_rss)} peak RSS, {lib_wall:.1f} s "
              f"(bare interpreter {mb(own).strip()}: the floor any child starts from)")
        for dtype in args.dtypes.split(","):
            itemsize = 4 if dtype == "float32" else 2
            n_layers = layers_for(gb, itemsize)
            ckpt = tmp / f"ckpt-{dtype}.safetensors"
            pt = tmp / f"ckpt-{dtype}.pt" if "pt" in inputs else None
            size, largest = generate(ckpt, n_layers, dtype, pt)
            print(f"\n== {dtype}: {n_layers} blocks, {mb(size).strip()} on disk, largest tensor {mb(largest).strip()}, "
                  f"{args.repeat} run(s) each")
            sources = [(f".{name}", ckpt if name == "safetensors" else pt) for name in inputs]
            runs = runs_for(python, tmp, sources, ckpt, f"{tmp / 'model.py'}:Net({n_layers})", outputs)
            walls: dict[str, list[float]] = {label: [] for label, _, _ in runs}
            peaks: dict[str, int] = {label: 0 for label, _, _ in runs}
            for _ in range(args.repeat):
                for label, argv, out in runs:
                    warm(pt if ".pt" in label else ckpt)
                    wall, rss = measure(argv, label)
                    walls[label].append(wall)
                    peaks[label] = max(peaks[label], rss)
                    remove(out)
            report(walls, peaks, largest, lib_rss)
            remove(ckpt)
            if pt is not None:
                remove(pt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (on a busy machine, compare ratios, not seconds)")
    return 0


def report(walls: dict[str, list[float]], peaks: dict[str, int], largest: int, lib_rss: int) -> None:
    labels = list(walls)
    base_wall, base_rss = min(walls[labels[0]]), peaks[labels[0]]
    orbax_wall = min(walls[ORBAX_BASELINE_LABEL]) if ORBAX_BASELINE_LABEL in walls else None
    bound = 1.5 * (largest + lib_rss)
    print(f"{'run':<44} {'wall':>7} {'peak RSS':>9} {'wall/base':>9} {'RSS/base':>8}  wall <= 2x base, RSS <= bound")
    for label in labels:
        wall, rss = min(walls[label]), peaks[label]
        verdict = ""
        if not label.startswith("baseline"):
            verdict = f"  {'yes' if wall <= 2 * base_wall else 'NO':>3}, {'yes' if rss <= bound else 'NO'}"
            if label.endswith("orbax") and orbax_wall:
                verdict += f"; {wall / orbax_wall:.2f}x orbax's own save"
        runs = "/".join(f"{w:.1f}" for w in walls[label])
        print(f"{label:<44} {wall:6.1f}s {rss / 1e6:6.0f} MB {wall / base_wall:8.2f}x {rss / base_rss:7.2f}x{verdict}"
              f"   (runs: {runs} s)")
    print(f"bound: 1.5 x (largest tensor {mb(largest).strip()} + interpreter and libraries {mb(lib_rss).strip()}) = "
          f"{mb(bound).strip()}; 2 x baseline wall = {2 * base_wall:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
