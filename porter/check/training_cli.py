"""`porter check --script ORIGINAL.py CONVERTED.py [--steps N] [--plot OUT.png]`: training scripts step by step."""

from __future__ import annotations

import argparse
import sys

PROG = "porter check"


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "training scripts", "with --script, ORIGINAL and CONVERTED are two training scripts (no :Class): both run "
                            "from the same initial weights, then the loss at every optimizer step and the final "
                            "parameters are compared (porter.check.training)")
    group.add_argument("--script", action="store_true",
                       help="compare the training scripts ORIGINAL.py (torch) and CONVERTED.py (jax) step by step")
    group.add_argument("--steps", type=int, metavar="N",
                       help="stop both scripts after N optimizer steps (default: run them to the end)")
    group.add_argument("--plot", metavar="OUT.png", help="draw both loss curves (needs matplotlib)")
    group.add_argument("--rows", type=int, default=20, metavar="R",
                       help="at most about R rows in the loss table (first, last, first divergence, worst)")


def run_training_check(args: argparse.Namespace) -> int:
    from pathlib import Path

    from porter.check.training import LOSS_RTOL, STATE_RTOL, check_training

    for spec in (args.original, args.converted):
        if not Path(spec).is_file():
            print(f"{PROG}: error: {spec}: no such script (--script takes two .py files)", file=sys.stderr)
            return 2
    if args.steps is not None and args.steps < 1:
        print(f"{PROG}: error: --steps must be >= 1", file=sys.stderr)
        return 2
    report = check_training(args.original, args.converted, steps=args.steps,
                            loss_rtol=args.rtol or LOSS_RTOL, state_rtol=args.rtol or STATE_RTOL,
                            float64=args.rtol is None)
    print(report.format(rows=args.rows))
    if args.plot:
        try:
            report.plot(args.plot)
        except ImportError:
            print(f"{PROG}: warning: --plot needs matplotlib (not installed); no plot written", file=sys.stderr)
    return 0 if report.passed else 1
