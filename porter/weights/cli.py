"""`porter weights CKPT -o OUT --model converted.py:Class(args)`: a torch checkpoint -> Flax NNX state."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROG = "porter weights"


def add_weights_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "weights",
        help="convert a torch checkpoint into the converted model's Flax NNX state (Orbax or safetensors)",
        description=(
            "Read a torch checkpoint (.pt/.pth/.bin with weights_only=True, .safetensors, or a sharded "
            "*.index.json), load it into the converted model (layouts transposed per layer, strict by "
            "default), and write the model's state as an Orbax checkpoint or a safetensors file. "
            "Pickles that hold code or objects other than tensors are refused."
        ),
    )
    parser.add_argument("checkpoint", metavar="CKPT", help="torch checkpoint (.pt/.pth/.bin/.safetensors)")
    parser.add_argument("-o", "--output", metavar="OUT", required=True,
                        help="where to write: a directory (Orbax) or a .safetensors file")
    parser.add_argument("--model", required=True, metavar="FILE.py:Class[(args)]",
                        help="the converted model: FILE.py:ClassName or FILE.py:ClassName(arg, kw=2) with "
                             "Python literal arguments; built with rngs=nnx.Rngs(0) added")
    parser.add_argument("--key", help="the entry of a nested checkpoint holding the state_dict "
                                      "(e.g. model, state_dict; dotted for deeper levels)")
    parser.add_argument("--format", choices=("orbax", "safetensors"),
                        help="output format (default: safetensors if OUT ends in .safetensors, else orbax)")
    parser.add_argument("--non-strict", action="store_true",
                        help="load what matches and report missing/unexpected/mis-shaped keys instead of failing")
    parser.add_argument("--dtype", choices=("checkpoint", "model"), default="checkpoint",
                        help="keep the checkpoint's dtypes (default) or cast to the model's variable dtypes")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(run=run_weights)
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def run_weights(args: argparse.Namespace) -> int:
    from porter.check.modelspec import ModelSpecError, build_model, parse_model_spec
    from porter.weights.loader import StateDictMismatch, load_torch_state_dict
    from porter.weights.readers import CheckpointError, read_state_dict
    from porter.weights.writers import restore_snippet, write_orbax, write_safetensors

    out = Path(args.output)
    fmt = args.format or ("safetensors" if out.suffix.lower() == ".safetensors" else "orbax")
    if (out.exists() or out.is_symlink()) and not args.force:
        return _error(f"{out} exists; use --force to replace it")
    try:
        spec = parse_model_spec(args.model)
    except ModelSpecError as exc:
        return _error(str(exc))
    # Read (and vet) the checkpoint before running any code of the model file.
    try:
        state_dict, info = read_state_dict(args.checkpoint, key=args.key)
    except CheckpointError as exc:
        return _error(str(exc))
    print(f"read {info.describe()}")
    if info.other_keys:
        print(f"  also in the checkpoint (not converted): {', '.join(info.other_keys)}")

    from flax import nnx

    try:
        model = build_model(spec, extra_kwargs={"rngs": nnx.Rngs(0)})
    except ModelSpecError as exc:
        return _error(str(exc))
    try:
        report = load_torch_state_dict(model, state_dict, strict=not args.non_strict, dtype=args.dtype)
    except StateDictMismatch as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        print(f"{PROG}: nothing written; --non-strict loads the keys that match", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. the model cannot be named like a state_dict
        return _error(str(exc))
    print(report.format())
    try:
        if fmt == "orbax":
            written = write_orbax(model, out, force=args.force)
        else:
            written = write_safetensors(model, out, force=args.force)
    except (OSError, FileExistsError) as exc:
        return _error(f"writing {out} failed: {exc}")
    print(f"wrote {written} ({fmt})")
    constructor = spec.call_text(extra="rngs=nnx.Rngs(0)")
    print("restore it into the converted model with:")
    for line in restore_snippet(fmt, written, constructor).splitlines():
        print(f"    {line}")
    return 0
