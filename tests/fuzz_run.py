"""Runs many random programs (tests/fuzz_programs.py) and prints every failure.

    python tests/fuzz_run.py -n 2000 [--seed S] [--max-steps 5] [--out failures.txt]

Unlike the CI test it does not stop at the first failure or shrink: each
failing program is printed with its error, so a run lists every distinct bug
it hit. Failures are grouped by the first line of their message.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402

from fuzz_programs import IllConditioned, programs, run_program  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="programs to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the failing programs here")
    args = parser.parse_args(argv)

    # read every helper's source now: a long run must not see porter/emitted.py half-edited
    from porter import emitted
    from porter.convert.passes.imports import helper_sources
    helper_sources(list(emitted.DEPENDS))

    failures: list[tuple[str, str, str]] = []
    ill_conditioned: list[str] = []
    count = 0
    start = time.time()

    @settings(max_examples=args.n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @seed(args.seed)
    @given(programs(max_steps=args.max_steps))
    def run(program):
        nonlocal count
        count += 1
        try:
            run_program(program, seed=count)
        except IllConditioned:
            ill_conditioned.append(program.source)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failures.append((f"{type(exc).__name__}: {message}", f"# seed {count}\n{program.source}",
                             traceback.format_exc()))
        if count % 50 == 0:
            print(f"{count} programs, {len(failures)} failures, {len(ill_conditioned)} ill-conditioned, "
                  f"{time.time() - start:.0f}s", flush=True)

    run()
    groups = collections.Counter(key for key, _, _ in failures)
    print(f"\n{count} programs in {time.time() - start:.0f}s: {len(failures)} failed ({len(groups)} distinct), "
          f"{len(ill_conditioned)} ill-conditioned (every difference within float32's own error on them)")
    for key, n in groups.most_common():
        print(f"  {n:4d}  {key[:160]}")
    if args.out:
        with args.out.open("w") as f:
            for key, source, tb in failures:
                f.write(f"=== {key}\n{source}\n{tb}\n")
            for source in ill_conditioned:
                f.write(f"=== ill-conditioned\n{source}\n")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
