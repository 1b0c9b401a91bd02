"""Converts one file: parse, analyse, rewrite, fix imports, check what is left.

The rewrite runs as one traversal over the original tree, so every diagnostic and change carries the line
and column of the user's original code: the concerns listed in CONCERNS (passes/concerns.py), dispatched in
that order, sharing the scope (where the traversal is: passes/scope.py). Then two checks read
the result: the output gate (output_gate.py) makes sure what comes out compiles, and the residual check
(passes/residual.py) reports what still means torch as an error.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import libcst as cst

from porter.convert.context import CONVENTIONAL_ALIASES, ConversionContext
from porter.convert.diagnostics import Change, Diagnostic, Severity, diagnostic
from porter.convert.passes.analyze import Analyze
from porter.convert.passes.concerns import Rewrite
from porter.convert.passes.imports import FinalizeImports
from porter.convert.passes.distributed import Distributed
from porter.convert.passes.calls import Calls
from porter.convert.passes.feature_probes import FeatureProbes
from porter.convert.passes.parameter_groups import ParameterGroups
from porter.convert.passes.method_keys import MethodKeys
from porter.convert.passes.decode_loops import DecodeLoops
from porter.convert.passes.backend_flags import BackendFlags
from porter.convert.passes.modules import ModuleStructure
from porter.convert.passes.outside_code import OutsideCode
from porter.convert.passes.scope import ScopedTransformer
from porter.convert.passes.training import TrainingLoops
from porter.convert.passes.weight_initialisation import WeightInitialisation
from porter.convert.passes.weight_tying import WeightTying
from porter.convert.passes import residual
from porter.convert.passes import outside_classes
from porter.convert.passes.random_keys import seed_global_rngs
from porter.convert import output_gate, rngs_free, traverse
from porter.convert.keyword_helpers import keyword_helpers
from porter.convert.nesting import too_deep
from porter.convert.source_index import Prefilter, SourceIndex, StatementCode
from porter.rules.loader import load_rules

# Without one of these identifiers a file cannot import or use torch: it comes out unchanged.
_TORCH_WORDS = re.compile(r"(?<!\w)(?:" + "|".join(sorted(CONVENTIONAL_ALIASES)) + r")(?!\w)")

# the rewrite (passes/concerns.py): its concerns, outermost first, each wrapping the ones after it; all share
# the scope (passes/scope.py: where the traversal is), the traversal's innermost layer
CONCERNS = (Distributed, TrainingLoops, WeightInitialisation, WeightTying, FeatureProbes, ParameterGroups,
            DecodeLoops, MethodKeys, BackendFlags, OutsideCode, ModuleStructure, Calls)

FromImports = list[tuple[int, str, str, str]]  # (dots, module, name, local name), as Conversion.imports
Known = dict[str, str] | Callable[[FromImports], dict[str, str]]  # see convert_in_tree


@dataclass
class Conversion:
    """The result of converting one file (contract: .code and .diagnostics)."""

    code: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    filename: str | None = None
    # for a tree (porter/convert/tree.py): what this file defines that others may construct
    # (name -> "module" for nn.Module subclasses, "factory" for functions that build layers), and its
    # `from X import Y [as Z]` statements at the top level, as (dots, module, name, local name), and its
    # `import X [as Z]` ones as (0, X, "", local name)
    exports: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    imports: list[tuple[int, str, str, str]] = field(default_factory=list, repr=False, compare=False)
    # the emitted helpers the code imports from the tree's helpers module (convert_in_tree's helpers_from)
    helpers: list[str] = field(default_factory=list, repr=False, compare=False)
    # (callee as written, position or keyword) of its calls handing a class to a function maybe of another file
    # of the tree (ConversionContext.handed_out)
    handed_out: list[tuple[str, int | str]] = field(default_factory=list, repr=False, compare=False)

    @property
    def failed(self) -> bool:
        """True when the file could not be converted at all (nothing to write)."""
        return any(d.code in ("PT001", "PT034") for d in self.diagnostics)

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.diagnostics)


def convert_source(source: str, *, filename: str | None = None) -> Conversion:
    """Converts PyTorch source code to Flax NNX source code."""
    with _no_cyclic_gc(), _recursion_room():
        return _convert(source, filename, fast=True)


def convert_in_tree(source: str, *, filename: str | None = None, known: Known | None = None,
                    notebook: bool = False, helpers_from: str | None = None,
                    keep_rngs: frozenset[str] = frozenset(),
                    handed_in: frozenset[tuple[str, int | str]] = frozenset()) -> Conversion:
    """convert_source for a file of a tree: `known` names what this file imports from the others of
    the tree that are nn.Module subclasses ("module") or layer factories ("factory"), so that
    `Block(d)` gets its rngs as it would were Block defined here. It may be a function of the file's
    `from ... import` statements (Conversion.imports), called once they are parsed. `helpers_from`: the
    module of the output the emitted helpers are imported from (`porter_helpers`, `..porter_helpers`)
    instead of being pasted into the file (Conversion.helpers lists them). `keep_rngs`: module classes of this
    file that take rngs even if they draw nothing (another file of the tree passes them as a value, to be
    called with rngs=: porter/convert/rngs_free.py). `handed_in`: (function of this file, position or keyword)
    where another file hands it a class (porter/convert/registries.py)."""
    with _no_cyclic_gc(), _recursion_room():
        return _convert(source, filename, fast=True, notebook=notebook, known=known, helpers_from=helpers_from,
                        keep_rngs=keep_rngs, handed_in=handed_in)


@contextlib.contextmanager
def _no_cyclic_gc():
    """The cyclic garbage collector off while one file converts: the syntax trees are large and
    acyclic (reference counting frees them), and every collection the conversion's allocations would
    trigger walks all of them again (a quarter of the time). Cycles made meanwhile wait for the next
    collection after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def _recursion_room(frames: int = 10_000):
    """Python's recursion limit raised while one file converts: libcst and the passes recurse
    about 7 frames for each level of nested brackets (the default 1,000 frames end at ~140 levels).
    Within nesting's limits (checked first) 10,000 is ample: 1,000 nested calls or a 3,000-term sum
    convert; 20,000 frames were measured to fit the C stack."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, frames))
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def _convert(source: str, filename: str | None, *, fast: bool, notebook: bool = False,
             known: Known | None = None, helpers_from: str | None = None,
             keep_rngs: frozenset[str] = frozenset(), handed_in: frozenset | None = None) -> Conversion:
    """fast=False is the reference the tests hold the fast path to: every statement visited,
    every statement generated, no text prefilter (in the rewrite and the residual check). The output
    must be identical."""
    deep = too_deep(source)  # before libcst, whose parser would crash the process on it
    if deep:
        return Conversion(source, [diagnostic("PT034", *deep, filename)], filename=filename)
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        line, col, message = _syntax_error(source, exc)
        return Conversion(source, [diagnostic("PT001", line, col, message, filename)], filename=filename)
    imports = _from_imports(module)
    if callable(known):
        known = known(imports)
    if fast and not known and not handed_in and not _TORCH_WORDS.search(source):  # no torch name, no module class
        return Conversion(source, [], filename=filename, imports=imports)
    ctx = ConversionContext(rules=load_rules(), filename=filename)
    if handed_in is not None:  # a file of a tree
        ctx.handed_in, ctx.handed_out = handed_in, set()
    ctx.keyword_helpers = keyword_helpers(module)
    _learn(ctx, known or {})
    index = SourceIndex(module)  # positions of the original nodes, for both passes
    analyze = Analyze(ctx, index)
    traverse.visit(module, analyze, Prefilter(index, analyze) if fast else None)
    ctx.rngs_free_classes |= rngs_free.find(module, ctx, source, keep_rngs)
    outside_classes.check(module, ctx, index)  # classes of installed packages in module classes
    exports = _exports(module, ctx)
    handed_out = sorted(ctx.handed_out or (), key=str)
    if not ctx.torch_aliases and not known and not ctx.handed_classes:  # no torch here, no module class of the tree
        return Conversion(source, ctx.diagnostics, filename=filename, exports=exports, imports=imports,  # used
                          handed_out=handed_out)
    scope = ScopedTransformer(ctx)
    rewrite = Rewrite(scope, [concern(scope) for concern in CONCERNS])
    rewrite.attach(index)
    # the reference mode visits every node with porter's engine too: the residual check finds where a node was
    # by its identity, which libcst's engine does not keep (it rebuilds every node); the engine's equality with
    # libcst's is tests/test_convert_properties.py's test_the_traversal_engine_visits_like_libcst
    rewritten = traverse.visit(module, rewrite, Prefilter(index, rewrite) if fast else None)
    rewrite.close()  # what the concerns hold goes now, not at the next cyclic collection (passes/concerns.py)
    missed = rngs_free.still_random(rewritten, ctx)
    if missed:  # a class the analysis found rngs-free draws after all: again, with it taking rngs
        ctx.release()
        return _convert(source, filename, fast=fast, notebook=notebook, known=known, helpers_from=helpers_from,
                        keep_rngs=keep_rngs | missed, handed_in=handed_in)
    rewritten = seed_global_rngs(rewritten, ctx)
    statement_code = StatementCode(index if fast else None)

    def finish(tree: cst.Module) -> str:
        final = tree.visit(FinalizeImports(ctx, statement_code, helpers_after_new_imports=notebook,
                                           helpers_from=helpers_from))
        return statement_code.module_code(final) if fast else final.code

    residual.check(ctx, index, rewritten, fast)  # the import pass reports nothing: every diagnostic is in
    # last: a statement the gate puts back takes what was reported inside it (the residual's PT040 too) along
    code = output_gate.gate(source, rewritten, finish, ctx, index, notebook=notebook)  # it compiles
    diagnostics = sorted(ctx.diagnostics, key=lambda d: (d.line, d.col, d.code))
    changes = sorted(ctx.changes, key=lambda c: (c.line, c.col))
    helpers = list(ctx.helpers) if helpers_from is not None and code is not source else []
    ctx.release()  # (context.py: why)
    return Conversion(code, diagnostics, changes, filename, exports, imports, helpers, handed_out)


def analyze_exports(module: cst.Module, filename: str | None, known: dict[str, str]) -> dict[str, str]:
    """Conversion.exports from the analysis alone: for a file that a script converted on its own
    imports from, read but not converted (porter/convert/siblings.py)."""
    ctx = ConversionContext(rules=load_rules(), filename=filename)
    ctx.keyword_helpers = keyword_helpers(module)
    _learn(ctx, known)
    index = SourceIndex(module)
    analyze = Analyze(ctx, index)
    traverse.visit(module, analyze, Prefilter(index, analyze))
    ctx.rngs_free_classes |= rngs_free.find(module, ctx, module.code)
    return _exports(module, ctx)


def _learn(ctx: ConversionContext, known: dict[str, str]) -> None:
    """What other files define: module classes (taking rngs or not) and layer factories."""
    for name, kind in known.items():
        (ctx.module_classes if kind in ("module", "plain-module") else ctx.rngs_functions).add(name)
        if kind == "plain-module":
            ctx.rngs_free_classes.add(name)


def _from_imports(module: cst.Module) -> list[tuple[int, str, str, str]]:
    found = []
    for statement in module.body:
        if not isinstance(statement, cst.SimpleStatementLine):
            continue
        for small in statement.body:
            if isinstance(small, cst.Import):  # import pkg.models as m: (0, "pkg.models", "", "m")
                for alias in small.names:
                    where = cst.Module([]).code_for_node(alias.name)
                    if alias.asname and isinstance(alias.asname.name, cst.Name):
                        found.append((0, where, "", alias.asname.name.value))
                    else:  # import pkg.models: pkg.models.Net(...)
                        found.append((0, where, "", where))
            if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
                where = cst.Module([]).code_for_node(small.module) if small.module is not None else ""
                for alias in small.names:
                    if isinstance(alias.name, cst.Name):
                        local = alias.asname.name.value if alias.asname and isinstance(alias.asname.name, cst.Name) \
                            else alias.name.value
                        found.append((len(small.relative), where, alias.name.value, local))
    return found


def _exports(module: cst.Module, ctx: ConversionContext) -> dict[str, str]:
    """The top-level classes that are nn.Module subclasses and the top-level layer factories."""
    exports = {}
    for statement in module.body:
        if isinstance(statement, cst.ClassDef) and statement.name.value in ctx.module_classes:
            # "plain-module": a module class that takes no rngs (porter/convert/rngs_free.py)
            exports[statement.name.value] = "plain-module" if statement.name.value in ctx.rngs_free_classes \
                else "module"
        elif isinstance(statement, cst.FunctionDef) and statement.name.value in ctx.rngs_functions:
            exports[statement.name.value] = "factory"
    return exports


def _syntax_error(source: str, exc: cst.ParserSyntaxError) -> tuple[int, int, str]:
    """Python's own message and position where it has one (users know those), else libcst's."""
    try:
        compile(source, "<input>", "exec", dont_inherit=True)
    except SyntaxError as err:
        return err.lineno or exc.raw_line, err.offset or 1, f"syntax error: {err.msg}"
    return exc.raw_line, exc.raw_column + 1, f"syntax error: {exc.message}"


def convert_file(path: Path, output: Path | None = None, *, force: bool = False) -> Conversion:
    """Converts `path`; writes the result atomically to `output` unless the input fails to parse."""
    source = path.read_text(encoding="utf-8")
    conversion = convert_source(source, filename=str(path))
    if output is not None and not conversion.failed:
        if output.exists() and not force:
            raise FileExistsError(f"{output} exists; pass --force to overwrite it")
        write_atomically(output, conversion.code)
    return conversion


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
