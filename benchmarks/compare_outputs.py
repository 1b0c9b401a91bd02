"""Are porter's outputs and reports unchanged? The acceptance check of a refactoring.

    python benchmarks/compare_outputs.py snapshot DIR [--corpus CACHE] [--jobs N]
    python benchmarks/compare_outputs.py compare A B

`snapshot` converts a fixed set of inputs and writes, into DIR, every converted file's code and, beside
it, its diagnostics and changes (JSON); for a tree also the report porter writes (porter_report.txt and
.json). The inputs:
- every .py file under fixtures/, converted on its own (convert_source): DIR/single/...;
- every directory under fixtures/ (fixtures/ itself included), converted as a tree the way
  `porter convert DIR` does (plan, shared_helpers.place, convert_tree): DIR/tree/fixtures/...;
- every package tree under ~/.cache/porter-corpus/unpacked/ (torchvision, timm and the real-world
  corpus), each as a tree: DIR/tree/corpus/<package>/...

`compare` prints the files present on one side only and the files that differ (with the first lines of
their diff) and exits 1 on any difference, 0 when A and B are byte-identical.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from porter.convert import report, shared_helpers  # noqa: E402
from porter.convert.pipeline import convert_source  # noqa: E402
from porter.convert.tree import convert_tree, plan  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path.home() / ".cache" / "porter-corpus" / "unpacked"


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _dump(value) -> str:
    return json.dumps(value, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def snapshot_single(fixtures: Path, out: Path) -> int:
    files = sorted(p for p in fixtures.rglob("*.py") if p.is_file())
    for path in files:
        relative = path.relative_to(fixtures).as_posix()
        conversion = convert_source(path.read_text(encoding="utf-8"), filename=f"fixtures/{relative}")
        _write(out / relative, conversion.code)
        _write(out / f"{relative}.porter.json", _dump({
            "diagnostics": [d.to_json() for d in conversion.diagnostics],
            "changes": [[c.rule, c.line, c.col, c.before, c.after] for c in conversion.changes],
        }))
    return len(files)


def snapshot_tree(source: Path, out: Path, jobs: int | None) -> int:
    tree = plan(source)
    tasks, _ = shared_helpers.place(tree.tasks, [t.relative for t in tree.tasks] +
                                    [r for _, r in tree.copies] + [r for r, _ in tree.not_read])
    results = convert_tree(tasks, root_name=source.resolve().name, jobs=jobs)
    for result in results:
        if result.code is not None:
            _write(out / result.relative, result.code)
        _write(out / f"{result.relative}.porter.json", _dump({
            "status": result.status, "changed": result.changed, "error": result.error,
            "diagnostics": [d.to_json() for d in result.diagnostics],
            "changes": [[where, c.rule, c.line, c.col, c.before, c.after] for where, c in result.changes],
            "exports": result.exports, "known": [list(k) for k in result.known], "helpers": result.helpers,
        }))
    data = report.build(results, source=str(source), output=None, mode="compare",
                        copied=[r for _, r in tree.copies], not_read=tree.not_read)
    _write(out / "porter_report.json", _dump(data))
    _write(out / "porter_report.txt", report.text(data))
    return len(results)


def snapshot(out: Path, corpus: Path, jobs: int | None) -> None:
    out = out.resolve()
    os.chdir(ROOT)  # fixtures by a relative path: the reports name them alike from any checkout
    fixtures = Path("fixtures")
    started = time.perf_counter()
    count = snapshot_single(fixtures, out / "single")
    print(f"single files: {count}", file=sys.stderr)
    for directory in [fixtures, *sorted(p for p in fixtures.rglob("*") if p.is_dir())]:
        name = "fixtures" if directory == fixtures else f"fixtures/{directory.relative_to(fixtures).as_posix()}"
        count = snapshot_tree(directory, out / "tree" / name, jobs)
        print(f"tree {name}: {count} files", file=sys.stderr)
    for package in sorted(p for p in corpus.iterdir() if p.is_dir()) if corpus.is_dir() else []:
        count = snapshot_tree(package, out / "tree" / "corpus" / package.name, jobs)
        print(f"tree corpus/{package.name}: {count} files ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def compare(a: Path, b: Path, context: int = 20) -> int:
    left, right = _files(a), _files(b)
    differing = 0
    for relative in sorted(left - right):
        print(f"only in {a}: {relative}")
    for relative in sorted(right - left):
        print(f"only in {b}: {relative}")
    for relative in sorted(left & right):
        old, new = (a / relative).read_bytes(), (b / relative).read_bytes()
        if old == new:
            continue
        differing += 1
        print(f"differs: {relative}")
        diff = difflib.unified_diff(old.decode("utf-8", "replace").splitlines(),
                                    new.decode("utf-8", "replace").splitlines(), lineterm="", n=1)
        for line in list(diff)[:context]:
            print(f"    {line}")
    problems = differing + len(left ^ right)
    print(f"compared {len(left & right)} files: {differing} differ, {len(left - right)} only in A, "
          f"{len(right - left)} only in B")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    take = commands.add_parser("snapshot", help="convert the fixed inputs into DIR")
    take.add_argument("dir", type=Path)
    take.add_argument("--corpus", type=Path, default=CORPUS, help="the unpacked package trees (default: %(default)s)")
    take.add_argument("--jobs", type=int, default=None, help="processes for the trees (default: every core)")
    check = commands.add_parser("compare", help="exit 1 when two snapshots differ")
    check.add_argument("a", type=Path)
    check.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "snapshot":
        if args.dir.exists() and any(args.dir.iterdir()):
            parser.error(f"{args.dir} is not empty")
        snapshot(args.dir, args.corpus, args.jobs)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
