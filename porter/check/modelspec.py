"""`FILE.py:Name` / `FILE.py:Name(arg, kw=2)` model specs, and importing a .py file by path.

The arguments are Python literals, each parsed with `ast.literal_eval`, or
calls of a name of the same file with such arguments (a config object:
`model.py:GPT(GPTConfig(n_layer=2, vocab_size=47))`), built from the file the
model comes from: the spec is data, never evaluated as code. (The file itself
is imported, so it runs: point porter only at model files you trust, as you
would `python`.)
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import inspect
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable


class ModelSpecError(ValueError):
    """A malformed spec, a file that cannot be imported, or a model that cannot be built."""


@dataclass(frozen=True)
class Construct:
    """An argument `Name(args)`: Name looked up in the model's file when the model is built."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"


@dataclass(frozen=True)
class ModelSpec:
    path: Path
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    has_call: bool = False  # "Name(...)" was written (even "Name()")

    def call_text(self, extra: str = "") -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        if extra:
            parts.append(extra)
        return f"{self.name}({', '.join(parts)})"


_SPEC = re.compile(r"^(?P<file>.+?\.py):(?P<rest>.+)$", re.DOTALL)


def parse_model_spec(text: str) -> ModelSpec:
    """'models/net.py:Net(3, hidden=64)' -> ModelSpec(Path('models/net.py'), 'Net', (3,), {'hidden': 64})."""
    match = _SPEC.match(text.strip())
    if not match:
        raise ModelSpecError(f"model spec {text!r}: expected FILE.py:ClassName or FILE.py:ClassName(args)")
    path, rest = Path(match["file"]), match["rest"].strip()
    try:
        node = ast.parse(rest, mode="eval").body
    except SyntaxError:
        raise ModelSpecError(f"model spec {text!r}: {rest!r} is not Name or Name(literal args)") from None
    if isinstance(node, ast.Name):
        return ModelSpec(path, node.id)
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        raise ModelSpecError(f"model spec {text!r}: {rest!r} is not Name or Name(literal args)")
    args, kwargs = [], {}
    for arg in node.args:
        if isinstance(arg, ast.Starred):
            raise ModelSpecError(f"model spec {text!r}: *args are not supported; write the arguments out")
        args.append(_literal(arg, text))
    for kw in node.keywords:
        if kw.arg is None:
            raise ModelSpecError(f"model spec {text!r}: **kwargs are not supported; write the arguments out")
        kwargs[kw.arg] = _literal(kw.value, text)
    return ModelSpec(path, node.func.id, tuple(args), kwargs, has_call=True)


def _literal(node: ast.expr, text: str) -> Any:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise ModelSpecError(f"model spec {text!r}: write the arguments of {node.func.id} out")
        return Construct(node.func.id, tuple(_literal(a, text) for a in node.args),
                         {k.arg: _literal(k.value, text) for k in node.keywords})
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ModelSpecError(f"model spec {text!r}: argument {ast.unparse(node)!r} is not a Python literal "
                             f"(numbers, strings, tuples, lists, dicts, True/False/None) or a call of a "
                             f"name of the model's file with such arguments") from None


def undefined_conventional_names(source: str, conventional: dict[str, Any]) -> list[str]:
    """Names of `conventional` the source uses (loads) but never binds at any level."""
    tree = ast.parse(source)
    bound: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                bound.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
    return [name for name in conventional if name in used and name not in bound and not hasattr(builtins, name)]


def import_file(path: str | Path, *, preseed: dict[str, Any] | None = None,
                warn: Callable[[str], None] | None = None) -> ModuleType:
    """Import a .py file by path as a fresh module (its directory importable while it runs).

    `preseed`: names to provide in the module's namespace *only if the file
    uses them without defining them* (e.g. `F` for torch.nn.functional in a
    snippet that never imported it); each one provided is reported to `warn`.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelSpecError(f"{path}: no such file")
    try:
        source = path.read_text(encoding="utf-8")
        compile(source, str(path), "exec", dont_inherit=True, flags=ast.PyCF_ONLY_AST)
    except SyntaxError as exc:
        raise ModelSpecError(f"{path}:{exc.lineno}: syntax error: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelSpecError(f"{path}: cannot read: {exc}") from None
    module_name = f"_porter_user_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelSpecError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    if preseed:
        for name in undefined_conventional_names(source, preseed):
            module.__dict__[name] = preseed[name]
            if warn:
                target = getattr(preseed[name], "__name__", str(preseed[name]))
                statement = f"import {target}" if target == name else f"import {target} as {name}"
                warn(f"{path.name} uses {name!r} without importing it; running it as if it began "
                     f"with '{statement}'")
    directory = str(path.resolve().parent)
    _forget_other_helpers(directory)
    sys.modules[module_name] = module
    sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file failed while importing: one line, with its line number
        sys.modules.pop(module_name, None)
        raise ModelSpecError(f"importing {path} failed: {_where(exc, path)}{type(exc).__name__}: {exc}") from exc
    finally:
        try:
            sys.path.remove(directory)
        except ValueError:
            pass
    return module


def _forget_other_helpers(directory: str) -> None:
    """A converted tree's files import their helpers as `porter_helpers` (porter/convert/shared_helpers.py):
    one imported earlier from another directory (another tree) is not this file's."""
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None)
        if name.split(".")[0].startswith("porter_helpers") and "." not in name and where \
                and str(Path(where).resolve().parent) != directory:
            del sys.modules[name]


def _where(exc: BaseException, path: Path) -> str:
    tb, line = exc.__traceback__, None
    resolved = str(path.resolve())
    while tb is not None:
        if str(Path(tb.tb_frame.f_code.co_filename).resolve()) == resolved:
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"line {line}: " if line else ""


def takes_keyword(function: Callable, name: str) -> bool:
    """Whether `function(..., name=...)` is accepted (a parameter of that name, or **kwargs); True when
    the signature cannot be read."""
    if isinstance(function, type):  # nnx.Module's metaclass __call__ takes anything: its __init__ says
        function = function.__init__
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def build_model(spec: ModelSpec, *, module: ModuleType | None = None, args: tuple[Any, ...] | None = None,
                kwargs: dict[str, Any] | None = None, extra_kwargs: dict[str, Any] | None = None,
                preseed: dict[str, Any] | None = None, warn: Callable[[str], None] | None = None) -> Any:
    """Import spec.path (unless `module` is given) and call spec.name(*args, **kwargs, **extra_kwargs).

    args/kwargs default to the spec's own; extra_kwargs (e.g. rngs=) are added.
    """
    module = module or import_file(spec.path, preseed=preseed, warn=warn)
    cls = getattr(module, spec.name, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and v.__module__ == module.__name__)
        raise ModelSpecError(f"{spec.path}: no {spec.name!r} in the file (classes there: {', '.join(found) or 'none'})")
    if not callable(cls):
        raise ModelSpecError(f"{spec.path}: {spec.name} is not a class or function")
    call_args = spec.args if args is None else args
    extra = dict(extra_kwargs or {})
    if "rngs" in extra and not takes_keyword(cls, "rngs"):
        del extra["rngs"]  # a converted module class that builds nothing random takes no rngs
    call_kwargs = {**(spec.kwargs if kwargs is None else kwargs), **extra}
    call_args = tuple(_construct(a, module, spec) for a in call_args)
    call_kwargs = {k: v if k == "rngs" else _construct(v, module, spec) for k, v in call_kwargs.items()}
    try:
        return cls(*call_args, **call_kwargs)
    except Exception as exc:
        shown = ", ".join([*map(repr, call_args), *(f"{k}=..." if k == "rngs" else f"{k}={v!r}"
                                                    for k, v in call_kwargs.items())])
        raise ModelSpecError(f"building {spec.name}({shown}) failed: {_where(exc, spec.path)}"
                             f"{type(exc).__name__}: {exc}") from exc


def _construct(value: Any, module: ModuleType, spec: ModelSpec) -> Any:
    """`value` with every Construct built from `module`'s names (innermost first)."""
    if not isinstance(value, Construct):
        return value
    function = getattr(module, value.name, None)
    if not callable(function):
        raise ModelSpecError(f"{spec.path}: the argument {value!r} is not a Python literal nor a call of a "
                             f"class or function of the file")
    args = [_construct(a, module, spec) for a in value.args]
    kwargs = {k: _construct(v, module, spec) for k, v in value.kwargs.items()}
    try:
        return function(*args, **kwargs)
    except Exception as exc:
        raise ModelSpecError(f"building the argument {value!r} failed: {_where(exc, spec.path)}"
                             f"{type(exc).__name__}: {exc}") from exc
