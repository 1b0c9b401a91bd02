"""`porter convert SRC -o OUT --with PKG`: the modules of the installed package PKG that SRC reaches,
converted with SRC's files into OUT/PKG/..., one report for all.

Which modules: those SRC's files import by name (`from torchvision.models.resnet import ResNet` reaches
torchvision.models.resnet; `from torchvision.models import resnet50` reaches torchvision.models, whose
imports reach every model module it re-exports), and, one module at a time, what their own imports
reach (absolute and relative; imports inside functions run later, on a call, and are not followed).
The packages above a reached module run when it is imported, so they are converted too, but what
they import is not followed (torchvision/__init__.py imports datasets, io, ops, ...: the whole package).
The files are read where `import` finds them (outside.py's finders, the current directory aside),
never imported.

The layout: OUT/PKG/... mirrors the installed package, so that no import changes, neither SRC's nor
the package's own absolute ones (`from torchvision.utils import ...`): with OUT first on sys.path (a
script run from OUT has it there already) the converted copy shadows the installed one. Each package
`__init__.py` written there extends its `__path__` with the installed package's directory
(pkgutil.extend_path), so a module porter did not convert (one SRC never reaches, a compiled one)
is still found, as torch code, in the installed package.

The files convert as one tree with SRC's (tree.convert_tree), so a class of the package is known to be a
module class where SRC derives from it or builds it, and `rngs` flow across the package boundary.
"""

from __future__ import annotations

import ast
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from porter.convert import outside, shared_helpers
from porter.convert.tree import FileResult, Task

_EXTEND_PATH = ("# porter --with: this package's modules porter did not convert come from the installed package\n"
                "from pkgutil import extend_path\n"
                "__path__ = extend_path(__path__, __name__)\n")


@dataclass
class Closure:
    """The modules of the --with packages that a tree reaches."""

    packages: list[str]
    followed: dict[str, str] = field(default_factory=dict)  # dotted name -> file: reached, its imports followed
    parents: dict[str, str] = field(default_factory=dict)  # packages above them: run on import, not followed
    not_read: dict[str, str] = field(default_factory=dict)  # dotted name -> why (a compiled module)

    def modules(self) -> dict[str, str]:
        return dict(sorted({**self.parents, **self.followed}.items()))

    def tasks(self, annotate: bool = False, diff: bool = False) -> list[Task]:
        """One task per module read, written at OUT/<its dotted path>.py (or /__init__.py)."""
        found = []
        for dotted, path in self.modules().items():
            relative = "/".join(dotted.split(".")) + ("/__init__.py" if _is_init(path) else ".py")
            found.append(Task(path, path, relative, "python", annotate, diff))
        return found

    def to_json(self) -> dict:
        """The report's "with" field: per package, the modules read (and those that could not be)."""
        return {package: {"modules": sorted(d for d in self.modules() if d.partition(".")[0] == package),
                          "not_read": {d: why for d, why in sorted(self.not_read.items())
                                       if d.partition(".")[0] == package}}
                for package in self.packages}


def problem(packages: list[str], source: Path, *, inplace: bool = False) -> str | None:
    """Why --with cannot take these packages for this source (a usage error), or None."""
    if inplace:
        return "--with writes the packages' converted modules beside the tree's output: give -o OUT_DIR (or " \
               "--diff), not --inplace"
    if not source.is_dir() and source.suffix not in ("", ".py", ".pyw"):
        return "--with follows the imports of Python files: name a .py file or a directory"
    for package in packages:
        if package == "torch" or package.startswith("torch."):
            return "--with torch: porter converts torch's own code where your files use it"
        if "." in package or not package.isidentifier():
            return f"--with {package}: name a top-level package (torchvision, not torchvision.models)"
        if not outside.is_installed(package):
            return f"--with {package}: no installed package {package} where porter runs (the current directory " \
                   "aside): install it, or convert its source as part of your tree"
    return None


def add(tasks: list[Task], helpers_at: dict[str, str], packages: list[str],
        ) -> tuple[list[Task], dict[str, str], Closure]:
    """The tree's tasks with those of the modules it reaches in `packages`, and where their helpers go."""
    closure = find([t.path for t in tasks if t.kind == "python"], packages)
    theirs = closure.tasks(annotate=any(t.annotate for t in tasks), diff=any(t.diff for t in tasks))
    # placed apart: OUT/torchvision is a top-level package beside the tree, not a subpackage of it
    theirs, their_helpers = shared_helpers.place(theirs, [t.relative for t in theirs])
    return [*tasks, *theirs], {**helpers_at, **their_helpers}, closure


@contextmanager
def converting(closure: Closure | None):
    """While the tree converts, its --with packages are not outside it (PT013), for every worker process."""
    if closure is None:
        yield
        return
    before = os.environ.get(outside.CONVERTED_PACKAGES)
    os.environ[outside.CONVERTED_PACKAGES] = ",".join(closure.packages)
    try:
        yield
    finally:
        if before is None:
            del os.environ[outside.CONVERTED_PACKAGES]
        else:
            os.environ[outside.CONVERTED_PACKAGES] = before


def find(files: list[str], packages: list[str]) -> Closure:
    """The modules of `packages` that the files reach, module by module."""
    closure = Closure(sorted(set(packages)))
    wanted = set(closure.packages)

    def reached(module: str) -> bool:
        return module.partition(".")[0] in wanted and outside.find_spec(module) is not None

    queue = [name for file in files for name in _imported(_parse(file), None, False, reached)]
    while queue:
        dotted = queue.pop()
        if dotted in closure.followed or dotted in closure.not_read or not reached(dotted):
            continue
        spec = outside.find_spec(dotted)
        if not spec.origin or not spec.origin.endswith(".py"):
            if spec.submodule_search_locations is None:
                closure.not_read[dotted] = f"no Python source ({spec.origin})"
            continue  # a namespace package: no file, its modules are found through it
        closure.followed[dotted] = spec.origin
        closure.parents.pop(dotted, None)
        _add_parents(closure, dotted)
        queue.extend(_imported(_parse(spec.origin), dotted, _is_init(spec.origin), reached))
    return closure


def _add_parents(closure: Closure, dotted: str) -> None:
    parts = dotted.split(".")
    for end in range(1, len(parts)):
        parent = ".".join(parts[:end])
        spec = outside.find_spec(parent)
        if parent not in closure.followed and spec is not None and spec.origin and spec.origin.endswith(".py"):
            closure.parents[parent] = spec.origin


def _is_init(path: str) -> bool:
    return os.path.basename(path) == "__init__.py"


def _parse(path: str) -> ast.Module | None:
    try:
        return ast.parse(Path(path).read_bytes(), path)
    except (OSError, SyntaxError, ValueError):
        return None  # porter's conversion reports it


def _imported(tree: ast.Module | None, module: str | None, package: bool, reached):
    """The modules a module's imports reach: `import a.b` -> a.b; `from a.b import c` -> a.b.c where it is a
    module (`reached`), and a.b where a name is taken from it (a.b.c is not a module, or `import *`): a
    package a name is not taken from only runs, as the parent of a.b.c. `module`: the importing module's
    name (None: a file of the tree, whose relative imports stay in the tree)."""
    for node in _run_on_import(tree.body if tree is not None else []):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, package)
            if not base:
                continue
            submodules = [f"{base}.{alias.name}" for alias in node.names
                          if alias.name != "*" and reached(f"{base}.{alias.name}")]
            yield from submodules
            if len(submodules) < len(node.names):
                yield base


def _run_on_import(statements):
    """The import statements that run when the module is imported: not in functions (they run on a call),
    nor under `if TYPE_CHECKING:`."""
    for statement in statements:
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            yield statement
        elif isinstance(statement, ast.If):
            if not _type_checking(statement.test):
                yield from _run_on_import(statement.body)
            yield from _run_on_import(statement.orelse)
        elif isinstance(statement, ast.Try):
            for block in (statement.body, *(h.body for h in statement.handlers), statement.orelse,
                          statement.finalbody):
                yield from _run_on_import(block)
        elif isinstance(statement, (ast.With, ast.ClassDef)):
            yield from _run_on_import(statement.body)


def _type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or \
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _absolute(node: ast.ImportFrom, module: str | None, package: bool) -> str | None:
    if not node.level:
        return node.module
    if module is None:
        return None
    parts = module.split(".") if package else module.split(".")[:-1]
    if node.level - 1 > len(parts) - 1:
        return None
    base = parts[:len(parts) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def shadow(results: list[FileResult], closure: Closure) -> list[FileResult]:
    """The package __init__.py files of the closure extend their __path__ with the installed package's."""
    inits = {task.relative for task in closure.tasks() if task.relative.endswith("__init__.py")}
    return [replace(r, code=_with_extend_path(r.code)) if r.relative in inits and r.code is not None else r
            for r in results]


def _with_extend_path(code: bytes) -> bytes:
    """The lines inserted after the module's docstring and `from __future__` imports (which must come first)."""
    try:
        text = code.decode("utf-8")
        body = ast.parse(text).body
    except (UnicodeDecodeError, SyntaxError):
        return code
    after = 0
    for statement in body:
        docstring = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant) \
            and isinstance(statement.value.value, str) and statement is body[0]
        if not (docstring or isinstance(statement, ast.ImportFrom) and statement.module == "__future__"):
            break
        after = statement.end_lineno
    lines = text.splitlines(keepends=True)
    if lines and after >= len(lines) and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    return "".join([*lines[:after], _EXTEND_PATH, *lines[after:]]).encode("utf-8")


def announce(closure: Closure, stream) -> None:
    for package in closure.packages:
        read = [d for d in closure.modules() if d.partition(".")[0] == package]
        print(f"porter: --with {package}: converted {len(read)} module(s) the tree reaches: {', '.join(read) or 'none'}"
              + "".join(f"; not read: {d} ({why})" for d, why in closure.not_read.items()
                        if d.partition(".")[0] == package), file=stream)


def split(results: list[FileResult], closure: Closure | None) -> tuple[list[FileResult], list[tuple[str, bytes]]]:
    """The tree's results, and the closure's converted files as (relative path, bytes): they have no source
    in the tree (a failed one is not written, its module is then the installed torch one)."""
    if closure is None:
        return results, []
    theirs = {task.relative for task in closure.tasks()}
    return [r for r in results if r.relative not in theirs], \
        [(r.relative, r.code) for r in results if r.relative in theirs and r.code is not None]
