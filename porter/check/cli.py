"""`porter check ORIGINAL.py:Class[(args)] CONVERTED.py:Class --input-shape 2,3,32,32`."""

from __future__ import annotations

import argparse
import sys

PROG = "porter check"
INPUT_DTYPES = ("float32", "int64", "int32", "bool")
DTYPES = ("float32", "bfloat16", "float16")  # = porter.check.equivalence.DTYPES (not imported: no jax for --help)
MODES = ("eval", "train")
DEVICES = ("cpu", "gpu")


def add_check_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "check",
        help="compare the original torch model and the converted flax model: outputs and gradients "
             "(imports and runs both model files)",
        description=(
            "Build the original (torch) and the converted (Flax NNX) model, copy the torch weights into the "
            "converted one, run both on the same random inputs on the same hardware, and compare outputs, "
            "every submodule's output in execution order (naming the first that diverges), and the "
            "gradients of a random projection of the outputs with respect to the float inputs and every "
            "parameter; optionally the state after K training steps. Exit status: 0 PASS, 1 FAIL, 2 usage error. "
            "It imports and runs both model files (and --script's script) as Python: run it only on code you "
            "trust, as you would `python ORIGINAL.py`."
        ),
    )
    parser.add_argument("original", metavar="ORIGINAL.py:Class[(args)]",
                        help="the torch model and its constructor arguments (Python literals)")
    parser.add_argument("converted", metavar="CONVERTED.py:Class[(args)]",
                        help="the converted model; without (args) it gets the original's arguments "
                             "(rngs=nnx.Rngs(SEED) is always added)")
    parser.add_argument("--input-shape", action="append", metavar="[NAME=]D0,D1,...",
                        help="shape of one input, e.g. 2,3,32,32; repeat for several inputs; NAME=2,16 passes "
                             "that input as the keyword argument NAME")
    parser.add_argument("--input-dtype", action="append", choices=INPUT_DTYPES, metavar="DTYPE",
                        help=f"dtype of each input ({', '.join(INPUT_DTYPES)}; default float32): "
                             "one for all inputs or one per --input-shape")
    parser.add_argument("--int-high", type=int, metavar="N",
                        help="integer inputs (token ids) are drawn uniformly from [0, N)")
    parser.add_argument("--rtol", type=float,
                        help="relative tolerance for outputs, layers, gradients and state (default per --dtype: "
                             "float32 outputs 1e-5 gradients 1e-4; bfloat16 2^-5/2^-4; float16 2^-8/2^-7)")
    parser.add_argument("--atol", type=float, help="absolute tolerance (default 1e-12)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for inputs, torch init (torch.manual_seed), flax init (nnx.Rngs) and cotangents")
    parser.add_argument("--no-grads", action="store_true", help="compare outputs only")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="run both models in this floating-point dtype (parameters, buffers, float inputs)")
    parser.add_argument("--mode", choices=MODES,
                        help="eval (default), or train: batch norm on batch statistics, dropout off on both "
                             "sides (default with --train-steps)")
    parser.add_argument("--train-steps", type=int, default=0, metavar="K",
                        help="take K SGD steps on both sides, then compare every parameter and buffer "
                             "(batch-norm running statistics included)")
    parser.add_argument("--lr", type=float, default=1e-2, help="SGD learning rate for --train-steps (default 0.01)")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="run both models on the CPU (default) or both on the GPU")
    parser.add_argument("--allow-tf32", action="store_true",
                        help="on a GPU, keep TF32 matmuls/convolutions on both sides (default: off on both); "
                             "default tolerances become float16's")
    parser.add_argument("--no-jit", action="store_true",
                        help="do not also run the converted model under jax.jit (by default its forward "
                             "and gradients run compiled too, each a row, and a failure fails the check)")
    parser.add_argument("--layers", choices=("all", "first", "none"), default="all",
                        help="per-module comparison: the first diverging module and a table of all (all), the "
                             "first only (first), or none")
    from porter.check.training_cli import add_training_arguments

    add_training_arguments(parser)
    parser.set_defaults(run=run_check)
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _parse_input(text: str) -> tuple[str | None, tuple[int, ...]]:
    """'2,3,8,8' -> (None, (2, 3, 8, 8)); 'mask=2,16' -> ('mask', (2, 16))."""
    name, sep, shape = text.partition("=")
    if not sep:
        return None, _parse_shape(text)
    name = name.strip()
    if not name.isidentifier():
        raise ValueError(f"--input-shape {text!r}: {name!r} is not a keyword argument name")
    return name, _parse_shape(shape)


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = text.strip().split(",")
    if len(parts) > 1 and not parts[-1].strip():  # "5," is the 1-D shape (5,)
        parts = parts[:-1]
    try:
        shape = tuple(int(part) for part in parts)
    except ValueError:
        raise ValueError(f"--input-shape {text!r}: expected comma-separated integers like 2,3,32,32") from None
    if not shape or any(d < 0 for d in shape):
        raise ValueError(f"--input-shape {text!r}: expected comma-separated non-negative integers")
    return shape


def make_inputs(shapes, dtypes, int_high, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    inputs = []
    for shape, dtype in zip(shapes, dtypes):
        if dtype.startswith("float"):
            inputs.append(rng.standard_normal(shape).astype(dtype))
        elif dtype == "bool":
            inputs.append(rng.integers(0, 2, size=shape).astype(bool))
        else:
            inputs.append(rng.integers(0, int_high, size=shape, dtype=dtype))
    return inputs


def run_check(args: argparse.Namespace) -> int:
    from porter.check.modelspec import ModelSpecError, build_model, import_file, parse_model_spec

    if args.script:
        from porter.check.training_cli import run_training_check

        return run_training_check(args)
    if not args.input_shape:
        return _error("the following arguments are required: --input-shape (or --script for training scripts)")

    try:
        parsed = [_parse_input(s) for s in args.input_shape]
    except ValueError as exc:
        return _error(str(exc))
    names = [name for name, _ in parsed]
    shapes = [shape for _, shape in parsed]
    keywords = [n for n in names if n is not None]
    if len(set(keywords)) != len(keywords):
        return _error("the same keyword input is given twice")
    if any(n is None for n in names[names.index(keywords[0]):]) if keywords else False:
        return _error("positional --input-shape after a keyword one: give positional inputs first")
    if args.train_steps < 0:
        return _error("--train-steps must be >= 0")
    mode = args.mode or ("train" if args.train_steps else "eval")
    dtypes = args.input_dtype or ["float32"]
    if len(dtypes) == 1:
        dtypes = dtypes * len(shapes)
    if len(dtypes) != len(shapes):
        return _error(f"{len(dtypes)} --input-dtype for {len(shapes)} --input-shape; give one, or one per input")
    if any(d.startswith("int") for d in dtypes):
        if args.int_high is None or args.int_high < 1:
            return _error("integer inputs need --int-high N (values are drawn from [0, N), e.g. the vocab size)")
    try:
        original = parse_model_spec(args.original)
        converted = parse_model_spec(args.converted)
    except ModelSpecError as exc:
        return _error(str(exc))

    import torch
    import torch.nn
    import torch.nn.functional
    from flax import nnx

    from porter.check.equivalence import ModelRunError, check_equivalence
    from porter.weights.loader import StateDictMismatch

    conventions = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional}
    try:
        torch_module = import_file(original.path, preseed=conventions, warn=_warn)
        torch.manual_seed(args.seed)
        torch_model = build_model(original, module=torch_module)
        flax_args = (converted.args, converted.kwargs) if converted.has_call else (original.args, original.kwargs)
        flax_model = build_model(converted, args=flax_args[0], kwargs=flax_args[1],
                                 extra_kwargs={"rngs": nnx.Rngs(args.seed)})
    except ModelSpecError as exc:
        return _error(str(exc))
    if not isinstance(torch_model, torch.nn.Module):
        return _error(f"{original.name} built a {type(torch_model).__name__}, not a torch.nn.Module")
    if not isinstance(flax_model, nnx.Module):
        return _error(f"{converted.name} built a {type(flax_model).__name__}, not an nnx.Module")

    inputs = make_inputs(shapes, dtypes, args.int_high, args.seed)
    positional = [a for n, a in zip(names, inputs) if n is None]
    keyword = {n: a for n, a in zip(names, inputs) if n is not None}
    try:
        report = check_equivalence(torch_model, flax_model, *positional, kw_inputs=keyword, rtol=args.rtol,
                                   atol=args.atol, seed=args.seed, grads=not args.no_grads, mode=mode,
                                   train_steps=args.train_steps, lr=args.lr, dtype=args.dtype,
                                   device=args.device, allow_tf32=args.allow_tf32,
                                   layers=args.layers != "none", jit=not args.no_jit)
    except StateDictMismatch as exc:
        print(f"{PROG}: the converted model's variables do not match the original's state_dict:\n{exc}")
        print("FAIL")
        return 1
    except ModelRunError as exc:
        if exc.side == "original":
            return _error(f"{exc} (do the --input-shape/--input-dtype fit the model?)")
        print(f"{PROG}: {exc}")
        print("FAIL")
        return 1
    except ValueError as exc:
        return _error(str(exc))
    report.layer_rows = args.layers
    print(report.format())
    return 0 if report.passed else 1
