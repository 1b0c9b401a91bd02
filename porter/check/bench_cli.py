"""`porter bench ORIGINAL.py:Class[(args)] CONVERTED.py:Class --input-shape 2,3,32,32`."""

from __future__ import annotations

import argparse
import sys

from porter.check.cli import INPUT_DTYPES, _parse_input, make_inputs

PROG = "porter bench"


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench",
        help="time the original (torch eager, torch.compile) against the converted model under jax.jit "
             "(imports and runs both model files)",
        description=(
            "Build the original (torch) and the converted (Flax NNX) model with the same weights and time, "
            "in this process on the CPU, the forward pass (inference) and a training step (forward, "
            "backward, SGD update) of torch eager, torch.compile and the converted model under jax.jit: "
            "median of repeated calls after warm-up, ratios to torch eager, compile times and peak memory "
            "separately. Exit status: 0 done, 1 a model failed to run, 2 usage error. It imports and runs both "
            "model files as Python: run it only on code you trust, as you would `python ORIGINAL.py`."
        ),
    )
    parser.add_argument("original", metavar="ORIGINAL.py:Class[(args)]",
                        help="the torch model and its constructor arguments (Python literals)")
    parser.add_argument("converted", metavar="CONVERTED.py:Class[(args)]",
                        help="the converted model; without (args) it gets the original's arguments")
    parser.add_argument("--input-shape", action="append", required=True, metavar="[NAME=]D0,D1,...",
                        help="shape of one input; repeat for several; NAME=... for a keyword input")
    parser.add_argument("--input-dtype", action="append", choices=INPUT_DTYPES, metavar="DTYPE",
                        help="dtype of each input (default float32): one for all or one per --input-shape")
    parser.add_argument("--int-high", type=int, metavar="N", help="integer inputs are drawn from [0, N)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--lr", type=float, default=1e-3, help="SGD learning rate of the train step")
    parser.add_argument("--seed", type=int, default=0, help="seed for inputs, init and cotangents")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (it takes a while)")
    parser.add_argument("--no-train", action="store_true", help="forward only")
    parser.add_argument("--stat", choices=("median", "min"), default="median",
                        help="the statistic the x-eager ratios use (default median; min resists a busy machine)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="intra-op threads for both frameworks (default: each framework's own default)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON (- for stdout)")
    parser.add_argument("--plot", metavar="PATH.png", help="also draw the times as a PNG (needs matplotlib)")
    parser.set_defaults(run=run_bench)
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def run_bench(args: argparse.Namespace) -> int:
    from porter.check.modelspec import ModelSpecError, build_model, import_file, parse_model_spec

    try:
        parsed = [_parse_input(s) for s in args.input_shape]
    except ValueError as exc:
        return _error(str(exc))
    names = [n for n, _ in parsed]
    shapes = [s for _, s in parsed]
    dtypes = args.input_dtype or ["float32"]
    if len(dtypes) == 1:
        dtypes = dtypes * len(shapes)
    if len(dtypes) != len(shapes):
        return _error(f"{len(dtypes)} --input-dtype for {len(shapes)} --input-shape; give one, or one per input")
    if any(d.startswith("int") for d in dtypes) and (args.int_high is None or args.int_high < 1):
        return _error("integer inputs need --int-high N (values are drawn from [0, N))")
    if args.repeats < 1 or args.warmup < 0:
        return _error("--repeats must be >= 1 and --warmup >= 0")
    from porter.check.bench import bench_models, have_matplotlib, limit_threads, plot, write_json

    if args.threads is not None:
        if args.threads < 1:
            return _error("--threads must be >= 1")
        try:
            limit_threads(args.threads)
        except RuntimeError as exc:
            return _error(str(exc))

    if args.plot and not have_matplotlib():
        return _error("--plot needs matplotlib, which is not installed (pip install matplotlib)")
    try:
        original = parse_model_spec(args.original)
        converted = parse_model_spec(args.converted)
    except ModelSpecError as exc:
        return _error(str(exc))

    import torch
    import torch.nn
    import torch.nn.functional
    from flax import nnx

    from porter.weights.loader import StateDictMismatch

    conventions = {"torch": torch, "nn": torch.nn, "F": torch.nn.functional}
    try:
        torch_module = import_file(original.path, preseed=conventions)
        torch.manual_seed(args.seed)
        torch_model = build_model(original, module=torch_module)
        flax_args = (converted.args, converted.kwargs) if converted.has_call else (original.args, original.kwargs)
        flax_model = build_model(converted, args=flax_args[0], kwargs=flax_args[1],
                                 extra_kwargs={"rngs": nnx.Rngs(args.seed)})
    except ModelSpecError as exc:
        return _error(str(exc))
    inputs = make_inputs(shapes, dtypes, args.int_high, args.seed)
    positional = [a for n, a in zip(names, inputs) if n is None]
    keyword = {n: a for n, a in zip(names, inputs) if n is not None}
    try:
        result = bench_models(torch_model, flax_model, *positional, kw_inputs=keyword, name=original.call_text(),
                              repeats=args.repeats, warmup=args.warmup, compile=not args.no_compile,
                              train=not args.no_train, lr=args.lr, seed=args.seed, stat=args.stat)
    except StateDictMismatch as exc:
        print(f"{PROG}: the converted model's variables do not match the original's state_dict:\n{exc}")
        return 1
    print(result.format())
    if args.json:
        write_json([result], args.json)
    if args.plot:
        plot([result], args.plot)
        print(f"plot written to {args.plot}")
    failed = [r for r in result.results if r.variant != "torch.compile"
              and any(m.error and not m.error.startswith("no train") for m in (r.forward, r.train))]
    return 1 if failed else 0
