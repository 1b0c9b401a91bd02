"""Converting many files: a file or a package tree, in parallel, each file on its own.

`plan(source)` lists what a tree holds (Python files and notebooks to
convert, other files to copy); `convert_paths(tasks, jobs=...)` converts
them across processes, one result per file in a fixed order whatever the
scheduling; `write_tree`/`write_inplace` put the results on disk, every file
atomically. A file that cannot be read, does not parse or makes a pass fail is
a failed result (PT030, PT001, PT031, PT032, PT034): reported, not written, and the
rest converts.
"""

from __future__ import annotations

import difflib
import errno
import io
import multiprocessing
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import tokenize
import traceback
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from porter.convert.diagnostics import Change, Diagnostic, Severity, diagnostic

# directories never entered (version control, caches, environments' byproducts)
SKIPPED_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".ipynb_checkpoints", ".mypy_cache",
                          ".pytest_cache", ".ruff_cache", ".tox", ".nox", ".eggs"})
SKIPPED_SUFFIXES = (".pyc", ".pyo")
FAILURE_CODES = frozenset({"PT001", "PT030", "PT031", "PT032", "PT034"})
REPORT_NAMES = ("porter_report.txt", "porter_report.json")


@dataclass(frozen=True)
class Task:
    """One file to convert: where it is, the path reports show, where it goes relative to the root."""

    path: str
    display: str
    relative: str
    kind: str  # "python" | "notebook"
    annotate: bool = False
    diff: bool = False
    tree: "TreeSummary | None" = None  # what the files of the tree converted before this one define
    helpers_from: str | None = None  # the output's module to import emitted helpers from (shared_helpers.py)
    keep_rngs: frozenset[str] = frozenset()  # its module classes another file passes as a value (ImportGraph)
    # (its function, position or keyword) another file hands a class (convert_tree: _handed_across)
    handed_in: frozenset[tuple[str, int | str]] = frozenset()


@dataclass
class FileResult:
    display: str
    relative: str
    kind: str
    status: str  # "clean" | "issues" | "skipped" | "failed"
    diagnostics: list[Diagnostic] = field(default_factory=list)
    changes: list[tuple[str, Change]] = field(default_factory=list)  # (where, change)
    code: bytes | None = None  # what to write (None: nothing, the file failed)
    changed: bool = False  # the output differs from the input
    error: str | None = None  # PT031's traceback summary
    diff: str | None = None
    cpu_seconds: float = 0.0  # CPU time the conversion took, and the process it ran in (benchmarks)
    worker: int = 0
    exports: dict[str, str] = field(default_factory=dict)  # see pipeline.Conversion
    imports: list[tuple[int, str, str, str]] = field(default_factory=list)
    known: tuple[tuple[str, str], ...] = ()  # what it learnt from task.tree: (local name, "module" | "factory")
    helpers: list[str] = field(default_factory=list)  # the emitted helpers it imports from task.helpers_from
    handed_out: list[tuple[str, int | str]] = field(default_factory=list)  # see pipeline.Conversion

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.diagnostics)


def kind_of(path: Path) -> str | None:
    if path.suffix == ".py":
        return "python"
    if path.suffix == ".ipynb":
        return "notebook"
    return None


# porter's own backups (SRC.porter-backup, -2, ...; FILE.porter-backup) and the temporary
# directories it writes an output in: never read as part of a tree
_PORTER_OWN = re.compile(r"\.porter-(?:backup(?:-\d+)?|tmp-[\w-]+|old-[\w-]+)$")


@dataclass
class TreePlan:
    """What a tree holds: files to convert, files to copy (path, relative), and what is not read
    (relative, why): symlinks, files that are not regular files, porter's own backups and outputs."""

    tasks: list[Task] = field(default_factory=list)
    copies: list[tuple[Path, str]] = field(default_factory=list)
    not_read: list[tuple[str, str]] = field(default_factory=list)


def plan(source: Path, *, annotate: bool = False, diff: bool = False, exclude: Iterable[Path] = (),
         follow_symlinks: bool = False) -> TreePlan:
    """The files of a tree, in sorted order. Only regular files are read (a FIFO would block the
    read forever). A symlink is not followed unless `follow_symlinks` and it leads to a place
    inside the tree; then it is read as what it points at (a directory once per path: no loop).

    porter_report.txt/.json at the root are porter's own report of an earlier run (SRC is a previous
    output): not copied, the new report takes their place. A directory below the root holding both
    is an earlier output, not entered."""
    root = source.resolve()
    excluded = {p.resolve() for p in exclude}
    found = TreePlan()

    def walk(directory: Path, relative: str, entered: frozenset[Path]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            found.not_read.append((relative or ".", f"cannot list the directory: {exc.strerror or exc}"))
            return
        for entry in entries:
            name, path = entry.name, Path(entry.path)
            inner = f"{relative}/{name}" if relative else name
            if entry.is_symlink():
                why = _unfollowed_link(path, root, follow_symlinks)
                if why:
                    found.not_read.append((inner, why))
                    continue
            try:
                mode = path.stat().st_mode
                real = path.resolve()
            except (OSError, RuntimeError) as exc:
                found.not_read.append((inner, f"cannot read: {getattr(exc, 'strerror', None) or exc}"))
                continue
            if real in excluded or name in SKIPPED_DIRS and stat.S_ISDIR(mode):
                continue
            if _PORTER_OWN.search(name):
                found.not_read.append((inner, "porter's own backup or temporary output: not entered"))
            elif stat.S_ISDIR(mode):
                if real in entered:
                    found.not_read.append((inner, "symlink loop: not followed"))
                elif all((path / report).is_file() for report in REPORT_NAMES):
                    found.not_read.append((inner, "an output of porter (it holds porter_report.json): not entered"))
                else:
                    walk(path, inner, entered | {real})
            elif not stat.S_ISREG(mode):
                found.not_read.append((inner, "not a regular file (a FIFO, socket or device): not read"))
            elif not (name.endswith(SKIPPED_SUFFIXES) or (name in REPORT_NAMES and not relative)):
                kind = kind_of(path)
                if kind is None:
                    found.copies.append((path, inner))
                else:
                    found.tasks.append(Task(str(path), str(path), inner, kind, annotate, diff))

    walk(source, "", frozenset({root}))
    return found


def _unfollowed_link(path: Path, root: Path, follow: bool) -> str | None:
    """Why the symlink at `path` is not followed, or None if it is."""
    target = os.readlink(path)
    try:
        real = path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 says "Symlink loop"
        return f"symlink loop ({target}): not followed"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"symlink loop ({target}): not followed"
        return f"broken symlink (to {target}): not followed"
    if real != root and root not in real.parents:
        return f"symlink to {target}, outside the tree: not followed"
    if not follow:
        return f"symlink to {target}: not followed (--follow-symlinks follows those inside the tree)"
    return None


# ---------------------------------------------------------------------------- one file
def read_source(data: bytes) -> tuple[str, str]:
    """(text, encoding): the PEP 263 cookie or BOM if there is one, else UTF-8. Newlines untouched."""
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    return data.decode(encoding), encoding


def read_regular_file(path: str | Path) -> bytes:
    """The file's bytes; OSError if it is not a regular file. Opened without blocking, so that a
    FIFO (which would wait for a writer forever) is found and refused."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)")
        return f.read()


def _decode_error(exc: UnicodeDecodeError, data: bytes) -> tuple[int, int, str]:
    start = exc.start
    line = data.count(b"\n", 0, start) + 1
    col = start - (data.rfind(b"\n", 0, start) + 1) + 1
    return line, col, f"cannot decode byte 0x{data[start]:02x} as {exc.encoding}: {exc.reason}"


def _summary(exc: BaseException) -> str:
    """The exception and its innermost frames, one line: what a bug report needs."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in reversed(frames))
    return f"{type(exc).__name__}: {exc} (at {where})" if where else f"{type(exc).__name__}: {exc}"


def convert_task(task: Task) -> FileResult:
    """Converts one file; never raises (a failure is a failed result)."""
    start = time.process_time()
    try:
        result = _convert_task(task)
    except Exception as exc:  # a pass crashing on this file: report it, keep the tree going
        error = _summary(exc)
        result = FileResult(task.display, task.relative, task.kind, "failed",
                            [diagnostic("PT031", 1, 1, f"internal error: {error}", task.display)], error=error)
    result.cpu_seconds = time.process_time() - start
    result.worker = os.getpid()
    return result


def _convert_task(task: Task) -> FileResult:
    try:
        data = read_regular_file(task.path)
    except OSError as exc:
        return FileResult(task.display, task.relative, task.kind, "failed",
                          [diagnostic("PT030", 1, 1, f"cannot read: {exc.strerror or exc}", task.display)])
    try:
        if task.kind == "notebook":
            text, encoding = data.decode("utf-8"), "utf-8"
        else:
            text, encoding = read_source(data)
    except UnicodeDecodeError as exc:
        line, col, message = _decode_error(exc, data)
        return FileResult(task.display, task.relative, task.kind, "failed",
                          [diagnostic("PT030", line, col, message, task.display)])
    except SyntaxError as exc:  # from the encoding detection: bad bytes in the first lines, or an unknown cookie
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as bad:
            line, col, message = _decode_error(bad, data)
        else:
            line, col, message = exc.lineno or 1, 1, f"cannot read: {exc.msg}"
        return FileResult(task.display, task.relative, task.kind, "failed",
                          [diagnostic("PT030", line, col, message, task.display)])
    if task.kind == "notebook":
        from porter.convert.notebook import convert_notebook
        conversion = convert_notebook(text, filename=task.display, convert=_notebook_converter(task.annotate))
        changes = list(conversion.cell_changes)
    else:
        learnt: dict[str, str] = {}

        def learn(imports: list[tuple[int, str, str, str]]) -> dict[str, str]:
            learnt.update(task.tree.known(task.relative, imports) if task.tree else ())
            return learnt

        conversion = convert_python(text, task.display, annotate=task.annotate, known=learn,
                                    helpers_from=task.helpers_from, keep_rngs=task.keep_rngs,
                                    handed_in=task.handed_in)
        changes = [(task.display, c) for c in conversion.changes]
    diagnostics = list(conversion.diagnostics)
    if conversion.failed:  # did not parse (PT001), nests too deep (PT034), not a notebook (PT032): nothing to write
        return FileResult(task.display, task.relative, task.kind, "failed", diagnostics, changes)
    changed = conversion.code != text
    if any(d.severity is not Severity.INFO for d in diagnostics):
        status = "issues"
    else:
        status = "clean" if changed else "skipped"
    code = conversion.code.encode(encoding) if changed else data
    diff = None
    if task.diff and changed:
        diff = "".join(difflib.unified_diff(text.splitlines(keepends=True), conversion.code.splitlines(keepends=True),
                                            f"a/{task.relative}", f"b/{task.relative}"))
    return FileResult(task.display, task.relative, task.kind, status, diagnostics, changes, code, changed, diff=diff,
                      exports=getattr(conversion, "exports", {}), imports=getattr(conversion, "imports", []),
                      known=tuple(sorted(learnt.items())) if task.kind == "python" else (),
                      helpers=getattr(conversion, "helpers", []), handed_out=getattr(conversion, "handed_out", []))


def convert_python(text: str, filename: str, *, annotate: bool = False, known=None, helpers_from: str | None = None,
                   keep_rngs: frozenset[str] = frozenset(), handed_in: frozenset[tuple[str, int | str]] = frozenset()):
    from porter.convert.pipeline import convert_in_tree

    def convert(source: str, name: str):
        return convert_in_tree(source, filename=name, known=known, helpers_from=helpers_from, keep_rngs=keep_rngs,
                               handed_in=handed_in)

    if not annotate:
        return convert(text, filename)
    from porter.convert.annotate import convert_annotated
    return convert_annotated(text, filename, convert)


def _notebook_converter(annotate: bool):
    from porter.convert.pipeline import convert_in_tree

    def convert(source: str, name: str):
        return convert_in_tree(source, filename=name, notebook=True)

    if not annotate:
        return convert
    from porter.convert.annotate import convert_annotated
    return lambda source, name: convert_annotated(source, name, convert)


# ---------------------------------------------------------------------------- many files
def default_jobs() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _start_method() -> str:
    """fork where it is safe (nothing multithreaded imported: the command line), else spawn."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return "spawn"
    bridge = sys.modules.get("jax._src.xla_bridge")
    if "torch" in sys.modules or (bridge is not None and getattr(bridge, "_backends", None)) \
            or threading.active_count() > 1:
        return "spawn"
    return "fork"


def _warm() -> None:
    """Run once in each worker: the rules and the passes loaded before the first file. Ctrl-C
    (SIGINT, sent to the whole process group) is the parent's to handle: it stops the workers, with
    SIGTERM, which must end a worker at once (a forked worker inherits the console script's SIGTERM
    handler, whose exception the pool's worker loop would catch and carry on)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from porter.convert.pipeline import convert_source
    convert_source("import torch\n")


def convert_paths(tasks: list[Task], *, jobs: int | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  after: dict[int, set[int]] | None = None,
                  prepare: Callable[[int, list[FileResult | None]], Task] | None = None) -> list[FileResult]:
    """Converts every task, across `jobs` processes (all cores by default); results in task order.

    `after[i]`: the tasks that finish before task i starts (where they form a cycle, one of them
    starts anyway); `prepare(i, results so far)` gives task i's final form as it starts.
    """
    jobs = default_jobs() if jobs is None else max(jobs, 1)
    total = len(tasks)
    results: list[FileResult | None] = [None] * total
    if progress:
        progress(0, total)
    waiting = {i: set(after.get(i, ())) & set(range(total)) - {i} for i in range(total)} if after else {}
    # biggest files first, so no worker is left with a large file at the end
    pending = sorted(range(total), key=lambda i: -_size(tasks[i].path))
    pool = _pool(jobs, total)
    try:
        running: dict[Future, tuple[int, Task]] = {}
        while pending or running:
            for i in _startable(pending, waiting, jobs - len(running), nothing_running=not running):
                pending.remove(i)
                task = prepare(i, results) if prepare else tasks[i]
                running[pool.submit(convert_task, task)] = (i, task)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            if any(_died(future) for future in finished):  # a worker died: every running file failed with it
                wait(running)
                finished = set(running)
                pool.shutdown()
                pool = _pool(jobs, total)
            suspects = sum(_died(future) for future in finished)
            for future in finished:
                i, task = running.pop(future)
                # which of them killed it: each again, alone
                results[i] = _convert_alone(task) if suspects > 1 and _died(future) else _result(future, task)
                for others in waiting.values():
                    others.discard(i)
                if progress:
                    progress(total - len(pending) - len(running), total)
    except BaseException:  # Ctrl-C included: the workers go too, now
        _stop(pool)
        raise
    pool.shutdown()
    return results  # type: ignore[return-value]


def _died(future: Future) -> bool:
    return isinstance(future.exception(), BrokenProcessPool)


def _convert_alone(task: Task) -> FileResult:
    """One of the files that were converting when a worker died, in a process of its own: its
    result, or PT031 if it is the file that kills its process."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context(_start_method()),
                             initializer=_warm) as pool:
        future = pool.submit(convert_task, task)
        wait([future])
    return _result(future, task)


def _stop(pool: Executor) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _startable(pending: list[int], waiting: dict[int, set[int]], free: int, *, nothing_running: bool) -> list[int]:
    """Up to `free` pending tasks whose predecessors are done; with nothing running and none of
    them ready (an import cycle), the one waiting on the fewest."""
    ready = [i for i in pending if not waiting.get(i)][:max(free, 0)]
    if not ready and nothing_running and pending:
        ready = [min(pending, key=lambda i: len(waiting[i]))]
    return ready


def _result(future: Future, task: Task) -> FileResult:
    try:
        return future.result()
    except BrokenProcessPool:  # the worker itself died (a crash in native code, out of memory, killed)
        error = "the process converting this file died (a crash in native code, out of memory, or killed)"
        return FileResult(task.display, task.relative, task.kind, "failed",
                          [diagnostic("PT031", 1, 1, f"internal error: {error}", task.display)], error=error)
    except Exception as exc:
        error = _summary(exc)
        return FileResult(task.display, task.relative, task.kind, "failed",
                          [diagnostic("PT031", 1, 1, f"internal error: {error}", task.display)], error=error)


def _pool(jobs: int, total: int) -> Executor:
    if jobs == 1 or total < 2:
        return _InProcess()
    context = multiprocessing.get_context(_start_method())
    return ProcessPoolExecutor(max_workers=min(jobs, total), mp_context=context, initializer=_warm)


class _InProcess(Executor):
    """One file at a time in this process, through the same scheduling as the process pool."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def convert_tree(tasks: list[Task], *, root_name: str | None = None, jobs: int | None = None,
                 progress: Callable[[int, int], None] | None = None, rounds: int = 3) -> list[FileResult]:
    """convert_paths over the files of one tree, each file after the files it imports from, knowing
    which of their names are nn.Module subclasses or layer factories (`Block(d)` then gets its
    rngs as it would were Block defined there). Where the order cannot give that (an import cycle, an
    import the text scan missed), the files that learn something new are converted again, until
    nothing new is learnt (at most `rounds` more times). A file learns from the files importing it too:
    the parameters of its functions they hand a class (`make(Block, 3)`: `def make(block, c)` then takes rngs,
    as it does where the call is in its own file). `root_name`: the name of the tree's
    directory (absolute imports may start with it)."""
    graph = ImportGraph.of(list(tasks), root_name)
    tasks = [replace(task, keep_rngs=frozenset(graph.passed_as_values.get(i, ()))) if i in graph.passed_as_values
             else task for i, task in enumerate(tasks)]

    def prepare(i: int, done: list[FileResult | None]) -> Task:
        return replace(tasks[i], tree=TreeSummary.of(tasks, done, root_name, graph, i))

    results = convert_paths(tasks, jobs=jobs, progress=progress, after=graph.after, prepare=prepare)
    for _ in range(rounds):
        summary = TreeSummary.of(tasks, results, root_name)
        handed = graph.handed_across(tasks, results)
        redo = [i for i, (task, result) in enumerate(zip(tasks, results))
                if task.kind == "python" and result.status != "failed"
                and (summary.known(task.relative, result.imports) != result.known
                     or handed.get(i, frozenset()) != task.handed_in)]
        if not redo:
            break
        tasks = [replace(task, handed_in=handed.get(i, frozenset())) if task.kind == "python" else task
                 for i, task in enumerate(tasks)]
        again = [replace(tasks[i], tree=summary) for i in redo]
        for i, result in zip(redo, convert_paths(again, jobs=jobs, progress=progress)):
            results[i] = result
    return results


def _module_key(relative: str) -> tuple[str, ...]:
    parts = tuple(relative[:-len(".py")].split("/")) if relative.endswith(".py") else tuple(relative.split("/"))
    return parts[:-1] if parts and parts[-1] == "__init__" else parts


def _import_targets(importer: tuple[str, ...], package: bool, dots: int, module: str,
                    root_name: str | None) -> list[tuple[str, ...]]:
    """The module keys `from <dots><module> import ...` in the file `importer` may refer to."""
    parts = tuple(module.split(".")) if module else ()
    if dots:
        base = importer if package else importer[:-1]
        if dots - 1 > len(base):
            return []
        return [base[:len(base) - (dots - 1)] + parts]
    found = [parts]
    if root_name and parts and parts[0] == root_name:
        found.append(parts[1:])
    return found


def _is_package(relative: str) -> bool:
    return relative == "__init__.py" or relative.endswith("/__init__.py")


# What a file imports (`from .x import A, B as C` at the start of a line) and defines (`class A`,
# `def b` there), read from its text before it is parsed. It only orders the conversions: a line it
# gets wrong costs a second conversion, never a wrong one (TreeSummary.known reads the parsed imports).
_FROM_IMPORT = re.compile(rb"^from[ \t]+(\.*)[ \t]*([\w.]*)[ \t]+import[ \t]*(\([^)]*\)|(?:\\\n|[^\n])*)",
                          re.MULTILINE)
_DEFINITION = re.compile(rb"^(?:async[ \t]+)?(?:class|def)[ \t]+(\w+)", re.MULTILINE)
_IMPORTED_NAME = re.compile(rb"(\w+)(?:[ \t]+as[ \t]+(\w+))?")
_CLASS_LINE = re.compile(rb"^[ \t]*class[ \t]+\w+[ \t]*\([^)]*\)", re.MULTILINE)


@dataclass
class TextScan:
    defined: set[str]
    imports: list[tuple[int, str, str, str]]  # as FileResult.imports
    values: set[str] = field(default_factory=set)  # imported names mentioned other than as a call (`act=Act`)
    stars: list[tuple[int, str]] = field(default_factory=list)  # `from .activations import *`: (dots, module)

    @classmethod
    def of(cls, path: str) -> TextScan:
        try:
            data = read_regular_file(path)
        except OSError:
            return cls(set(), [])
        imports, stars = [], []
        for dots, module, names in _FROM_IMPORT.findall(data):
            if names.strip() == b"*":
                stars.append((len(dots), module.decode()))
            for item in re.sub(rb"#[^\n]*", b"", names).strip(b"()\\ \t\r\n").split(b","):
                match = _IMPORTED_NAME.fullmatch(item.strip(b" \t\r\n\\"))
                if match:
                    imported, local = match.group(1).decode(), (match.group(2) or match.group(1)).decode()
                    imports.append((len(dots), module.decode(), imported, local))
        return cls({name.decode() for name in _DEFINITION.findall(data)}, imports, _values(data, imports), stars)


def _values(data: bytes, imports: list[tuple[int, str, str, str]]) -> set[str]:
    """The imported names the file's text mentions, outside its from-imports and class bases (a subclass
    calls its base's constructor as written: rngs_free.py), other than as a call."""
    from porter.convert.rngs_free import mentions

    body = _CLASS_LINE.sub(b"", _FROM_IMPORT.sub(b"", data)).decode("utf-8", "replace")
    return mentions({local for *_, local in imports}, body)[1]


@dataclass
class ImportGraph:
    """Which files each Python file (by index) learns from: `after`, those that define (as a class
    or function) a name it imports, converted before it; `reads`, those and the files that pass such
    a name on (a package's __init__.py), whose imports it follows. Names that are neither (constants,
    submodules) order nothing, which keeps most import cycles out of the order."""

    after: dict[int, set[int]]
    reads: dict[int, set[int]]
    scans: dict[int, TextScan]
    # file -> its names other files pass as values (`block=Block`): called with rngs= there, so they take rngs
    passed_as_values: dict[int, set[str]] = field(default_factory=dict)

    by_key: dict[tuple[str, ...], int] = field(default_factory=dict)  # module key -> file
    package_files: frozenset[int] = frozenset()  # the files that are a package's __init__.py
    root_name: str | None = None

    @classmethod
    def of(cls, tasks: list[Task], root_name: str | None) -> ImportGraph:
        by_key = {_module_key(t.relative): i for i, t in enumerate(tasks) if t.kind == "python"}
        scans = {i: TextScan.of(tasks[i].path) for i in by_key.values()}
        graph = cls({}, {}, scans, by_key=by_key, root_name=root_name,
                    package_files=frozenset(i for i in scans if _is_package(tasks[i].relative)))
        for i, scan in scans.items():
            key, package = _module_key(tasks[i].relative), _is_package(tasks[i].relative)
            for dots, module in scan.stars:  # `from .activations import *`, then `dict(gelu=GELU)`
                graph._note_star_values(tasks[i].path, _import_targets(key, package, dots, module, root_name))
            for dots, module, imported, local in scan.imports:
                for target in _import_targets(key, package, dots, module, root_name):
                    found = [file for file, _ in graph.chain(target, imported, set())]
                    if found:
                        graph.after.setdefault(i, set()).add(found[-1])
                        graph.reads.setdefault(i, set()).update(found)
                        if local in scan.values:
                            graph.passed_as_values.setdefault(found[-1], set()).add(imported)
                        break
        return graph

    def _note_star_values(self, path: str, targets: list[tuple[str, ...]]) -> None:
        """The names of a module star-imported into the file at `path` that its text mentions as values (called
        with rngs= there): passed_as_values."""
        from porter.convert.rngs_free import mentions

        for target in targets:
            source = self.by_key.get(target)
            if source is not None and self.scans[source].defined:
                try:
                    data = read_regular_file(path)
                except OSError:
                    return
                body = _CLASS_LINE.sub(b"", _FROM_IMPORT.sub(b"", data)).decode("utf-8", "replace")
                values = mentions(self.scans[source].defined, body)[1]
                if values:
                    self.passed_as_values.setdefault(source, set()).update(values)
                return

    def chain(self, key: tuple[str, ...], name: str, seen: set) -> list[tuple[int, str]]:
        """The files from `key` to the one defining `name`, with the name each knows it by ([] if no file of
        the tree defines it)."""
        i = self.by_key.get(key)
        if i is None or (key, name) in seen:
            return []
        seen.add((key, name))
        if name in self.scans[i].defined:
            return [(i, name)]
        for dots, module, imported, local in self.scans[i].imports:
            if local == name:
                for target in _import_targets(key, i in self.package_files, dots, module, self.root_name):
                    found = self.chain(target, imported, seen)
                    if found:
                        return [(i, name), *found]
        return []

    def handed_across(self, tasks: list[Task], results: list[FileResult]) -> dict[int, frozenset]:
        """File -> (its function, position or keyword) that other files hand a class (FileResult.handed_out,
        each callee followed through the importing file's parsed imports to the file defining it)."""
        handed: dict[int, set] = {}
        for i, result in enumerate(results):
            if result is None or not result.handed_out:
                continue
            key = _module_key(tasks[i].relative)
            for callee, where in result.handed_out:
                found = self._definer(key, i in self.package_files, result.imports, callee)
                if found is not None and found[0] != i:
                    handed.setdefault(found[0], set()).add((found[1], where))
        return {i: frozenset(each) for i, each in handed.items()}

    def _definer(self, key: tuple[str, ...], package: bool, imports: list[tuple[int, str, str, str]],
                 callee: str) -> tuple[int, str] | None:
        """(file, name) defining what `callee` (`make`, `util.make`, `proj.util.make`) names in the file `key`."""
        for dots, module, imported, local in imports:
            if callee == local and imported:  # from .util import make
                where, name = (), imported
            elif callee.startswith(local + ".") and "." not in callee[len(local) + 1:]:
                where = (imported,) if imported else ()  # from . import util; import proj.util [as u]
                name = callee[len(local) + 1:]
            else:
                continue
            for target in _import_targets(key, package, dots, module, self.root_name):
                found = self.chain(target + where, name, set())
                if found:
                    return found[-1]
        return None


@dataclass(frozen=True)
class TreeSummary:
    """What a file can learn from other files of its tree: their exports (module classes, layer
    factories) and imports, by module key (re-exports such as a package's __init__.py are followed)."""

    root_name: str | None
    exports: dict[tuple[str, ...], dict[str, str]]
    imports: dict[tuple[str, ...], list[tuple[int, str, str, str]]]
    packages: frozenset[tuple[str, ...]]

    @classmethod
    def of(cls, tasks: list[Task], results: list[FileResult | None], root_name: str | None,
           graph: ImportGraph | None = None, reader: int | None = None) -> TreeSummary:
        """Every converted file, or (with `graph`) the files `reader` reads, where one not converted
        yet shows the imports its text scan found and no exports."""
        chosen = graph.reads.get(reader, set()) if graph is not None else range(len(tasks))
        exports, imports, packages = {}, {}, set()
        for i in chosen:
            task, result = tasks[i], results[i]
            if task.kind != "python" or (result is None and graph is None):
                continue
            key = _module_key(task.relative)
            if result is not None:
                exports[key], imports[key] = result.exports, result.imports
            else:
                exports[key], imports[key] = {}, graph.scans[i].imports
            if _is_package(task.relative):
                packages.add(key)
        return cls(root_name, exports, imports, frozenset(packages))

    def known(self, relative: str, imports: list[tuple[int, str, str, str]]) -> tuple[tuple[str, str], ...]:
        """(local name, "module" | "factory") for what the file at `relative` imports from these files, sorted."""
        key, package = _module_key(relative), _is_package(relative)
        names = {}
        for dots, module, imported, local in imports:
            for target in _import_targets(key, package, dots, module, self.root_name):
                if not imported:  # import models as m: m.Net(...)
                    names.update({f"{local}.{name}": kind for name, kind in self.exports.get(target, {}).items()})
                    continue
                found = self._kind(target, imported, set())
                if found:
                    names[local] = found
                    break
                submodule = self.exports.get(target + (imported,), {})  # from . import models: models.Net(...)
                names.update({f"{local}.{name}": kind for name, kind in submodule.items()})
        return tuple(sorted(names.items()))

    def _kind(self, key: tuple[str, ...], name: str, seen: set) -> str | None:
        if (key, name) in seen or key not in self.exports:
            return None
        seen.add((key, name))
        if name in self.exports[key]:
            return self.exports[key][name]
        for dots, module, imported, local in self.imports[key]:
            if local == name:
                for target in _import_targets(key, key in self.packages, dots, module, self.root_name):
                    found = self._kind(target, imported, seen)
                    if found:
                        return found
        return None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ---------------------------------------------------------------------------- writing
def write_bytes_atomically(path: Path, data: bytes, *, mode_from: Path | None = None) -> None:
    """Writes through a temporary file in the same directory and a rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        if mode_from is not None:
            shutil.copymode(mode_from, tmp)
        else:  # mkstemp's 0600 is no file's mode: what open() would have given
            os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(mask)
    return mask


def copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copy2(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tree(results: list[FileResult], copies: list[tuple[Path, str]], source: Path, output: Path, *,
               finish: Callable[[Path, list[str]], None] | None = None,
               extra: list[tuple[str, bytes]] = ()) -> list[str]:
    """Converted files (failed ones aside) and the copied files under `output`, the layout kept.

    A failed file's output from an earlier run (an existing `output`, --force) is deleted, so that
    `output` holds what the report says: no stale conversion beside a `failed`. Returns the relative
    paths deleted. `extra`: files porter writes that have no source, (relative path, bytes): the
    helpers module (shared_helpers.py).

    Nothing is written into `output` itself: the new tree is built in a temporary sibling directory
    (with what `finish(directory, removed)` adds there: the report), the files of an existing
    `output` that porter does not write are carried over (hard links where the file system has
    them), and the temporary directory replaces `output` by a rename at the end. An error on the
    way (a full disk) removes the temporary directory and leaves `output` as it was."""
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(output)
    staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.porter-tmp-{os.getpid()}-"))
    try:
        for result in results:
            if result.code is not None:
                write_bytes_atomically(staging / result.relative, result.code, mode_from=source / result.relative)
        for path, relative in copies:
            copy_atomically(path, staging / relative)
        for relative, data in extra:
            write_bytes_atomically(staging / relative, data)
        failed = {result.relative for result in results if result.code is None}
        removed = []
        if output.exists():
            removed = sorted(r for r in failed if (output / r).is_file() or (output / r).is_symlink())
            _carry_over(output, staging, failed)
            shutil.copymode(output, staging)
        else:
            os.chmod(staging, 0o777 & ~current_umask())
        if finish is not None:
            finish(staging, removed)
        _swap_in(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return removed


def _remove_stale_temporaries(output: Path) -> None:
    """The temporary directories an earlier run for `output` left (killed before it could remove
    them): `.OUT.porter-tmp-PID-*` and `.OUT.porter-old-PID-*` of a process that is gone."""
    pattern = re.compile(rf"\.{re.escape(output.name)}\.porter-(?:tmp|old)-(\d+)-")
    for path in output.parent.iterdir():
        match = pattern.match(path.name)
        if match and path.is_dir() and not path.is_symlink() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process
        return True
    return True


def output_conflicts(output: Path, relatives: Iterable[str]) -> list[str]:
    """The paths under `output` that are in the way of the files porter writes there: a directory
    (or a symlink to one) where a file goes, a file or a symlink where a directory goes."""
    found = []
    for relative in relatives:
        parts = relative.split("/")
        for depth in range(1, len(parts) + 1):
            path = output.joinpath(*parts[:depth])
            last = depth == len(parts)
            if not os.path.lexists(path):
                break
            if last and path.is_dir():
                found.append(f"{path} is a directory where porter writes a file")
            elif not last and (path.is_symlink() or not path.is_dir()):
                found.append(f"{path} is {'a symlink' if path.is_symlink() else 'a file'} where porter writes "
                             f"a directory")
                break
    return sorted(set(found))


def _carry_over(output: Path, staging: Path, failed: set[str]) -> None:
    """The files, symlinks and directories of `output` that the new tree does not hold (porter's
    earlier outputs of files that failed now aside), into `staging`: hard-linked, else copied."""
    for directory, dirs, files in os.walk(output):
        here = Path(directory).relative_to(output)
        for name in sorted(dirs + files):
            old, relative = Path(directory) / name, (here / name).as_posix()
            new = staging / here / name
            if old.is_dir() and not old.is_symlink():
                if new.is_symlink() or (new.exists() and not new.is_dir()):
                    raise FileExistsError(errno.EEXIST, "a directory where porter writes a file", str(old))
                new.mkdir(exist_ok=True)
                shutil.copymode(old, new)
            elif os.path.lexists(new):
                if new.is_dir() and not new.is_symlink():
                    raise FileExistsError(errno.EEXIST, "a file where porter writes a directory", str(old))
            elif relative not in failed:
                _link_or_copy(old, new)


def _link_or_copy(old: Path, new: Path) -> None:
    if old.is_symlink():
        os.symlink(os.readlink(old), new)
        return
    try:
        os.link(old, new)
    except OSError:
        shutil.copy2(old, new)


def _swap_in(staging: Path, output: Path) -> None:
    """`staging` renamed to `output`; an existing `output` renamed aside first and then removed."""
    if not output.exists():
        os.rename(staging, output)
        return
    aside = output.with_name(f".{output.name}.porter-old-{os.getpid()}-{time.time_ns()}")
    os.rename(output, aside)
    try:
        os.rename(staging, output)
    except BaseException:
        os.rename(aside, output)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def backup_dir(source: Path) -> Path:
    """A fresh sibling of `source` for the originals: SRC.porter-backup, SRC.porter-backup-2, ...,
    beside it whatever the spelling (`.` included), never inside what is converted."""
    source = source.resolve()
    base = source.parent / f"{source.name}.porter-backup"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def write_inplace(results: list[FileResult], source: Path, backup: Path, *, root_is_file: bool = False) -> list[str]:
    """Replaces each changed file under `source` with its conversion, after copying the original to
    `backup` (same relative path). Returns the relative paths rewritten."""
    written = []
    for result in results:
        if result.code is None or not result.changed:
            continue
        original = source if root_is_file else source / result.relative
        if not root_is_file and original.is_symlink():
            continue  # --follow-symlinks: what it points at is in the tree, rewritten there; the link stays
        saved = backup if root_is_file else backup / result.relative
        saved.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(original, saved)
        write_bytes_atomically(original, result.code, mode_from=original)
        written.append(result.relative)
    return written


class ProgressBar:
    """`porter: [#####-----] 12/40 files` on a terminal; nothing otherwise."""

    def __init__(self, stream=None, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total == 0:
            return
        filled = self.width * done // total
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\rporter: [{bar}] {done}/{total} files")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * (self.width + 40) + "\r")
            self.stream.flush()
            self._shown = False
