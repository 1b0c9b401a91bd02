"""Last pass: torch imports out (when nothing uses them any more), jax/flax
imports and the emitted helpers in."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re

import libcst as cst

from porter.convert import layer_functions
from porter.convert.context import ConversionContext, code_of
from porter.convert.passes.scope import local_names
from porter.convert.source_index import STATEMENT_TYPES, StatementCode, TriggerSet

# import statement -> what in the converted code needs it
NEEDED_IMPORTS = [
    ("import math", re.compile(r"\bmath\.")),
    ("import inspect", re.compile(r"\binspect\.")),  # porter/emitted.py's with_rngs_if_taken
    ("import typing", re.compile(r"\btyping\.")),
    ("from functools import partial", re.compile(r"\bpartial\(")),
    ("import functools", re.compile(r"\bfunctools\.")),  # porter/emitted_training.py's fast_partial
    ("import jax", re.compile(r"\bjax\.")),
    ("import jax.numpy as jnp", re.compile(r"\bjnp\.")),
    ("from flax import nnx", re.compile(r"\bnnx\.")),
    ("import optax", re.compile(r"\boptax\.")),
    ("import einops", re.compile(r"\beinops\.")),  # einops.layers.torch layers become einops functions
    ("import weakref", re.compile(r"\bweakref\.")),  # porter/emitted_training.py's schedulers
    ("import pickle", re.compile(r"\bpickle\.")),  # porter/emitted_training.py's checkpoints
    # what porter/emitted_distributed.py's helpers use
    ("import os", re.compile(r"\bos\.")),
    ("import numpy as np", re.compile(r"\bnp\.")),
    ("import orbax.checkpoint as ocp", re.compile(r"\bocp\.")),
    ("from jax.experimental import multihost_utils", re.compile(r"\bmultihost_utils\.")),
]


class FinalizeImports(cst.CSTTransformer):
    """Works on the module's top-level statements only (it never descends into them).

    `code` gives a top-level statement's code; the pipeline passes one that reads
    statements the rewrite left alone from the source text instead of generating them.
    """

    def __init__(self, ctx: ConversionContext, code: StatementCode | None = None, *,
                 helpers_after_new_imports: bool = False, helpers_from: str | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        # a tree's files import the helpers from one module of the output (porter/convert/shared_helpers.py):
        # the module to import them from (`porter_helpers`, `..porter_helpers`); None: pasted into the file
        self.helpers_from = helpers_from
        self.code = code or StatementCode(None)
        # notebooks: the helpers go right after the imports porter adds (in the cell that imported torch),
        # not after the file's leading import block (the first cell), which may run before jax is imported
        self.helpers_after_new_imports = helpers_after_new_imports

    def visit_Module(self, node: cst.Module) -> bool:
        return False  # all the work is in leave_Module, on the top-level statements

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        body = list(updated_node.body)
        candidates = set().union(*(_torch_bindings_of(stmt) for stmt in body))
        # a torch import binding an emitted helper's name (`from torch.optim.lr_scheduler import StepLR`)
        # goes: the converted code calls the helper
        used = _names_used(updated_node, candidates, self.code) - set(self.ctx.helpers)
        removed = {i for i, stmt in enumerate(body) if _torch_bindings_of(stmt) and not _torch_bindings_of(stmt) & used}
        first_torch = next((i for i, stmt in enumerate(body) if _torch_bindings_of(stmt)), None)
        insert_at = first_torch if first_torch is not None else _after_docstring_and_future(body)
        new_imports = self._imports_to_add(updated_node) + self._assumed_imports_still_used(updated_node)
        out = []
        imports_at = 0  # where the new imports went in `out`
        for i, stmt in enumerate(body):
            if i == insert_at:
                imports_at = len(out)
            if i == insert_at and new_imports:
                if i in removed:  # the new imports take the place (and spacing) of the torch import
                    new_imports[0] = new_imports[0].with_changes(leading_lines=stmt.leading_lines)
                out.extend(new_imports)
            if i not in removed:
                out.append(stmt)
        if insert_at >= len(body):
            out.extend(new_imports)
        after = imports_at + len(new_imports)  # a file that imported nothing: its first definition spaced from them
        if new_imports and first_torch is None and insert_at < len(body) and after < len(out) \
                and isinstance(out[after], (cst.FunctionDef, cst.ClassDef)) and not out[after].leading_lines:
            out[after] = out[after].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])
        helpers = self._helper_statements(updated_node.default_newline)
        if helpers:
            imported = self.helpers_from is not None  # one import statement, in a group of its own
            blank = [cst.EmptyLine()] if imported else [cst.EmptyLine(), cst.EmptyLine()]
            spaced = [h.with_changes(leading_lines=blank) for h in helpers]
            at = _after_imports(out, imports_at if self.helpers_after_new_imports else 0)
            # never above the imports porter adds (below a `try: ... except ImportError` that precedes the torch
            # import): a helper class's base (`class TorchSequential(nnx.Module)`) is read at definition
            at = max(at, imports_at + len(new_imports))
            if at < len(out) and len(out[at].leading_lines) < 2 and not imported:
                out[at] = out[at].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()])
            out[at:at] = spaced
        return updated_node.with_changes(body=out)

    def _helper_statements(self, newline: str) -> list[cst.BaseStatement]:
        """The helpers' definitions, or the import of them from the tree's helpers module."""
        if not self.ctx.helpers:
            return []
        if self.helpers_from is not None:
            return [cst.parse_statement(helpers_import(self.helpers_from, self.ctx.helpers))]
        return [_parsed_helper(src, newline) for src in helper_sources(self.ctx.helpers)]

    def _assumed_imports_still_used(self, module: cst.Module) -> list[cst.SimpleStatementLine]:
        """`import torch` for a conventional alias used but never imported (PT002: a star import's, a
        notebook's) that the converted code still uses: the references left are reported where they are,
        and without the import the converted file would not even import."""
        used = _names_used(module, set(self.ctx.assumed_imports), self.code)
        return [cst.parse_statement(f"import {qualified}" if name == qualified else f"import {qualified} as {name}")
                for name, qualified in sorted(self.ctx.assumed_imports.items(), key=lambda item: item[1]) if name in used]

    def _imports_to_add(self, module: cst.Module) -> list[cst.SimpleStatementLine]:
        code = self.code.module_code(module)
        if self.helpers_from is None:
            code += "\n".join(helper_sources(self.ctx.helpers))
        present = {code_of(s.body[0]) for s in module.body if _is_import(s)}
        return [_parsed_import(stmt) for stmt, pattern in NEEDED_IMPORTS
                if stmt not in present and _occurs(pattern, code)]


def _occurs(pattern: re.Pattern, code: str) -> bool:
    """`pattern.search(code)`, tried only where the text every match starts with occurs (`\\bnp\\.` at each 'np.',
    most of them in 'jnp.'): a regex beginning with `\\b` scans the whole file character by character."""
    text = _required_text(pattern)
    if not text:
        return pattern.search(code) is not None
    at = code.find(text)
    while at != -1:
        if pattern.match(code, at):  # (`\\b` still sees the character before `at`)
            return True
        at = code.find(text, at + 1)
    return False


@functools.cache
def _required_text(pattern: re.Pattern) -> str:
    """The text every match of a NEEDED_IMPORTS pattern starts with ('jnp.' for `\\bjnp\\.`), '' for a pattern of
    another shape."""
    body = pattern.pattern.removeprefix(r"\b")
    text = re.sub(r"\\(.)", r"\1", body)
    return text if re.escape(text) == body else ""


class _NameCollector(cst.CSTVisitor):
    """The names a module uses (imports aside, attribute names aside), the libcst way: the
    definition _collect_names below is held to (tests/test_convert_properties.py)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def visit_Import(self, node: cst.Import) -> bool:
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        return False

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)  # jax.nn.relu uses jax, not nn
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        for child in _read_outside(node):  # decorators, annotations, defaults: the enclosing scope's
            child.visit(self)
        inner = _NameCollector()  # `def f(tensor): tensor.dtype` uses its parameter, not torch.tensor
        node.body.visit(inner)
        self.names |= inner.names - local_names(node)
        return False

    def visit_Name(self, node: cst.Name) -> None:
        self.names.add(node.value)


def _names_used(module: cst.Module, candidates: set[str], code: StatementCode) -> set[str]:
    """Which of `candidates` the module uses as names, as _NameCollector counts them (imports
    aside, attribute names aside). Only statements whose text holds a candidate word are walked
    (a name cannot occur without its text), and inside them, statements left as they were in the
    source only when their code does."""
    if not candidates:
        return set()
    words = re.compile(r"(?<!\w)(?:" + "|".join(map(re.escape, sorted(candidates))) + r")(?!\w)")
    triggers = None
    if code.index is not None:
        triggers = TriggerSet(code.index)
        triggers.update(candidates)
    names: set[str] = set()
    for statement in module.body:
        if words.search(code(module, statement)):
            _collect_names(statement, names, triggers)
    return names & candidates


def _collect_names(node: cst.CSTNode, names: set[str], triggers: TriggerSet | None) -> None:
    """_NameCollector's walk without libcst's visitor machinery (which rebuilds every node)."""
    kind = type(node)
    if kind is cst.Name:
        names.add(node.value)
        return
    if kind is cst.Attribute:
        _collect_names(node.value, names, triggers)  # jax.nn.relu uses jax, not nn
        return
    if kind is cst.Import or kind is cst.ImportFrom:
        return
    if triggers is not None and kind in STATEMENT_TYPES and triggers.index.contains(node) \
            and not triggers.any_within(*triggers.index.span(node)):
        return  # as it was in the source, and no candidate name in its code
    if kind is cst.FunctionDef:  # the names its body binds are its own, not the module's
        for child in _read_outside(node):
            _collect_names(child, names, triggers)
        inner: set[str] = set()
        _collect_names(node.body, inner, triggers)
        names |= inner - local_names(node)
        return
    for name in _child_fields(kind):
        child = getattr(node, name)
        if isinstance(child, cst.CSTNode):
            _collect_names(child, names, triggers)
        elif isinstance(child, (list, tuple)):
            for item in child:
                if isinstance(item, cst.CSTNode):
                    _collect_names(item, names, triggers)


def _read_outside(node: cst.FunctionDef) -> list[cst.CSTNode]:
    """The parts of a function definition read in the enclosing scope: its name (as a use, as
    before), decorators, return annotation, and its parameters' annotations and defaults."""
    params = node.params
    every = [*params.posonly_params, *params.params, *params.kwonly_params,
             *(p for p in (params.star_arg, params.star_kwarg) if isinstance(p, cst.Param))]
    parts: list[cst.CSTNode | None] = [node.name, *node.decorators, node.returns]
    for param in every:
        parts += [param.annotation, param.default]
    return [part for part in parts if part is not None]


# fields that hold only whitespace, punctuation or strings, never a Name
_NO_NAMES = frozenset({"lpar", "rpar", "comma", "semicolon", "leading_lines", "lines_after_decorators", "header",
                       "footer", "newline", "trailing_whitespace", "colon", "equal", "dot", "star", "operator",
                       "asynchronous"})


@functools.cache
def _child_fields(kind: type) -> tuple[str, ...]:
    """Fields of a node type that can hold a Name (whitespace and punctuation cannot)."""
    return tuple(f.name for f in dataclasses.fields(kind)
                 if f.name not in _NO_NAMES and not f.name.startswith("whitespace"))


def _torch_bindings_of(stmt: cst.CSTNode) -> set[str]:
    if isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1:
        return _torch_bindings(stmt.body[0])
    return set()


def _torch_bindings(node: cst.CSTNode) -> set[str]:
    """Local names a torch import binds; empty for other statements."""
    if isinstance(node, cst.Import):
        names = set()
        for alias in node.names:
            dotted = code_of(alias.name)
            if dotted.split(".")[0] != "torch":
                return set()
            names.add(alias.asname.name.value if alias.asname else dotted.split(".")[0])
        return names
    if isinstance(node, cst.ImportFrom) and node.module is not None and not node.relative:
        module = code_of(node.module)
        if (module.split(".")[0] != "torch" and module != "einops.layers.torch") or isinstance(node.names, cst.ImportStar):
            return set()
        return {(a.asname.name.value if a.asname else a.name.value) for a in node.names}
    return set()


def _is_import(stmt) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and all(
        isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body)


def _is_docstring(stmt) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
            and isinstance(stmt.body[0], cst.Expr) and isinstance(stmt.body[0].value, cst.SimpleString))


def _after_docstring_and_future(body) -> int:
    i = 0
    if i < len(body) and _is_docstring(body[i]):
        i += 1
    while i < len(body) and _is_import(body[i]) and isinstance(body[i].body[0], cst.ImportFrom) \
            and body[i].body[0].module is not None and code_of(body[i].body[0].module) == "__future__":
        i += 1
    return i


def _after_imports(body, start: int = 0) -> int:
    """Index after the leading block of docstring and imports (from `start` on)."""
    i = start
    if i < len(body) and _is_docstring(body[i]):
        i += 1
    last = i
    while i < len(body):
        if _is_import(body[i]):
            last = i + 1
        elif not isinstance(body[i], cst.SimpleStatementLine) or not _is_docstring(body[i]):
            break
        i += 1
    return last


def helper_sources(names: list[str]) -> list[str]:
    """Source of the emitted helpers, dependencies first, each once."""
    ordered: list[str] = []

    def add(name: str) -> None:
        for dependency in _helper_dependencies(name):
            add(dependency)
        if name not in ordered:
            ordered.append(name)

    for name in names:
        add(name)
    return [_helper_source(name) for name in ordered]


def helpers_import(module: str, names: list[str]) -> str:
    """`from MODULE import a, b` (one name a line when that is long)."""
    line = f"from {module} import {', '.join(names)}\n"
    if len(line) <= 100:
        return line
    return f"from {module} import (\n" + "".join(f"    {name},\n" for name in names) + ")\n"


def helpers_module_source(names: list[str]) -> str:
    """A module holding the helpers `names` need (dependencies first), with their imports: what a tree's
    converted files import the helpers from instead of each holding a copy."""
    sources = helper_sources(names)
    body = "\n".join(sources)
    imports = [statement for statement, pattern in NEEDED_IMPORTS if pattern.search(body)]
    text = ('"""torch behaviour written with jax and flax: the helpers the converted files of this tree\n'
            'import (written by porter convert)."""\n\n' + "\n".join(imports) + "\n\n\n" + "\n\n".join(sources))
    ast.parse(text)
    return text


@functools.cache
def _parsed_helper(source: str, newline: str = "\n") -> cst.BaseStatement:
    """A helper's statement, parsed once per newline style (nodes are immutable: every converted
    file can share it). Its line ends are the file's (CRLF files get CRLF inside its docstrings too)."""
    return cst.parse_statement(source.replace("\n", newline) if newline != "\n" else source)


def _helper_dependencies(name: str) -> tuple[str, ...]:
    made = layer_functions.generated(name)  # a layer rule as a function (porter/convert/layer_functions.py)
    return made[1] if made is not None else _helper_module(name).DEPENDS.get(name, ())


@functools.cache
def _parsed_import(statement: str) -> cst.SimpleStatementLine:
    """An import of NEEDED_IMPORTS, parsed once (like _parsed_helper)."""
    return cst.parse_statement(statement)


@functools.cache
def _helper_source(name: str) -> str:
    made = layer_functions.generated(name)
    source = made[0] if made is not None else inspect.getsource(getattr(_helper_module(name), name))
    ast.parse(source)  # the emitted file must stay valid Python
    return source


def _helper_module(name: str):
    """porter/emitted.py, or porter/emitted_distributed.py for the distributed-training helpers
    (imported only then: it imports orbax). Imported on first use: they import jax, which a file
    that needs no helper (and a worker process converting such files) should not pay for."""
    from porter import emitted
    if name in emitted.DEPENDS:
        return emitted
    from porter import emitted_distributed
    return emitted_distributed
