"""Whether a base of a module class that is not an nn.Module (a mixin) works on the converted nnx.Module.

Model packages add behaviour to their modules through plain classes: a model hub's
(`PyTorchModelHubMixin`: `from_pretrained`, `save_pretrained`), a config holder, a `describe()`.
Such a base stays a base of the nnx.Module where nothing in it gets in nnx's way, read from its source:

- a `__new__` doing more than `return super().__new__(cls)`: nnx builds the instance and sets its own state
  up before `__init__`; attributes a `__new__` sets before that fail (`'Unet' object has no attribute
  '_pytree__state'`), as huggingface_hub's mixin, which records the init arguments there, does;
- a metaclass of its own (nnx.Module has one), or an `__init_subclass__` not calling super()'s;
- torch calls, or nn.Module's methods on `self` (`self.state_dict()`, `self.parameters()`): they need a
  torch module, which the converted class is not.

Where one of these holds, the base goes from the converted class's bases (passes/outside_code.py), with a warning
naming what the class loses: the base's public methods.
"""

from __future__ import annotations

import ast
import os

# nn.Module's methods that an nnx.Module does not have (eval/train it has)
TORCH_MODULE_METHODS = frozenset({
    "parameters", "named_parameters", "buffers", "named_buffers", "children", "named_children", "modules",
    "named_modules", "state_dict", "load_state_dict", "register_buffer", "register_parameter",
    "register_module", "add_module", "apply", "to", "cuda", "cpu", "half", "float", "double", "bfloat16",
    "zero_grad", "requires_grad_", "get_submodule", "get_parameter", "get_buffer", "register_forward_hook",
    "register_forward_pre_hook", "register_full_backward_hook", "share_memory", "type",
})
_HARMLESS_METACLASSES = ("abc.ABCMeta", "builtins.type")


def hazards(node: ast.ClassDef, torch_names: frozenset[str], metaclass_of=None) -> list[str]:
    """What in the class `node` (its own body, not its bases) stops it from working as a base of an
    nnx.Module. `torch_names`: the names its module binds to torch or a torch module; `metaclass_of`:
    the dotted name a metaclass expression stands for, where the caller can tell (harmless ones pass)."""
    found = []
    for keyword in node.keywords:
        if keyword.arg == "metaclass" and (metaclass_of is None or
                                           metaclass_of(keyword.value) not in _HARMLESS_METACLASSES):
            found.append(f"metaclass {ast.unparse(keyword.value)} (nnx.Module has its own)")
    for method in _methods(node):
        if method.name == "__new__" and not _plain_new(method):
            found.append("__new__ sets attributes before nnx.Module has set the instance up" if _sets_attributes(method)
                         else "__new__ does more than super().__new__(cls), which nnx.Module does not expect")
        elif method.name == "__init_subclass__" and not _calls_super(method, "__init_subclass__"):
            found.append("__init_subclass__ does not call super().__init_subclass__ (nnx.Module's own would not run)")
    torch_uses = sorted({f"{method.name} calls {use}" for method in _methods(node)
                         for use in _torch_uses(method, torch_names)})
    if torch_uses:
        found.append(f"{'; '.join(torch_uses[:3])}, which need a torch module")
    return found


def offers(node: ast.ClassDef) -> list[str]:
    """The public methods (class and static ones too) and properties the class defines."""
    return [method.name for method in _methods(node) if not method.name.startswith("_")]


def torch_names(body: list[ast.stmt]) -> frozenset[str]:
    """Names a module's top-level imports bind to torch or its modules (`torch`, `nn`, `F`, `save`)."""
    names = set()
    for statement in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(statement, ast.Import):
            names |= {alias.asname or alias.name.partition(".")[0] for alias in statement.names
                      if alias.name.partition(".")[0] == "torch"}
        elif isinstance(statement, ast.ImportFrom) and not statement.level \
                and (statement.module or "").partition(".")[0] == "torch":
            names |= {alias.asname or alias.name for alias in statement.names if alias.name != "*"}
    return frozenset(names)


def _methods(node: ast.ClassDef):
    return [s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _plain_new(method: ast.FunctionDef) -> bool:
    """`def __new__(cls, *args, **kwargs): return super().__new__(cls)` (a docstring allowed)."""
    body = [s for s in method.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, ast.Call) \
        and _is_super_call(body[0].value.func, "__new__")


def _sets_attributes(function: ast.FunctionDef) -> bool:
    for node in ast.walk(function):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
            if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        if any(isinstance(t, ast.Attribute) for t in targets):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            return True
    return False


def _calls_super(function: ast.FunctionDef, method: str) -> bool:
    return any(_is_super_call(node, method) for node in ast.walk(function))


def _is_super_call(node: ast.AST, method: str) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == method and isinstance(node.value, ast.Call) \
        and isinstance(node.value.func, ast.Name) and node.value.func.id == "super"


def _torch_uses(method: ast.FunctionDef, torch_names: frozenset[str]):
    """`torch.save(...)`, `nn.utils...`, `self.state_dict()`: what in the method needs a torch module."""
    shadowed = {a.arg for a in ast.walk(method.args) if isinstance(a, ast.arg)}
    first = method.args.posonlyargs[:1] or method.args.args[:1]
    receiver = first[0].arg if first and not _is_static(method) else None
    for node in ast.walk(method):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                    and func.value.id == receiver and func.attr in TORCH_MODULE_METHODS:
                yield f"{receiver}.{func.attr}()"
            root = func
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in torch_names and root.id not in shadowed:
                yield f"{ast.unparse(func)}()"


def _is_static(method: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in method.decorator_list)


# ------------------------------------------------------------------------------------------ classes of the tree
def tree_class(filename: str | None, source: str, name: str, dots: int = 0, module: str = "",
               depth: int = 0, outside_class=None) -> tuple[list[str], list[str]] | None:
    """(hazards, offers) of the plain class `name` of the tree: defined in the file (`source`, at
    `filename`) when `module` is "", else imported from it (`from .hub import HubMixin`: dots 1, module
    "hub"), found beside the file the way in_tree finds a module. None where it is not such a class as far
    as porter can read: not found, or a base porter cannot follow (which may be an nn.Module).
    `outside_class(dotted)`: (hazards, offers) of a plain class of an installed package, None where it is not
    one (smp's `class SMPHubMixin(PyTorchModelHubMixin)`, huggingface_hub's mixin setting attributes in
    `__new__`)."""
    if module:
        path = _tree_file(filename, dots, module)
        if path is None:
            return outside_class(f"{module}.{name}") if outside_class is not None and not dots else None
        try:
            with open(path, "rb") as file:
                source = file.read().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        filename = path
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    return _plain_class(tree, name, filename, depth, outside_class)


def _plain_class(tree: ast.Module, name: str, filename: str | None, depth: int, outside_class):
    classes = {s.name: s for s in tree.body if isinstance(s, ast.ClassDef)}
    node = classes.get(name)
    if node is None or depth > 8:
        imported = _imported_from(tree, name)
        return tree_class(filename, "", imported[2], imported[0], imported[1], depth + 1, outside_class) \
            if imported is not None and depth <= 8 else None
    found, offered = hazards(node, torch_names(tree.body), _metaclass), offers(node)
    for base in node.bases:
        text = ast.unparse(base)
        if text in ("object", "ABC", "abc.ABC"):
            continue
        inherited = _plain_class(tree, text, filename, depth + 1, outside_class) if isinstance(base, ast.Name) \
            else None
        if inherited is None:
            return None
        found += [h for h in inherited[0] if h not in found]
        offered += [o for o in inherited[1] if o not in offered]
    return found, offered


def _metaclass(expression: ast.expr) -> str | None:
    return {"ABCMeta": "abc.ABCMeta", "abc.ABCMeta": "abc.ABCMeta", "type": "builtins.type"}.get(
        ast.unparse(expression))


def _imported_from(tree: ast.Module, name: str) -> tuple[int, str, str] | None:
    """(dots, module, name there) of a top-level `from ... import name`."""
    for statement in tree.body:
        if isinstance(statement, ast.ImportFrom) and statement.module:
            for alias in statement.names:
                if (alias.asname or alias.name) == name:
                    return statement.level, statement.module, alias.name
    return None


def _tree_file(filename: str | None, dots: int, module: str) -> str | None:
    """The file of the tree's module `module` (relative with `dots`), seen from `filename`."""
    if not filename:
        return None
    directory = os.path.dirname(os.path.abspath(filename))
    parts = module.split(".")
    if dots:
        for _ in range(dots - 1):
            directory = os.path.dirname(directory)
        return _module_file(directory, parts)
    while True:  # an absolute import of the tree: beside the file, or beside a package it is in
        found = _module_file(directory, parts)
        if found is not None or not os.path.exists(os.path.join(directory, "__init__.py")):
            return found
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _module_file(directory: str, parts: list[str]) -> str | None:
    base = os.path.join(directory, *parts)
    for candidate in (f"{base}.py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None
