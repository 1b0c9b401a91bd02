"""`porter weights CKPT -o OUT [--model converted.py:Class(args)]`: a torch checkpoint -> Flax NNX state.

And back: `porter weights FLAX_CKPT -o OUT.pt --to-torch [--model ...]`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from porter.paths import overlaps

PROG = "porter weights"


def add_weights_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "weights",
        help="convert a torch checkpoint into the converted model's Flax NNX state (Orbax or safetensors)",
        description=(
            "Read a torch checkpoint (.pt/.pth/.bin zip or legacy with weights_only=True, .safetensors, a sharded "
            "*.index.json, or a directory holding one), map every key into the converted model (exactly with "
            "--model; otherwise by key names and shapes, reporting which keys were guessed), lay each tensor out "
            "for flax (transposed per layer), and write an Orbax checkpoint or a flax-keyed safetensors file, "
            "one tensor at a time. Pickles that hold code or objects other than tensors are refused. "
            "--to-torch goes back: a flax checkpoint into a torch state_dict file."
        ),
    )
    parser.add_argument("checkpoint", metavar="CKPT",
                        help="torch checkpoint: .pt/.pth/.bin/.ckpt, .safetensors, *.index.json, or a directory")
    parser.add_argument("-o", "--output", metavar="OUT", required=True,
                        help="where to write: a directory (Orbax) or a .safetensors file (--to-torch: .pt or "
                             ".safetensors)")
    parser.add_argument("--model", metavar="FILE.py:Class[(args)]",
                        help="the converted model: FILE.py:ClassName or FILE.py:ClassName(arg, kw=2) with "
                             "Python literal arguments; built with rngs=nnx.Rngs(0) added (abstractly, under "
                             "nnx.eval_shape: no parameter memory). Without it keys are mapped by names and shapes")
    parser.add_argument("--key", help="the entry of a nested checkpoint holding the state_dict "
                                      "(e.g. model, state_dict; dotted for deeper levels)")
    parser.add_argument("--format", choices=("orbax", "safetensors"),
                        help="output format (default: safetensors if OUT ends in .safetensors, else orbax)")
    parser.add_argument("--non-strict", action="store_true",
                        help="load what matches and report missing/unexpected/mis-shaped keys instead of failing")
    parser.add_argument("--dtype", choices=("checkpoint", "model"), default="checkpoint",
                        help="keep the checkpoint's dtypes (default) or cast to the model's variable dtypes "
                             "(needs --model)")
    parser.add_argument("--strip-prefix", action="append", metavar="PREFIX",
                        help="remove PREFIX (e.g. 'module.') from the keys that start with it; repeatable, applied "
                             "in order. Without --strip-prefix/--add-prefix, porter strips or adds module., "
                             "_orig_mod. and model. by itself when that makes the keys match the model")
    parser.add_argument("--add-prefix", metavar="PREFIX",
                        help="put PREFIX before every key (after --strip-prefix)")
    parser.add_argument("--to-torch", action="store_true",
                        help="the reverse direction: CKPT is a flax checkpoint (porter's safetensors, or Orbax with "
                             "--model); OUT a torch state_dict (.pt via torch.save, or .safetensors)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument("--progress", dest="progress", action="store_true", default=None,
                        help="show the progress bar even when stderr is not a terminal")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar (default: shown on a terminal only)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every transposed and guessed key")
    parser.set_defaults(run=run_weights)
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _builder(spec):
    """A zero-argument function that builds the converted model (its file imported now, once)."""
    from flax import nnx

    from porter.check.modelspec import build_model, import_file

    module = import_file(spec.path)
    return lambda: build_model(spec, module=module, extra_kwargs={"rngs": nnx.Rngs(0)})


def run_weights(args: argparse.Namespace) -> int:
    from porter.check.modelspec import ModelSpecError, parse_model_spec
    from porter.weights.convert import ConversionError, convert_checkpoint, convert_to_torch, output_format
    from porter.weights.outputs import OutputError, check_output
    from porter.weights.readers import CheckpointError, open_checkpoint
    from porter.weights.report import StateDictMismatch
    from porter.weights.writers import model_import, restore_snippet

    out = Path(args.output)
    if (out.exists() or out.is_symlink()) and not args.force and not overlaps(out, args.checkpoint):
        return _error(f"{out} exists; use --force to replace it")  # (an overlap is refused, force or not, below)
    spec = None
    if args.model:
        try:
            spec = parse_model_spec(args.model)
        except ModelSpecError as exc:
            return _error(str(exc))
    if args.dtype == "model" and spec is None:
        return _error("--dtype model casts to the model's dtypes: give the model with --model")
    if args.to_torch:
        if args.key or args.strip_prefix or args.add_prefix or args.format:
            return _error("--key, --strip-prefix, --add-prefix and --format apply to torch -> flax, not --to-torch")
        model = None
        if spec is not None:
            from porter.weights.convert import resolve_model

            try:
                model, _, _ = resolve_model(_builder(spec))
            except ModelSpecError as exc:
                return _error(str(exc))
        try:
            result = convert_to_torch(args.checkpoint, out, model=model, force=args.force, progress=args.progress)
        except StateDictMismatch as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return 2
        except (CheckpointError, ConversionError, OutputError, FileExistsError) as exc:
            return _error(str(exc))
        except OSError as exc:
            return _error(f"writing {out} failed: {exc}")
        for note in result.notes:
            print(f"  note: {note}")
        print(f"wrote {result.output}: torch state_dict, {result.tensors} tensor(s), "
              f"{len(result.report.transposed)} transposed back")
        return 0

    fmt = output_format(out, args.format)
    # Read (and vet) the checkpoint before running any code of the model file.
    try:
        source = open_checkpoint(args.checkpoint, key=args.key)
    except CheckpointError as exc:
        return _error(str(exc))
    with source:
        try:  # before the model file runs: a refused output costs nothing
            check_output(out, fmt, source.files(), force=args.force)
        except (OutputError, FileExistsError) as exc:
            return _error(str(exc))
        print(f"read {source.info.describe()}")
        for note in source.info.notes:
            print(f"  note: {note}")
        if source.info.other_keys:
            print(f"  also in the checkpoint (not converted): {', '.join(source.info.other_keys)}")
        model = None
        if spec is not None:
            try:
                model = _builder(spec)
            except ModelSpecError as exc:
                return _error(str(exc))
        try:
            result = convert_checkpoint(source, out, model=model, fmt=fmt, strict=not args.non_strict,
                                        dtype=args.dtype, strip_prefix=args.strip_prefix, add_prefix=args.add_prefix,
                                        force=args.force, progress=args.progress)
        except StateDictMismatch as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            print(f"{PROG}: nothing written; --non-strict loads the keys that match", file=sys.stderr)
            return 2
        except (CheckpointError, ConversionError, FileExistsError, ModelSpecError, ValueError) as exc:
            return _error(str(exc))
        except OSError as exc:
            return _error(f"writing {out} failed: {exc}")
    print(result.report.format(verbose=args.verbose))
    for note in result.notes:
        print(f"  note: {note}")
    filled = f" ({result.filled} of them the model's initial values, not in the checkpoint)" if result.filled else ""
    print(f"wrote {result.output} ({fmt}): {result.tensors} tensor(s){filled}, {result.nbytes / 1e6:.1f} MB")
    constructor = spec.call_text(extra="rngs=nnx.Rngs(0)") if spec is not None else "Net(rngs=nnx.Rngs(0))"
    print("restore it into the converted model with:" if spec is not None else
          "restore it into the converted model (your class for Net) with:")
    imported = model_import(spec.path, spec.name) if spec is not None else model_import(None, "Net")
    for line in restore_snippet(fmt, Path(result.output).absolute(), constructor, imported).splitlines():
        print(f"    {line}")
    return 0
