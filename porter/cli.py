"""Command line: porter convert | weights | check."""

from __future__ import annotations

import argparse
import os
import sys

from porter.check.bench_cli import add_bench_parser
from porter.check.cli import add_check_parser
from porter.convert.cli import add_convert_parser
from porter.convert.explain import add_explain_parser
from porter.rules.scan import add_scan_parser
from porter.rules.table import add_rules_parser
from porter.weights.cli import add_weights_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="porter",
        description="Move PyTorch code to JAX (Flax NNX): convert source, convert weights, check equivalence.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_convert_parser(commands)
    add_explain_parser(commands)
    add_weights_parser(commands)
    add_check_parser(commands)
    add_bench_parser(commands)
    add_rules_parser(commands)
    add_scan_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def run() -> None:
    """The console script (and `python -m porter`): main(), then exit without Python's finalisation.

    Finalisation frees torch's and jax's module graphs and native state object by object: 0.4-0.9 s
    after `porter weights`, a third of a 2 GB conversion. Every output is written, fsynced and
    renamed into place before main returns, so skipping it loses nothing. An exception still
    ends the normal way, with its traceback.

    A reader that stops early (`porter ... | head -1`) closes stdout's pipe: the rest of the output
    goes to /dev/null and the exit code is 141 (128 + SIGPIPE, what a shell shows for a command a
    closed pipe ended), with no traceback. Ctrl-C likewise: `porter: interrupted`, exit code 130.
    """
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is left in stdout's buffer goes nowhere, quietly
        code = 141  # 128 + SIGPIPE
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback; every output is atomic, none is half-written
        print("porter: interrupted", file=sys.stderr)
        code = 130  # 128 + SIGINT
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
