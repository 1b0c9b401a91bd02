"""`porter convert SRC [-o OUT]`: a file, a notebook, or a package directory."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

from porter.convert import closure as closures
from porter.convert import report as reports
from porter.convert import shared_helpers
from porter.convert.diagnostics import Severity
from porter.convert.siblings import Siblings, command as sibling_command, with_notes
from porter.convert.tree import (
    REPORT_NAMES, FileResult, ProgressBar, Task, backup_dir, convert_paths, convert_tree, kind_of, output_conflicts,
    TreePlan, plan, write_bytes_atomically, write_inplace, write_tree,
)
from porter.paths import overlaps


def add_convert_parser(commands) -> None:
    parser = commands.add_parser(
        "convert",
        help="convert PyTorch source to Flax NNX",
        description="Convert a PyTorch file, notebook (.ipynb) or package directory to Flax NNX. "
                    "Diagnostics go to stderr as path:line:col CODE severity message (`porter explain CODE` "
                    "says more); a directory's report is also written as porter_report.txt and "
                    "porter_report.json. Exit code: 1 when a file failed or an error-level diagnostic "
                    "exists, 2 for usage errors, else 0.",
    )
    parser.add_argument("source", type=Path, help="a .py file, a .ipynb notebook or a directory")
    parser.add_argument("-o", "--output", action=_OutputPath,
                        help="where to write (a file for a file, a directory for a directory: the layout is "
                             "kept, other files are copied; a trailing slash means a directory, for a file "
                             "too: -o out/ writes out/NAME); without it a converted file is printed to stdout")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing output: the files porter writes are replaced (and its "
                             "earlier output of a file that fails now is removed), the others are left; the new "
                             "output is built beside it and swapped in at the end, so a failed run changes nothing")
    parser.add_argument("--inplace", action="store_true",
                        help="rewrite the files where they are; the originals of the files changed are first "
                             "copied to SRC.porter-backup/ beside SRC (a fresh name each run), with the report")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="read a symlink in the tree as what it points at, when that lies inside the tree "
                             "(symlinks are otherwise reported and not followed; those leading out never are)")
    parser.add_argument("--diff", action="store_true", help="print a unified diff of what would change; write nothing")
    parser.add_argument("--annotate", action="store_true",
                        help="leave a `# porter: CODE message` comment above each statement that needs a person")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="write porter_report.txt/.json into DIR (default: OUT for a directory, the backup "
                             "directory with --inplace, none otherwise)")
    parser.add_argument("-j", "--jobs", type=int, default=None,
                        help="processes to convert with (default: every core)")
    parser.add_argument("--with", dest="with_packages", action="append", default=[], metavar="PKG",
                        help="also convert the modules of the installed package PKG that the tree reaches (its "
                             "import closure), into OUT/PKG/..., which shadows the installed package when OUT "
                             "comes first on sys.path; repeatable")
    parser.add_argument("--log", action="store_true", help="also print every change made (rule, line, before -> after)")
    parser.set_defaults(run=run_convert, output_is_directory=False)


class _OutputPath(argparse.Action):
    """-o as a Path, and whether it was spelled with a trailing slash (which Path drops): a directory."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        setattr(namespace, self.dest, Path(value))
        namespace.output_is_directory = value.endswith(("/", os.sep))


def run_convert(args) -> int:
    source: Path = args.source
    if not source.exists():
        return _usage_error(f"{source}: no such file or directory")
    if args.inplace and (args.output is not None or args.diff):
        return _usage_error("--inplace rewrites the sources: it takes neither -o nor --diff")
    if args.diff and args.output is not None:
        return _usage_error("--diff writes nothing: drop -o")
    if args.jobs is not None and args.jobs < 1:
        return _usage_error("--jobs must be at least 1")
    problem = closures.problem(args.with_packages, source, inplace=args.inplace) if args.with_packages else None
    if problem:
        return _usage_error(problem)
    if source.is_dir() or args.with_packages:  # a file --with PKG: a tree of one file, written into OUT_DIR
        return _convert_tree(source, args)
    return _convert_file(source, args)


# ---------------------------------------------------------------------------- a directory
def _convert_tree(source: Path, args) -> int:
    output: Path | None = args.output
    single = not source.is_dir()  # one file --with PKG: OUT_DIR/<its name> beside OUT_DIR/PKG/...
    root = source.parent if single else source
    if output is None and not (args.inplace or args.diff):
        return _usage_error(f"converting {'a file --with PKG' if single else 'a directory'} needs -o OUT_DIR "
                            f"(or --inplace, or --diff)")
    if single and output is not None and output.suffix in PYTHON_SUFFIXES:
        return _usage_error(f"--with writes the file and the packages' modules into a directory: -o OUT_DIR, not "
                            f"{output}")
    if output is not None:
        if output.is_symlink():
            return _usage_error(f"{output} is a symlink; name the directory itself")
        if output.exists() and not output.is_dir():
            return _usage_error(f"{output} exists and is not a directory")
        if output.exists() and not args.force:
            return _usage_error(f"{output} exists; pass --force to write into it")
        if overlaps(source, output) if not single else output.resolve() == root.resolve():
            return _usage_error(f"{output} and {source} overlap; pick an output outside the source (or --inplace)")
    tree = TreePlan([Task(str(source), str(source), source.name, "python", args.annotate, args.diff)]) if single \
        else plan(source, annotate=args.annotate, diff=args.diff, follow_symlinks=args.follow_symlinks)
    copies = tree.copies
    tasks, helpers_at = shared_helpers.place(tree.tasks, [t.relative for t in tree.tasks] +
                                             [r for _, r in copies] + [r for r, _ in tree.not_read])
    closure = None
    if args.with_packages:  # the modules of installed packages the tree reaches, converted with it
        tasks, helpers_at, closure = closures.add(tasks, helpers_at, args.with_packages)
    if output is not None and output.exists():
        written = [t.relative for t in tasks] + [relative for _, relative in copies]
        conflicts = output_conflicts(output, written + ([] if args.report else list(REPORT_NAMES)))
        if conflicts:
            return _usage_error(f"{'; '.join(conflicts[:5])}{' ...' if len(conflicts) > 5 else ''}: move "
                                f"{'it' if len(conflicts) == 1 else 'them'} away or pick another output")
    for relative, why in tree.not_read:
        print(f"porter: not read: {source / relative} ({why})", file=sys.stderr)
    old_reports = [source / name for name in REPORT_NAMES if not single and (source / name).is_file()]
    if old_reports and output is not None:
        print(f"porter: not copied: {', '.join(map(str, old_reports))} (porter's report of an earlier run; "
              f"this run's report replaces it)", file=sys.stderr)
    if args.inplace:
        print(f"porter: warning: --inplace rewrites the files under {source}; the originals of the files it "
              f"changes are copied to {backup_dir(source)} first", file=sys.stderr)
    with closures.converting(closure):
        results = sorted(_run(tasks, args, root=root), key=lambda r: r.relative)
    if closure is not None:
        results = closures.shadow(results, closure)
        closures.announce(closure, sys.stderr)
    helper_modules = shared_helpers.modules(results, helpers_at)
    _print_diagnostics(results, args.log)
    mode = "diff" if args.diff else "inplace" if args.inplace else "tree"

    def report(directory: Path | None, removed: list[str] = (), announce: bool = True) -> None:
        _write_report(results, source, output, mode, [relative for _, relative in copies], directory, removed,
                      tree.not_read, announce, extra={"with": closure.to_json()} if closure else None)

    if args.diff:
        _print_diffs(results)
        _print_new_files(helper_modules)
        report(args.report)
    elif args.inplace:
        backup = backup_dir(source)
        try:
            written = write_inplace(results, source, backup)
            for relative, data in helper_modules:  # new files: nothing to back up (undo: delete them)
                write_bytes_atomically(source / relative, data)
        except OSError as exc:
            return _write_error(source, exc, f"the files rewritten so far have their originals in {backup}")
        print(f"porter: rewrote {len(written)} file(s) under {source}; originals in {backup} (undo: "
              f"cp -r {backup}/. {source}/)", file=sys.stderr)
        report(args.report or backup)
    else:
        try:
            tree_results, theirs = closures.split(results, closure)
            removed = write_tree(tree_results, copies, root, output, finish=None if args.report else
                                 lambda staging, removed: report(staging, removed, announce=False),
                                 extra=helper_modules + theirs)
        except OSError as exc:
            return _write_error(output, exc, f"{output} is as it was" if output.exists() else "nothing written")
        if not args.report:
            _announce_report(output)
        if removed:
            print(f"porter: removed from {output} the output of an earlier run for {len(removed)} file(s) that "
                  f"failed now: {', '.join(removed)}", file=sys.stderr)
        if args.report:
            report(args.report, removed)
    for relative, _ in helper_modules:
        where = source if args.inplace else output
        if where is not None:
            undo = " (new: not in the backup; delete it to undo)" if args.inplace else ""
            print(f"porter: wrote {where / relative}: the emitted helpers the converted files import{undo}",
                  file=sys.stderr)
    return _finish(results, f"{source}")


# ---------------------------------------------------------------------------- one file
PYTHON_SUFFIXES = (".py", ".pyw", ".ipynb")


def _convert_file(source: Path, args) -> int:
    kind = kind_of(source) or "python"  # a file given by name without a suffix is read as Python
    output: Path | None = args.output
    if not source.is_file():
        return _usage_error(f"{source} is not a regular file (a FIFO, socket or device): not read")
    if source.suffix and source.suffix not in PYTHON_SUFFIXES:
        return _usage_error(f"{source} is not Python source: porter converts .py files, .ipynb notebooks and "
                            f"directories of them")
    if output is not None and args.output_is_directory:
        output = args.output = output / source.name
    if output is not None and output.is_dir():
        return _usage_error(f"{output} is a directory; for a file, -o names the file to write "
                            f"(e.g. {output / source.name})")
    if output is not None and output.exists() and not args.force:
        return _usage_error(f"{output} exists; pass --force to overwrite it")
    if output is not None and output.resolve() == source.resolve():
        return _usage_error(f"{output} is the source; use --inplace to rewrite it")
    if args.inplace:
        print(f"porter: warning: --inplace rewrites {source}; if it changes, the original is copied to "
              f"{backup_dir(source)} first", file=sys.stderr)
    siblings = Siblings.of(source) if kind == "python" else None  # the files it imports its model from
    task = Task(str(source), str(source), source.name, kind, args.annotate, args.diff, tree=siblings)
    results = _run([task], args)
    mode = "diff" if args.diff else "inplace" if args.inplace else "file"
    def command(sibling: Path) -> str:
        return sibling_command(source, sibling, output, mode)

    if siblings is not None:
        results[0] = with_notes(results[0], siblings.notes(str(source), command))
    result = results[0]
    _print_diagnostics(results, args.log)
    changes = len(result.changes)
    errors = sum(d.severity is Severity.ERROR for d in result.diagnostics)
    warnings = sum(d.severity is Severity.WARNING for d in result.diagnostics)
    print(f"porter: {source}: {changes} change(s), {errors} error(s), {warnings} warning(s)", file=sys.stderr)
    report_dir = args.report
    if result.status == "failed":
        print(f"porter: {source}: not converted, nothing written", file=sys.stderr)
    elif args.diff:
        _print_diffs(results)
    elif args.inplace:
        backup = backup_dir(source)
        if write_inplace(results, source, backup, root_is_file=True):
            print(f"porter: rewrote {source}; the original is in {backup}", file=sys.stderr)
    elif output is None:
        sys.stdout.buffer.write(result.code) if hasattr(sys.stdout, "buffer") else \
            sys.stdout.write(result.code.decode("utf-8"))
        sys.stdout.flush()
    else:
        try:
            write_bytes_atomically(output, result.code, mode_from=source)
        except OSError as exc:
            return _write_error(output, exc, f"{output} is as it was" if output.exists() else "nothing written")
        print(f"porter: wrote {output}", file=sys.stderr)
    if siblings is not None and result.status != "failed" and not args.diff:
        for sibling in siblings.files_read():
            print(f"porter: {source.name} imports from {sibling}, read but not converted: {command(sibling)}",
                  file=sys.stderr)
    _write_report(results, source, output, mode, [], report_dir)
    return 1 if result.status == "failed" or result.has_errors else 0


# ---------------------------------------------------------------------------- shared
def _run(tasks: list[Task], args, root: Path | None = None) -> list[FileResult]:
    bar = ProgressBar(sys.stderr)
    try:
        if root is None:
            return convert_paths(tasks, jobs=args.jobs)
        return convert_tree(tasks, root_name=root.resolve().name, jobs=args.jobs, progress=bar)
    finally:
        bar.close()


def _print_diagnostics(results: list[FileResult], log: bool) -> None:
    for result in results:
        for d in result.diagnostics:
            print(d.format(), file=sys.stderr)
            if d.severity is not Severity.INFO:
                print(f"    hint: {d.hint}", file=sys.stderr)
        if log:
            for where, change in result.changes:
                print(change.format(where), file=sys.stderr)


def _print_diffs(results: list[FileResult]) -> None:
    for result in results:
        if result.diff:
            sys.stdout.write(result.diff)
    sys.stdout.flush()


def _print_new_files(files: list[tuple[str, bytes]]) -> None:
    for relative, data in files:
        text = data.decode("utf-8").splitlines(keepends=True)
        sys.stdout.write("".join(difflib.unified_diff([], text, "/dev/null", f"b/{relative}")))
    sys.stdout.flush()


def _write_report(results, source: Path, output: Path | None, mode: str, copied: list[str],
                  directory: Path | None, removed: list[str] = (), not_read: list[tuple[str, str]] = (),
                  announce: bool = True, extra: dict | None = None) -> None:
    """The report into `directory` (none if None). A tree's output (and its report) is written in a
    temporary directory, then renamed: it is announced once it is in place (announce=False here)."""
    if directory is None:
        return
    data = reports.build(results, source=str(source), output=str(output) if output else None, mode=mode,
                         copied=copied, version=reports.porter_version(), removed=removed, not_read=not_read)
    data.update(extra or {})
    reports.write(data, directory)
    if announce:
        _announce_report(directory)


def _announce_report(directory: Path) -> None:
    txt, js = (directory / name for name in REPORT_NAMES)
    print(f"porter: report in {txt} and {js.name}", file=sys.stderr)


def _write_error(where: Path, exc: OSError, state: str) -> int:
    about = f" ({exc.filename})" if exc.filename else ""
    print(f"porter: error: cannot write {where}: {exc.strerror or exc}{about}; {state}", file=sys.stderr)
    return 1


def _finish(results: list[FileResult], where: str) -> int:
    failed = sum(r.status == "failed" for r in results)
    issues = sum(r.status == "issues" for r in results)
    clean = sum(r.status == "clean" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    print(f"porter: {where}: {clean} converted cleanly, {issues} with issues, {skipped} skipped, "
          f"{failed} failed", file=sys.stderr)
    return 1 if failed or any(r.has_errors for r in results) else 0


def _usage_error(message: str) -> int:
    print(f"porter: error: {message}", file=sys.stderr)
    return 2
