"""Convert torchvision's unpacked source and run `porter check` (eval and train mode) on its models.

    python benchmarks/torchvision_check.py [--out DIR] [--models googlenet vit_b ...] [--no-convert]

The torchvision tree under ~/.cache/porter-corpus/unpacked/torchvision-*/ (read locally, never shipped)
converts into OUT/torchvision; each model then runs in a process of its own: built from the original
(random weights, torch.manual_seed(0)), then from OUT (which shadows it on sys.path) with
`rngs=nnx.Rngs(0)`, and compared by porter.check.equivalence.check_equivalence with the torch weights
copied in (outputs and gradients, eager: no jit run and no per-layer table, to keep it cheap). A line per model: PASS, FAIL (the check's first lines) or ERROR (where building or
running the converted model stopped). Small configurations keep it to minutes on a CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path.home() / ".cache" / "porter-corpus" / "unpacked"

# name -> (constructor expression on the torchvision package, input shape)
MODELS = {
    "resnet18": ("torchvision.models.resnet18(num_classes=10)", (2, 3, 64, 64)),
    "mobilenet_v2": ("torchvision.models.mobilenet_v2(num_classes=10)", (2, 3, 64, 64)),
    "efficientnet_b0": ("torchvision.models.efficientnet_b0(num_classes=10)", (2, 3, 64, 64)),
    "googlenet": ("torchvision.models.googlenet(num_classes=10, aux_logits=False, init_weights=False)",
                  (2, 3, 64, 64)),
    "inception_v3": ("torchvision.models.inception_v3(num_classes=10, aux_logits=False, init_weights=False)",
                     (2, 3, 80, 80)),
    "densenet": ("torchvision.models.densenet.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, "
                 "num_classes=10)", (2, 3, 64, 64)),
    "regnet_x_400mf": ("torchvision.models.regnet_x_400mf(num_classes=10)", (2, 3, 64, 64)),
    "vit": ("torchvision.models.vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2, "
            "num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)", (2, 3, 32, 32)),
    "lraspp_mobilenet_v3_large": ("torchvision.models.segmentation.lraspp_mobilenet_v3_large(num_classes=3)",
                                  (2, 3, 64, 64)),
}

RUN = textwrap.dedent("""\
    import sys, numpy as np, torch
    # the PyPI torchvision wheel's operators do not load with this CPU torch (benchmarks/corpus.py SHIMS)
    _lib = torch.library.Library("torchvision", "DEF")
    for schema in ["nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                   "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"]:
        _lib.define(schema)
    expression, shape, out = sys.argv[1], eval(sys.argv[2]), sys.argv[3]
    import torchvision, torchvision.models.segmentation
    torch.manual_seed(0)
    original = eval(expression)
    for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
        del sys.modules[name]
    sys.path.insert(0, out)
    from flax import nnx
    import torchvision, torchvision.models.segmentation
    assert torchvision.__file__.startswith(out), torchvision.__file__
    converted = eval(expression[:-1] + ", rngs=nnx.Rngs(0))")
    from porter.check.equivalence import check_equivalence
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for mode in ("eval", "train"):
        report = check_equivalence(original, converted, x, mode=mode, jit=False, layers=False)
        print(mode, "PASS" if report.passed else "FAIL\\n" + report.format()[:3000], flush=True)
    """)


def convert(out: Path) -> None:
    [source] = sorted(CORPUS.glob("torchvision-*"))
    staging = out / "src"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source / "torchvision", staging / "torchvision")
    subprocess.run([sys.executable, "-m", "porter", "convert", str(staging / "torchvision"), "-o",
                    str(out / "torchvision"), "-j", "1"], env={**os.environ, "PYTHONPATH": str(ROOT)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1800)


def check(name: str, out: Path) -> str:
    expression, shape = MODELS[name]
    [source] = sorted(CORPUS.glob("torchvision-*"))
    paths = [str(ROOT), str(source), *map(str, CORPUS.glob("pillow-*"))]
    run = subprocess.run([sys.executable, "-c", RUN, expression, repr(shape), str(out)], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)}, timeout=1200)
    lines = run.stdout.split("\n")
    modes = [line for line in lines if line.startswith(("eval", "train"))]
    if run.returncode == 0 and modes == ["eval PASS", "train PASS"]:
        return "PASS (eval, train)"
    if modes and "FAIL" in " ".join(modes):
        return "FAIL " + " ".join(modes) + "\n" + textwrap.indent(run.stdout[-1500:], "    ")
    error = [line for line in run.stderr.strip().split("\n") if line.strip()]
    where = [line.strip() for line in error if line.strip().startswith("File ")][-1:]
    return "ERROR " + (error[-1] if error else "?") + (f" ({where[0]})" if where else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/porter-torchvision-check"))
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--no-convert", action="store_true", help="reuse OUT's conversion")
    args = parser.parse_args()
    if not args.no_convert:
        convert(args.out)
    for name in args.models:
        print(f"{name}: {check(name, args.out)}", flush=True)


if __name__ == "__main__":
    main()
