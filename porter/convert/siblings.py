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
parse, a dynamic import) and then used as a model (its parameters given to an optimizer, .train(), ...)
is PT012: porter cannot tell whether it is an nn.Module, and the converted script would train it as
an nnx one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import libcst as cst

from porter.convert.context import code_of
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
        try:
            module = cst.parse_module(script.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, cst.ParserSyntaxError):
            return found  # the conversion reports it
        reader = _Reader(script.parent)
        wrapper = cst.MetadataWrapper(module, unsafe_skip_copy=True)
        for imported in _imports(wrapper):
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
        for dynamic in _dynamic_modules(module):
            found.unseen[dynamic.local] = ("porter reads imports, it does not run them", dynamic)
        found.uses = _models_built(module, wrapper)
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
            module = cst.parse_module(text)
        except (OSError, UnicodeDecodeError, cst.ParserSyntaxError):
            self._exports[path] = None
            return None
        known = {}
        for imported in _imports(cst.MetadataWrapper(module, unsafe_skip_copy=True)):
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


def _imports(wrapper: cst.MetadataWrapper) -> list[Imported]:
    """Every import statement of the module, at any depth, one entry per name it binds."""
    positions = wrapper.resolve(cst.metadata.PositionProvider)
    found: list[Imported] = []

    class Collect(cst.CSTVisitor):
        def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
            where = positions[node].start
            module = "." * len(node.relative) + (_dotted(node.module) if node.module is not None else "")
            if isinstance(node.names, cst.ImportStar):
                found.append(Imported("*", module, "*", where.line, where.column + 1))
                return
            for alias in node.names:
                name = _dotted(alias.name)
                local = _dotted(alias.asname.name) if alias.asname else name
                found.append(Imported(local, module, name, where.line, where.column + 1))

        def visit_Import(self, node: cst.Import) -> None:
            where = positions[node].start
            for alias in node.names:
                name = _dotted(alias.name)
                if alias.asname:
                    found.append(Imported(_dotted(alias.asname.name), name, None, where.line, where.column + 1))
                elif "." not in name:  # `import pkg.models` binds pkg: pkg.models.Net() is not looked into
                    found.append(Imported(name, name, None, where.line, where.column + 1))

    wrapper.visit(Collect())
    return found


def _dynamic_modules(module: cst.Module) -> list[Imported]:
    """Names bound to `importlib.import_module(...)` / `__import__(...)` at the top level."""
    found = []
    for statement in module.body:
        if isinstance(statement, cst.SimpleStatementLine):
            for small in statement.body:
                if isinstance(small, cst.Assign) and len(small.targets) == 1 \
                        and isinstance(small.targets[0].target, cst.Name) and isinstance(small.value, cst.Call) \
                        and _dotted(small.value.func) in DYNAMIC_IMPORTS:
                    found.append(Imported(small.targets[0].target.value, f"{code_of(small.value)}", None, 0, 0))
    return found


def _models_built(module: cst.Module, wrapper: cst.MetadataWrapper) -> dict[str, list[tuple[int, int, str]]]:
    """For each imported name (the head of `Net(...)`, `rs.Net(...)`): where a value built by calling it is
    assigned to a name the script then uses as a model, as (line, col, what was called)."""
    positions = wrapper.resolve(cst.metadata.PositionProvider)
    built: dict[str, list[tuple[str, cst.Call]]] = {}  # target name -> (head, the call)
    used: set[str] = set()

    class Collect(cst.CSTVisitor):
        def visit_Assign(self, node: cst.Assign) -> None:
            if len(node.targets) == 1 and isinstance(node.targets[0].target, cst.Name):
                call = _constructor_call(node.value)
                if call is not None:
                    head = _dotted(call.func).split(".")[0]
                    built.setdefault(node.targets[0].target.value, []).append((head, call))

        def visit_Call(self, node: cst.Call) -> None:
            func = node.func
            if isinstance(func, cst.Attribute) and isinstance(func.value, cst.Name) \
                    and func.attr.value in MODEL_METHODS:
                used.add(func.value.value)

    wrapper.visit(Collect())
    found: dict[str, list[tuple[int, int, str]]] = {}
    for target in used & set(built):
        for head, call in built[target]:
            where = positions[call].start
            found.setdefault(head, []).append((where.line, where.column + 1, _dotted(call.func)))
    return found


def _constructor_call(value: cst.BaseExpression) -> cst.Call | None:
    """`Net(...)` in `Net(...)`, `Net(...).to(device)`, `rs.Net(...).cuda()`; None for anything else."""
    while isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute) \
            and value.func.attr.value in RETURNS_ITSELF and isinstance(value.func.value, cst.Call):
        value = value.func.value
    if isinstance(value, cst.Call) and _dotted(value.func):
        return value
    return None


def _dotted(node: cst.CSTNode) -> str:
    if isinstance(node, cst.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr.value}" if inner else ""
    return node.value if isinstance(node, cst.Name) else ""


def command(script: Path, sibling: Path, output: Path | None, mode: str) -> str:
    """How the user converts `sibling` so that the converted script finds it."""
    if mode == "inplace":
        return f"porter convert {sibling} --inplace"
    if output is None or mode != "file":
        return f"porter convert {sibling} -o DIR/{sibling.name} (DIR: where the converted script goes)"
    relative = os.path.relpath(sibling, script.parent)
    return f"porter convert {sibling} -o {Path(os.path.normpath(output.parent / relative))}"
