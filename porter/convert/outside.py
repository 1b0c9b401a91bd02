"""What a name imported from an installed package is: an nn.Module class, a function that returns
modules (a factory), another class (a mixin), or unknown.

Answered by reading the package's source, never by importing it: the module files are found the way
`import` would find them (importlib's path finders, one package level at a time, so that no
`__init__.py` runs) and parsed with `ast`. A name is followed through re-exports (`from .resnet import
ResNet`, `from .models import *`, `ResNet50 = ResNet`) to its definition; a class is a module class when
one of its bases is, transitively, down to `torch.nn.Module`. Everything read is cached for the life of
the process. The current directory is not searched: it holds the user's own code, not an installed package.

    what_is("torchvision.models.resnet.ResNet").kind   -> "module"
    what_is("timm.create_model").kind                  -> "factory"
    what_is("huggingface_hub.PyTorchModelHubMixin").kind -> "class"
"""

from __future__ import annotations

import ast
import builtins
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

from porter.convert import mixins

MODULE, FACTORY, CLASS, UNKNOWN = "module", "factory", "class", "unknown"

# the root every module class derives from, under the names torch's own source binds it to
_ROOT = frozenset({"torch.nn.Module", "torch.nn.modules.module.Module"})
CONVERTED_PACKAGES = "PORTER_WITH"  # the environment variable --with sets, for the worker processes
_DEPTH = 40  # re-exports and bases followed before giving up (a guard against cycles and deep chains)


@dataclass(frozen=True)
class OutsideName:
    """The answer for one dotted name."""

    name: str  # as asked: "timm.create_model"
    kind: str  # MODULE | FACTORY | CLASS | UNKNOWN
    where: str | None = None  # its definition, dotted: "timm.models._factory.create_model"
    path: str | None = None  # the file defining it
    line: int = 0
    why: str = ""  # for a factory, what shows it returns modules; for unknown, why porter cannot tell
    # for a class that is not a module class: what in it (or its bases) stops an nnx.Module from taking it
    # as a base ("__new__ sets attributes", "__init_subclass__ without super()", "metaclass Meta")
    hazards: tuple[str, ...] = ()
    offers: tuple[str, ...] = ()  # for such a class: its public methods, its bases' included (mixins.offers)

    @property
    def package(self) -> str:
        return self.name.partition(".")[0]

    @property
    def file(self) -> str:
        """The defining file, from its package's directory on ("torchvision/models/resnet.py")."""
        if self.path is None:
            return self.where or self.name
        spec = _spec(self.package)
        top = spec.origin if spec is not None and spec.submodule_search_locations is None else \
            next(iter(spec.submodule_search_locations), None) if spec is not None else None
        if not top:
            return self.path
        relative = os.path.relpath(self.path, os.path.dirname(top))
        return self.path if relative.startswith("..") else relative

    @property
    def in_torch(self) -> bool:
        """Defined in torch itself (re-exported by the package asked about)."""
        return (self.where or "").partition(".")[0] == "torch"


def what_is(dotted: str) -> OutsideName:
    """What `dotted` (a module path and the names after it) names in the installed packages."""
    return _what_is(dotted)


def is_installed(top: str) -> bool:
    """A top-level module or package porter can read (or at least find) outside the current directory."""
    return _spec(top) is not None


def converted_packages() -> frozenset[str]:
    """The packages converted with the tree (`porter convert --with PKG`: closure.py): not outside it."""
    return frozenset(filter(None, os.environ.get(CONVERTED_PACKAGES, "").split(",")))


def find_spec(module: str) -> ModuleSpec | None:
    """The module's spec, found as `import` would (the current directory aside), importing nothing."""
    return _spec(module)


def is_stdlib(dotted: str) -> bool:
    return dotted.partition(".")[0] in sys.stdlib_module_names


def clear_cache() -> None:
    """Forget what was read (tests that write packages into a directory on sys.path call it)."""
    for cached in (_what_is, _spec, _source, _class_kind, _function_kind, _search_path, _in_tree):
        cached.cache_clear()


# ------------------------------------------------------------------------------------------ finding files
@lru_cache(maxsize=None)
def _search_path(path: tuple[str, ...], cwd: str) -> list[str]:
    return [entry for entry in path if entry and os.path.abspath(entry) != cwd]


@lru_cache(maxsize=None)
def _spec(module: str) -> ModuleSpec | None:
    """The module's spec, found without importing anything: a top-level name on sys.path (less the current
    directory), a submodule in its parent package's directories."""
    parent, _, _ = module.rpartition(".")
    if parent:
        above = _spec(parent)
        if above is None or not above.submodule_search_locations:
            return None
        locations = list(above.submodule_search_locations)
    else:
        locations = _search_path(tuple(sys.path), os.getcwd())
    try:
        return PathFinder.find_spec(module, locations)
    except (ImportError, ValueError, OSError):
        return None


@dataclass
class _Source:
    """One module's top-level bindings, read from its file."""

    name: str
    path: str | None
    package: bool
    bindings: dict[str, tuple]  # name -> ("def", node) | ("from", module, name) | ("module", module) | ("expr", node) | ("other",)
    stars: list[str]  # modules imported with `from X import *`
    public: frozenset[str] | None  # __all__ when it is a literal


@lru_cache(maxsize=None)
def _source(module: str) -> _Source | None:
    spec = _spec(module)
    if spec is None:
        return None
    package = spec.submodule_search_locations is not None
    origin = spec.origin if spec.origin and spec.origin.endswith(".py") else None
    if origin is None:  # a namespace package (no code of its own), or a compiled module (none porter can read)
        return _Source(module, None, package, {}, [], None) if package and spec.origin in (None, "namespace") \
            else None
    try:
        tree = ast.parse(Path(origin).read_bytes(), origin)
    except (OSError, SyntaxError, ValueError):
        return None
    source = _Source(module, origin, package, {}, [], None)
    _bind(source, tree.body, replace=True)
    return source


def _bind(source: _Source, statements: list[ast.stmt], *, replace: bool) -> None:
    """Top-level bindings in order; code that runs only when something fails (except:, else: of an if) fills in
    only names not bound yet (`try: from fast import X / except ImportError: X = None`)."""
    for statement in statements:
        found: dict[str, tuple] = {}
        if isinstance(statement, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            found[statement.name] = ("def", statement)
        elif isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.asname:
                    found[alias.asname] = ("module", alias.name)
                else:
                    top = alias.name.partition(".")[0]
                    found[top] = ("module", top)
        elif isinstance(statement, ast.ImportFrom):
            origin = _absolute(source, statement.level, statement.module or "")
            for alias in statement.names:
                if alias.name == "*":
                    if origin:
                        source.stars.append(origin)
                elif origin:
                    found[alias.asname or alias.name] = ("from", origin, alias.name)
        elif isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    simple = isinstance(statement.value, (ast.Name, ast.Attribute))
                    found[target.id] = ("expr", statement.value) if simple else ("other",)
                    if target.id == "__all__":
                        source.public = _names(statement.value)
        elif isinstance(statement, ast.AugAssign) and isinstance(statement.target, ast.Name) \
                and statement.target.id == "__all__":
            more = _names(statement.value)
            source.public = source.public | more if source.public is not None and more is not None else None
        elif isinstance(statement, ast.If):
            _bind(source, statement.body, replace=replace)
            _bind(source, statement.orelse, replace=False)
        elif isinstance(statement, ast.Try):
            _bind(source, statement.body + statement.orelse, replace=replace)
            for handler in statement.handlers:
                _bind(source, handler.body, replace=False)
            _bind(source, statement.finalbody, replace=replace)
        for name, binding in found.items():
            if replace or name not in source.bindings:
                source.bindings[name] = binding


def _names(node: ast.expr) -> frozenset[str] | None:
    if isinstance(node, (ast.List, ast.Tuple)) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return frozenset(e.value for e in node.elts)
    return None


def _absolute(source: _Source, level: int, module: str) -> str | None:
    if not level:
        return module
    parts = source.name.split(".")
    base = parts if source.package else parts[:-1]
    if level - 1 > len(base) or level - 1 == len(base) and not module:
        return None
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


# ------------------------------------------------------------------------------------------ resolving
@dataclass(frozen=True)
class _Found:
    """A definition: a class or function (node), a module (node None, name None), or a builtin (module 'builtins')."""

    module: str
    name: str | None = None
    node: ast.AST | None = None

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}" if self.name else self.module


def _resolve(module: str, name: str, depth: int = 0) -> _Found | None:
    """What `name` is in `module`'s namespace: its own binding, a star import's, a submodule, a builtin."""
    if depth > _DEPTH:
        return None
    if f"{module}.{name}" in _ROOT:
        return _Found(module, name)
    source = _source(module)
    if source is None:
        return None
    binding = source.bindings.get(name)
    if binding is not None:
        return _follow(source, name, binding, depth)
    for star in source.stars:
        if name.startswith("_"):
            break
        inner = _source(star)
        if inner is not None and (inner.public is None or name in inner.public):
            found = _resolve(star, name, depth + 1)
            if found is not None:
                return found
    if source.package and _spec(f"{module}.{name}") is not None:
        return _Found(f"{module}.{name}")
    if isinstance(getattr(builtins, name, None), type):
        return _Found("builtins", name)
    return None


def _follow(source: _Source, name: str, binding: tuple, depth: int) -> _Found | None:
    kind = binding[0]
    if kind == "def":
        return _Found(source.name, name, binding[1])
    if kind == "module":
        return _Found(binding[1]) if _spec(binding[1]) is not None else None
    if kind == "from":
        origin, imported = binding[1], binding[2]
        # a submodule first: `from torch import nn` need not read torch/__init__.py (a package rebinding a
        # submodule's name to something else is rare)
        if f"{origin}.{imported}" not in _ROOT and _spec(f"{origin}.{imported}") is not None:
            return _Found(f"{origin}.{imported}")
        return _resolve(origin, imported, depth + 1) if origin != source.name else None
    if kind == "expr":
        return _expression(source.name, binding[1], depth + 1)
    return None


def _expression(module: str, node: ast.expr, depth: int = 0, local: frozenset[str] = frozenset()) -> _Found | None:
    """What a dotted expression (`nn.Module`, `Generic[T]`, `"nn.Module"`) in `module` names."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a string annotation
        try:
            node = ast.parse(node.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(node, ast.Subscript):
        node = node.value
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id in local:
        return None
    found = _resolve(module, node.id, depth)
    for part in reversed(parts):
        if found is None or found.node is not None or found.name is not None:  # an attribute of a class: unknown
            return None
        found = _resolve(found.module, part, depth + 1)
    return found


def _dotted(dotted: str) -> _Found | None:
    """The definition a dotted name leads to: the longest prefix that is a module, then names in it."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if _spec(module) is None:
            continue
        found = _Found(module)
        for part in parts[cut:]:
            if found is None or found.node is not None or found.name is not None:
                return None
            found = _resolve(found.module, part)
        return found
    return None


# ------------------------------------------------------------------------------------------ classifying
@lru_cache(maxsize=4096)
def _what_is(dotted: str) -> OutsideName:
    if dotted in _ROOT:
        return OutsideName(dotted, MODULE, "torch.nn.modules.module.Module")
    if _spec(dotted.partition(".")[0]) is None:
        return OutsideName(dotted, UNKNOWN, why=f"no installed package {dotted.partition('.')[0]} found")
    found = _dotted(dotted)
    if found is None:
        return OutsideName(dotted, UNKNOWN, why="its definition could not be read")
    source = _source(found.module)
    path = source.path if source is not None else None
    line = getattr(found.node, "lineno", 0)
    if found.dotted in _ROOT:
        return OutsideName(dotted, MODULE, found.dotted, path, line)
    if found.module == "builtins":
        return OutsideName(dotted, CLASS, found.dotted)
    if isinstance(found.node, ast.ClassDef):
        kind, why, hazards, offered = _class_kind(found.module, found.name)
        return OutsideName(dotted, kind, found.dotted, path, line, why, hazards, offered)
    if isinstance(found.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        kind, why = _function_kind(found.module, found.name)
        return OutsideName(dotted, kind, found.dotted, path, line, why)
    return OutsideName(dotted, UNKNOWN, found.dotted, path, line, why="not a class or a function")


def _class_node(module: str, name: str) -> ast.ClassDef | None:
    source = _source(module)
    binding = source.bindings.get(name) if source else None
    return binding[1] if binding and binding[0] == "def" and isinstance(binding[1], ast.ClassDef) else None


@lru_cache(maxsize=None)
def _class_kind(module: str, name: str, depth: int = 0) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
    """(kind, why, hazards, offers) of the class `name` defined in `module` (the last two: mixins.py's)."""
    if f"{module}.{name}" in _ROOT:
        return MODULE, "", (), ()
    node = _class_node(module, name)
    if node is None or depth > _DEPTH:
        return UNKNOWN, f"{module}.{name} could not be read", (), ()
    unread, hazards, offered = [], list(_own_hazards(module, node)), mixins.offers(node)
    for base in node.bases:
        found = _expression(module, base)
        if found is None or found.name is None:
            unread.append(ast.unparse(base))
            continue
        if found.dotted in _ROOT:
            return MODULE, "", (), ()
        if found.module == "builtins":
            continue
        if found.node is None or not isinstance(found.node, ast.ClassDef):
            unread.append(ast.unparse(base))
            continue
        kind, _, inherited, more = _class_kind(found.module, found.name, depth + 1)
        if kind == MODULE:
            return MODULE, "", (), ()
        if kind == UNKNOWN:
            unread.append(ast.unparse(base))
        hazards.extend(h for h in inherited if h not in hazards)
        offered.extend(o for o in more if o not in offered)
    if unread:
        return UNKNOWN, f"its base {unread[0]} could not be read", tuple(hazards), tuple(offered)
    return CLASS, "", tuple(hazards), tuple(offered)


def _own_hazards(module: str, node: ast.ClassDef) -> list[str]:
    """What in the class itself stops nnx.Module from taking it as a base (mixins.hazards)."""
    source = _source(module)
    bindings = source.bindings if source is not None else {}
    torch = frozenset(local for local, binding in bindings.items()
                      if binding[0] in ("module", "from") and binding[1].partition(".")[0] == "torch")

    def metaclass_of(expression: ast.expr) -> str | None:
        found = _expression(module, expression)
        return found.dotted if found is not None else None

    return mixins.hazards(node, torch, metaclass_of)


@lru_cache(maxsize=None)
def _function_kind(module: str, name: str, depth: int = 0) -> tuple[str, str]:
    """FACTORY with what shows it (its return annotation, what it returns) or UNKNOWN with why.
    Conservative: every return must give a module, built by a module class or another factory."""
    source = _source(module)
    binding = source.bindings.get(name) if source else None
    function = binding[1] if binding and binding[0] == "def" else None
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or depth > 8:
        return UNKNOWN, "its definition could not be read"
    if function.returns is not None:
        found = _expression(module, function.returns)
        if found is not None and found.name is not None and _builds_module(found, depth):
            return FACTORY, f"it is annotated to return {ast.unparse(function.returns)}"
        return UNKNOWN, f"it is annotated to return {ast.unparse(function.returns)}, not an nn.Module"
    local = frozenset(_local_names(function))
    assigned = _assignments(function)
    returns = [r.value for r in _returns(function.body)]
    if not returns or any(r is None for r in returns):
        return UNKNOWN, "it does not always return a value"
    built = []
    for value in returns:
        calls = [value] if isinstance(value, ast.Call) else assigned.get(value.id, []) \
            if isinstance(value, ast.Name) else []
        if not calls or not all(isinstance(c, ast.Call) for c in calls):
            return UNKNOWN, f"it returns {ast.unparse(value)}, which porter cannot follow"
        for call in calls:
            found = _expression(module, call.func, local=local)
            if found is None or found.name is None or not _builds_module(found, depth):
                return UNKNOWN, f"it returns {ast.unparse(call.func)}(...), not shown to be an nn.Module"
            built.append(ast.unparse(call.func))
    return FACTORY, f"it returns {built[0]}(...)"


def _builds_module(found: _Found, depth: int) -> bool:
    """A module class (calling it builds one) or a factory."""
    if found.dotted in _ROOT:
        return True
    if isinstance(found.node, ast.ClassDef):
        return _class_kind(found.module, found.name)[0] == MODULE
    if isinstance(found.node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return _function_kind(found.module, found.name, depth + 1)[0] == FACTORY
    return False


def _local_names(function: ast.FunctionDef) -> set[str]:
    """Parameters and names assigned in the function (they shadow the module's)."""
    arguments = function.args
    names = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
    names |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
    for node in _own_nodes(function.body):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _assignments(function: ast.FunctionDef) -> dict[str, list[ast.expr | None]]:
    """name -> every value assigned to it; a name also bound another way (a loop, `with`, `+=`) gets a None too,
    which nothing follows."""
    values: dict[str, list] = {}
    plain = set()
    for node in _own_nodes(function.body):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values.setdefault(target.id, []).append(node.value)
                    plain.add(id(target))
    for node in _own_nodes(function.body):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and id(node) not in plain:
            values.setdefault(node.id, []).append(None)
    return values


def _returns(statements: list[ast.stmt]):
    for node in _own_nodes(statements):
        if isinstance(node, ast.Return):
            yield node


def _own_nodes(statements: list[ast.stmt]):
    """The nodes of these statements, not entering nested functions, classes or lambdas."""
    stack = list(reversed(statements))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(reversed(list(ast.iter_child_nodes(node))))


# ------------------------------------------------------------------------------------------ the user's tree
def in_tree(top: str, filename: str | None) -> bool:
    """Whether the top-level module `top` belongs to the tree of the file `filename`: a module or package
    beside the file, or beside one of the packages the file is in (`from pkg.models import Net` inside pkg).
    Such a name is converted with the tree, whatever sys.path holds."""
    if not filename:
        return False
    return _in_tree(top, os.path.dirname(os.path.abspath(filename)))


@lru_cache(maxsize=None)
def _in_tree(top: str, directory: str) -> bool:
    while True:
        if os.path.exists(os.path.join(directory, f"{top}.py")) or os.path.isdir(os.path.join(directory, top)):
            return True
        if not os.path.exists(os.path.join(directory, "__init__.py")):
            return False
        parent = os.path.dirname(directory)
        if parent == directory:
            return False
        directory = parent
