"""A script converted on its own that imports its model from a file beside it.

    from resnet_small import SmallResNet        # resnet_small.py beside train.py
    import resnet_small as rs; rs.SmallResNet()
    from .models import Net                      # in a package directory

Converting a directory, the tree runner (tree.py) learns which names of the other files are nn.Module
subclasses and layer factories. Converting one file, nothing else is converted, so this module finds the
files it imports from the way Python would (the script's directory, the root of the package it sits in,
the package for relative imports), parses them (never imports them) and asks the same analysis what they
define. A module class built in the script then gets its `rngs`, as in a tree. The import stays as it is:
the converted sibling keeps its file and class names, so the user converts it beside the output (a PT007
note and a `porter:` line give the exact command).

A model built from a name whose file porter could not read (no such file beside the script, it does not
parse, a dynamic import; or the file defines it as something porter does not convert) and then used as a model (its parameters given to an optimizer, .train(), ...)
is PT012: porter cannot tell whether it is an nn.Module, and the converted script would train it as
an nnx one.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import libcst as cst

from porter.convert.diagnostics import Diagnostic, Severity, diagnostic

# what a model is used for in a script (an optimizer over its parameters, a mode switch, a checkpoint)
MODEL_METHODS = frozenset({"parameters", "named_parameters", "train", "eval", "state_dict", "load_state_dict",
                           "zero_grad", "modules", "children", "named_modules"})
# calls chained on a constructed model that return it (`Net().to(device)`)
RETURNS_ITSELF = frozenset({"to", "cuda", "cpu", "float", "double", "half", "bfloat16", "train", "eval"})
DYNAMIC_IMPORTS = frozenset({"importlib.import_module", "import_module", "__import__"})
# packages whose names never point at a file of the user's (torch's own are the rules' business)
NOT_SIBLINGS = ("torch", "torchvision", "torchaudio", "torchtext", "einops", "numpy", "jax", "flax", "optax")


@dataclass(frozen=True)
class Imported:
    """One name a script binds by an import: `local` (a class, or a module under an alias)."""

    local: str
    module: str  # as written, dots included: "resnet_small", ".models"
    name: str | None  # the imported name (None: the module itself, `import M as local`)
    line: int
    col: int


@dataclass
class Siblings:
    """What a script imports from the files beside it: the tree runner's TreeSummary for one file."""

    script: Path
    names: dict[str, str] = field(default_factory=dict)  # local name (or "alias.Class") -> "module" | "factory"
    # local name -> (the file read, the import, the names of its module classes and layer factories learnt)
    read: dict[str, tuple[Path, Imported, list[str]]] = field(default_factory=dict)
    unseen: dict[str, tuple[str, Imported]] = field(default_factory=dict)  # local name -> (why, import)
    uses: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)  # see _models_built

    def known(self, relative: str, imports) -> tuple[tuple[str, str], ...]:  # noqa: ARG002 (TreeSummary's signature)
        return tuple(sorted(self.names.items()))

    @classmethod
    def of(cls, script: Path) -> Siblings:
        found = cls(script)
        parsed = _parse(script)
        if parsed is None:
            return found  # the conversion reports it
        tree, lines = parsed
        reader = _Reader(script.parent)
        for imported in _imports(tree, lines, _built_with(tree)):
            if imported.module.lstrip(".").split(".")[0] in NOT_SIBLINGS:
                continue
            path, why = reader.resolve(imported.module)
            if path is None:
                found.unseen[imported.local] = (why, imported)
                continue
            exports = reader.exports(path)
            if exports is None:
                found.unseen[imported.local] = (f"{path} does not parse", imported)
            elif imported.name is None:  # import M as local: its classes as local.Class
                found._learn(path, imported, {f"{imported.local}.{n}": k for n, k in exports.items()})
            elif imported.name == "*":
                found._learn(path, imported, exports)
            elif imported.name in exports:
                found._learn(path, imported, {imported.local: exports[imported.name]})
            else:
                inner_module = imported.module + ("" if imported.module.endswith(".") else ".") + imported.name
                submodule, _ = reader.resolve(inner_module)  # `from . import models` too
                if submodule is not None:  # from pkg import models; models.Net()
                    inner = reader.exports(submodule) or {}
                    found._learn(submodule, imported, {f"{imported.local}.{n}": k for n, k in inner.items()})
                else:  # a constant, a plain function... or a model porter does not convert: said if used as one
                    found.unseen[imported.local] = (f"{path} defines no nn.Module subclass or layer factory "
                                                    f"named {imported.name}", imported)
        for dynamic in _dynamic_modules(tree):
            found.unseen[dynamic.local] = ("porter reads imports, it does not run them", dynamic)
        found.uses = _models_built(tree, lines)
        return found

    def _learn(self, path: Path, imported: Imported, names: dict[str, str]) -> None:
        self.names.update(names)
        if names:
            self.read[imported.local] = (path, imported, sorted(n.split(".")[-1] for n in names))

    def files_read(self) -> list[Path]:
        """The files whose module classes or layer factories the script uses, each once."""
        return list(dict.fromkeys(path for path, _, _ in self.read.values()))

    def notes(self, display: str, how: Callable[[Path], str]) -> list[Diagnostic]:
        """PT007 for each sibling whose module classes the script may build (`how`: the command that
        converts it where the converted script finds it), PT012 for each model built from a name porter
        could not read."""
        found = []
        for path, imported, names in self.read.values():
            found.append(diagnostic(
                "PT007", imported.line, imported.col,
                f"{', '.join(names)}: nn.Module subclass(es) or layer factories of {path}, read (not converted in "
                f"this run) so that building one here passes rngs; the import is kept, so the converted "
                f"{path.name} must be importable beside this file's output: {how(path)}", display))
        for local, (why, imported) in self.unseen.items():
            for line, col, name in self.uses.get(local, ()):
                found.append(diagnostic(
                    "PT012", line, col,
                    f"{name} comes from {imported.module} ({why}): porter cannot tell whether it is an "
                    f"nn.Module, so it is built without rngs and trained as an nnx module; if it is a file of "
                    f"yours, convert the directory that holds both (porter convert DIR -o OUT_DIR)", display))
        return found


def with_notes(result, notes: list[Diagnostic]):
    """A FileResult (tree.py) with the notes added, its status following them."""
    if not notes or result.code is None:
        return result
    diagnostics = sorted([*result.diagnostics, *notes], key=lambda d: (d.line, d.col, d.code))
    status = "issues" if any(d.severity is not Severity.INFO for d in diagnostics) else result.status
    return replace(result, diagnostics=diagnostics, status=status)


class _Reader:
    """Finds and reads the files a script imports from, each parsed once."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        root = directory
        while (root / "__init__.py").is_file() and root.parent != root:
            root = root.parent
        # `python train.py` puts the script's directory first on sys.path; `python -m pkg.train` the
        # directory holding the package
        self.roots = list(dict.fromkeys([directory, root]))
        self._exports: dict[Path, dict[str, str] | None] = {}

    def resolve(self, module: str, *, start: Path | None = None) -> tuple[Path | None, str]:
        """The file `module` (dots for relative imports) names, seen from the directory `start` (default:
        the script's), or None and why not."""
        dots = len(module) - len(module.lstrip("."))
        parts = [p for p in module[dots:].split(".") if p]
        start = start or self.directory
        if dots:
            base = start
            for _ in range(dots - 1):
                base = base.parent
            bases = [base]
        else:
            bases = list(dict.fromkeys([start, *self.roots]))
        tried = []
        for base in bases:
            target = base.joinpath(*parts)
            for candidate in ([target.with_suffix(".py")] if parts else []) + [target / "__init__.py"]:
                if candidate.is_file():
                    return candidate, ""
                tried.append(str(candidate))
        return None, f"no {' or '.join(tried)}"

    def exports(self, path: Path, seen: frozenset[Path] = frozenset()) -> dict[str, str] | None:
        """The module classes and layer factories `path` defines or imports from files beside it (None:
        it cannot be read or parsed)."""
        path = path.resolve()
        if path in self._exports:
            return self._exports[path]
        if path in seen:  # an import cycle: what is known so far
            return {}
        try:
            text = path.read_text(encoding="utf-8")
            module, tree = cst.parse_module(text), ast.parse(text)
        except (OSError, UnicodeDecodeError, cst.ParserSyntaxError, SyntaxError, ValueError):
            self._exports[path] = None
            return None
        known = {}
        # what builds layers here, and what is imported only to be passed on (a package's re-exports)
        loaded = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        for imported in _imports(tree, [], _built_with(tree), also=lambda local: local not in loaded):
            if imported.module.lstrip(".").split(".")[0] in NOT_SIBLINGS:
                continue
            found, _ = self.resolve(imported.module, start=path.parent)
            inner = self.exports(found, seen | {path}) if found is not None else None
            if inner and imported.name is None:  # import blocks as b; class Net(b.Block)
                known.update({f"{imported.local}.{n}": k for n, k in inner.items()})
            elif inner and imported.name == "*":
                known.update(inner)
            elif inner and imported.name in inner:
                known[imported.local] = inner[imported.name]
        from porter.convert.pipeline import analyze_exports
        self._exports[path] = {**known, **analyze_exports(module, str(path), known)}
        return self._exports[path]


def _built_with(tree: ast.Module) -> set[str]:
    """The names that may build a layer or a model here (the heads of what is called, subclassed or passed to
    a call: `Net(...)`, `m.Net(...)`, `class A(Base)`, `partial(Block, d)`): the only imports worth reading."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            found.update(_dotted(e).split(".")[0] for e in [node.func, *node.args, *(k.value for k in node.keywords)])
        elif isinstance(node, ast.ClassDef):
            found.update(_dotted(base).split(".")[0] for base in node.bases)
    return found - {""}


def _imports(tree: ast.Module, lines: list[str], wanted: set[str],
             also: Callable[[str], bool] = lambda local: False) -> list[Imported]:
    """The names the module's import statements bind (at any depth) that are in `wanted` (or `also` takes),
    in order; a star import always."""
    found: list[Imported] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            for alias in node.names:
                found.append(Imported(alias.asname or alias.name, module, alias.name, *_where(node, lines)))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    found.append(Imported(alias.asname, alias.name, None, *_where(node, lines)))
                elif "." not in alias.name:  # `import pkg.models` binds pkg: pkg.models.Net() is not looked into
                    found.append(Imported(alias.name, alias.name, None, *_where(node, lines)))
    return sorted((i for i in found if i.local in wanted or i.local == "*" or also(i.local)),
                  key=lambda i: (i.line, i.col))


def _dynamic_modules(tree: ast.Module) -> list[Imported]:
    """Names bound to `importlib.import_module(...)` / `__import__(...)` at the top level."""
    return [Imported(node.targets[0].id, ast.unparse(node.value), None, node.lineno, 1) for node in tree.body
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call) and _dotted(node.value.func) in DYNAMIC_IMPORTS]


def _models_built(tree: ast.Module, lines: list[str]) -> dict[str, list[tuple[int, int, str]]]:
    """For each imported name (the head of `Net(...)`, `rs.Net(...)`): where a value built by calling it is
    assigned to a name the script then uses as a model, as (line, col, what was called)."""
    built: dict[str, list[ast.Call]] = {}  # target name -> the calls assigned to it
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            call = _constructor_call(node.value)
            if call is not None:
                built.setdefault(node.targets[0].id, []).append(call)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.attr in MODEL_METHODS:
            used.add(node.func.value.id)
    found: dict[str, list[tuple[int, int, str]]] = {}
    for target in sorted(used & set(built)):
        for call in built[target]:
            name = _dotted(call.func)
            found.setdefault(name.split(".")[0], []).append((*_where(call, lines), name))
    return found


def _constructor_call(value: ast.expr) -> ast.Call | None:
    """`Net(...)` in `Net(...)`, `Net(...).to(device)`, `rs.Net(...).cuda()`; None for anything else."""
    while isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute) \
            and value.func.attr in RETURNS_ITSELF and isinstance(value.func.value, ast.Call):
        value = value.func.value
    if isinstance(value, ast.Call) and _dotted(value.func):
        return value
    return None


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return node.id if isinstance(node, ast.Name) else ""


def _where(node: ast.AST, lines: list[str]) -> tuple[int, int]:
    """(line, column) as porter's diagnostics count them: the column in characters, from 1 (ast's are bytes)."""
    line = lines[node.lineno - 1] if node.lineno <= len(lines) else ""
    return node.lineno, len(line.encode("utf-8")[:node.col_offset].decode("utf-8", errors="replace")) + 1


def _parse(path: Path) -> tuple[ast.Module, list[str]] | None:
    try:
        text = path.read_text(encoding="utf-8")
        return ast.parse(text), text.splitlines()
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return None


def command(script: Path, sibling: Path, output: Path | None, mode: str) -> str:
    """How the user converts `sibling` so that the converted script finds it."""
    if mode == "inplace":
        return f"porter convert {sibling} --inplace"
    if output is None or mode != "file":
        return f"porter convert {sibling} -o DIR/{sibling.name} (DIR: where the converted script goes)"
    relative = os.path.relpath(sibling, script.parent)
    return f"porter convert {sibling} -o {Path(os.path.normpath(output.parent / relative))}"
