"""Does `porter convert SRC --with PKG` read only the modules reached, in the time of converting them directly?

    python benchmarks/closure_time.py SRC --with PKG [--with PKG2] [--jobs N]

Converts SRC with --with (the report's "with" field lists the modules read), then copies SRC's files and those
modules' installed files into one directory, laid out as OUT is (OUT/PKG/...), converts that directory
without --with, and prints, for each package, the modules read against its Python files, and both runs'
wall and CPU times (the CLI in a process of its own, its workers included), their ratio, and the converted files
that differ between the two runs. The packages
must be importable where porter runs (PYTHONPATH).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from porter.convert import closure, outside  # noqa: E402


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of `python -m porter ARGV`, its worker processes included."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "porter", *argv], capture_output=True, cwd=tempfile.gettempdir())
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path)
    parser.add_argument("--with", dest="packages", action="append", required=True)
    parser.add_argument("--jobs", default="1")
    args = parser.parse_args()
    source = args.source.resolve()
    work = Path(tempfile.mkdtemp(prefix="closure_time_"))
    flags = [f for package in args.packages for f in ("--with", package)]
    with_wall, with_cpu = timed(["convert", str(source), "-o", str(work / "with"), "-j", args.jobs, *flags])
    report = json.loads((work / "with" / "porter_report.json").read_text())

    copy = work / "copy"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for package, found in report["with"].items():
        for dotted in found["modules"]:
            origin = outside.find_spec(dotted).origin
            relative = Path(*dotted.split("."))
            package_init = origin.endswith("__init__.py")
            target = copy / (relative / "__init__.py" if package_init else relative.with_suffix(".py"))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, target)
        top = outside.find_spec(package).submodule_search_locations[0]
        files = sum(1 for _ in Path(top).rglob("*.py"))
        print(f"--with {package}: read {len(found['modules'])} of its {files} Python files")
    direct_wall, direct_cpu = timed(["convert", str(copy), "-o", str(work / "direct"), "-j", args.jobs])
    tree_files = sum(1 for _ in source.rglob("*.py"))
    print(f"{source.name} ({tree_files} files) --with {' --with '.join(args.packages)}: "
          f"{with_wall:.1f} s wall, {with_cpu:.1f} s CPU")
    print(f"the same files copied into one tree, converted directly: {direct_wall:.1f} s wall, {direct_cpu:.1f} s CPU")
    print(f"ratio (with / direct): {with_wall / direct_wall:.2f} wall, {with_cpu / direct_cpu:.2f} CPU")
    differ = [str(path.relative_to(work / "with")) for path in sorted((work / "with").rglob("*.py"))
              if _code(path) != _code(work / "direct" / path.relative_to(work / "with"))]
    print(f"converted files that differ between the two (the extend_path lines aside): {len(differ)}"
          + (f": {', '.join(differ[:10])}" if differ else ""))
    shutil.rmtree(work)


def _code(path: Path) -> str | None:
    if not path.exists():
        return None
    extend_path = closure._EXTEND_PATH
    return path.read_text().replace(extend_path, "")


if __name__ == "__main__":
    main()
