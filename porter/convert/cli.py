"""`porter convert SRC [-o OUT]`: a file, or a package directory."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from porter.convert.diagnostics import Severity
from porter.convert.pipeline import Conversion, convert_source, write_atomically


def add_convert_parser(commands) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert PyTorch source to Flax NNX",
        description="Convert a PyTorch file (or a package directory) to Flax NNX. Diagnostics go to "
                    "stderr as path:line:col CODE severity message; the exit code is 1 when an error-level "
                    "diagnostic exists.",
    )
    parser.add_argument("source", type=Path, help="a .py file or a directory")
    parser.add_argument("-o", "--output", type=Path,
                        help="where to write (a file for a file, a directory for a directory); "
                             "without it a converted file is printed to stdout")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--log", action="store_true", help="also print every change made (rule, line, before -> after)")
    parser.set_defaults(run=run_convert)


def run_convert(args) -> int:
    source: Path = args.source
    if not source.exists():
        return _usage_error(f"{source}: no such file or directory")
    if source.is_dir():
        return _convert_tree(source, args)
    if args.output is not None and args.output.exists() and not args.force:
        return _usage_error(f"{args.output} exists; pass --force to overwrite it")
    conversion = _convert_path(source)
    if conversion is None:
        return 1
    _print_report(conversion, args.log)
    if conversion.failed:
        print(f"porter: {source}: not converted, nothing written", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.write(conversion.code)
    else:
        write_atomically(args.output, conversion.code)
        print(f"porter: wrote {args.output}", file=sys.stderr)
    return 1 if conversion.has_errors else 0


def _convert_tree(source: Path, args) -> int:
    if args.output is None:
        return _usage_error("converting a directory needs -o OUT_DIR")
    if args.output.exists() and not args.force:
        return _usage_error(f"{args.output} exists; pass --force to write into it")
    failed = errors = 0
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        target = args.output / path.relative_to(source)
        if path.suffix != ".py":
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            continue
        conversion = _convert_path(path)
        if conversion is None or conversion.failed:
            failed += 1
            if conversion is not None:
                _print_report(conversion, args.log)
            continue
        _print_report(conversion, args.log)
        errors += conversion.has_errors
        write_atomically(target, conversion.code)
    print(f"porter: wrote {args.output} ({failed} file(s) failed, {errors} with errors)", file=sys.stderr)
    return 1 if failed or errors else 0


def _convert_path(path: Path) -> Conversion | None:
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"{path}: error: cannot read: {exc}", file=sys.stderr)
        return None
    return convert_source(source, filename=str(path))


def _print_report(conversion: Conversion, log: bool) -> None:
    for d in conversion.diagnostics:
        print(d.format(), file=sys.stderr)
        if d.severity is not Severity.INFO:
            print(f"    hint: {d.hint}", file=sys.stderr)
    if log:
        for change in conversion.changes:
            print(change.format(conversion.filename), file=sys.stderr)
    counts = {s: sum(d.severity is s for d in conversion.diagnostics) for s in Severity}
    print(f"porter: {conversion.filename}: {len(conversion.changes)} change(s), "
          f"{counts[Severity.ERROR]} error(s), {counts[Severity.WARNING]} warning(s)", file=sys.stderr)


def _usage_error(message: str) -> int:
    print(f"porter: error: {message}", file=sys.stderr)
    return 2
