"""The output gate: every file porter writes compiles.

Runs after the rewrite, on its result. The converted code is compiled once
(`compile()` is the judge: libcst can print code that its own grammar accepts
and CPython does not, and the reverse). Only when that fails does the gate look
for the statements to blame: it compiles the rewritten tree, finds the
innermost statement the rewrite replaced around the line Python names, and
puts the original back: a simple statement whole, a compound statement's
header alone (`def`, `class`, `if`, `for`, `with` ... line) when the error is
in it, else the whole compound statement. Each statement put back is an error
(PT041) at its original position, and what the rewrite reported inside it goes.
When that does not end in code that compiles, the whole file is kept as it was,
with one PT041.

The rewrite (porter/convert/passes/scope.py) records which original statement
each replaced statement stands for: ConversionContext.rewritten_statements.
"""

from __future__ import annotations

import ast
import warnings
from typing import Callable

import libcst as cst

from porter.convert.context import ConversionContext
from porter.convert.source_index import STATEMENT_TYPES, SourceIndex
from porter.convert import traverse

_BLOCK_FIELDS = ("body", "orelse", "handlers", "finalbody")  # what a compound statement's header is not


def compile_error(code: str, filename: str, *, notebook: bool = False) -> SyntaxError | None:
    """Why Python will not compile `code`, or None when it does."""
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if notebook else 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning (`x is 1`, "\d"): the user's, not ours
            compile(code, filename, "exec", flags, dont_inherit=True)
    except SyntaxError as err:  # IndentationError and TabError included
        return err
    except (ValueError, RecursionError, MemoryError) as err:  # null bytes, nesting too deep
        return SyntaxError(str(err))
    return None


def gate(source: str, rewritten: cst.Module, finish: Callable[[cst.Module], str], ctx: ConversionContext,
         index: SourceIndex, *, notebook: bool = False) -> str:
    """The code to write: `finish(rewritten)` (the converted file's text) when it compiles, else that of
    the rewritten tree with the statements that broke it put back as they were, else `source` itself.
    Reports PT041 in ctx, and drops what was reported and recorded inside what it put back."""
    filename = ctx.filename or "<converted>"
    code = finish(rewritten)
    error = compile_error(code, filename, notebook=notebook)
    if error is None or compile_error(source, filename, notebook=notebook) is not None:
        return code  # compiles; or the input itself does not (nothing porter writes can be better)
    repaired = _put_back_statements(rewritten, ctx, index, notebook=notebook)
    if repaired is not None:
        code = finish(repaired)
        final_error = compile_error(code, filename, notebook=notebook)
        if final_error is None:
            return code
        error = final_error
    ctx.diagnostics[:] = []
    ctx.changes[:] = []
    ctx.report("PT041", 1, 1, f"the converted file did not compile ({_describe(error)}); "
                              "the whole file is kept as it was")
    return source


def _describe(error: SyntaxError) -> str:
    return f"{error.msg}, line {error.lineno} of the converted code" if error.lineno else str(error.msg)


def _put_back_statements(module: cst.Module, ctx: ConversionContext, index: SourceIndex, *,
                         notebook: bool) -> cst.Module | None:
    """`module` with original statements put back until it compiles; None if that does not get there."""
    origins = dict(ctx.rewritten_statements)
    for _ in range(2 * len(origins) + 1):  # each round reverts a replaced statement or a header: it ends
        positions = SourceIndex(module)
        error = compile_error(positions.text, ctx.filename or "<converted>", notebook=notebook)
        if error is None:
            return module
        culprit = _culprit(module, positions, error.lineno, origins) if error.lineno else None
        if culprit is None:
            return None
        node, original, header_only = culprit
        module = _revert(module, node, original, header_only, origins)
        _report(ctx, index, original, header_only, error)
    return None


def _culprit(module: cst.Module, positions: SourceIndex, line: int, origins):
    """(replaced statement, its original, header only?) to blame for an error at `line`: the innermost
    replaced statement around it (an inserted statement counts for the replaced one holding it), else the
    last replaced statement before it (a statement left open shows on a later line)."""
    statements = traverse.find_all(module, tuple(STATEMENT_TYPES))  # outer before inner
    spans = {id(s): _lines(s, positions) for s in statements}
    around = [(order, s) for order, s in enumerate(statements) if spans[id(s)][0] <= line <= spans[id(s)][1]]

    def innermost_first(item):
        order, statement = item
        first, last = spans[id(statement)]
        return last - first, -order

    for _, node in sorted(around, key=innermost_first):
        original = _original(node, origins)
        if original is not None:
            return node, original, _in_header(node, positions, line) and not _header_reverted(node, original)
    before = [s for s in statements if spans[id(s)][1] <= line and _original(s, origins) is not None]
    if before:
        node = max(before, key=lambda s: (spans[id(s)][1], spans[id(s)][0]))
        return node, _original(node, origins), False
    return None


def _lines(node: cst.CSTNode, positions: SourceIndex) -> tuple[int, int]:
    """First and last line of a statement, its decorators included."""
    span = positions.code_range(node)
    decorators = getattr(node, "decorators", ())
    first = positions.code_range(decorators[0]).start.line if decorators else span.start.line
    return first, span.end.line


def _original(node: cst.CSTNode, origins) -> cst.CSTNode | None:
    entry = origins.get(id(node))
    return entry[1] if entry is not None and entry[0] is node else None


def _in_header(node: cst.CSTNode, positions: SourceIndex, line: int) -> bool:
    """The line is in the compound statement's header (decorators included), before its indented body."""
    body = getattr(node, "body", None)
    if not isinstance(body, cst.IndentedBlock) or not body.body:
        return False
    return line < positions.code_range(body.body[0]).start.line


def _header_reverted(node: cst.CSTNode, original: cst.CSTNode) -> bool:
    """Its header is the original's already (put back in an earlier round)."""
    return all(getattr(node, f) is getattr(original, f) for f in node.__dataclass_fields__
               if f not in _BLOCK_FIELDS)


def _with_header_of(original: cst.CSTNode, node: cst.CSTNode) -> cst.CSTNode:
    return original.with_changes(**{f: getattr(node, f) for f in _BLOCK_FIELDS if hasattr(node, f)})


def _revert(module: cst.Module, node: cst.CSTNode, original: cst.CSTNode, header_only: bool, origins) -> cst.Module:
    """The original in the place of `node`; other statements the same original was replaced by go (a
    statement the rewrite turned into several). `origins` follows the nodes rebuilt on the way."""
    if header_only:
        new = _with_header_of(original, node)
        replacements = {id(node): new}
        origins[id(new)] = (new, original)
    else:
        replacements = {id(other): cst.RemoveFromParent() for other, source in origins.values()
                        if source is original and other is not node}
        replacements[id(node)] = original
    return traverse.visit(module, _Replace(replacements, origins))


class _Replace(cst.CSTTransformer):
    def __init__(self, replacements: dict[int, cst.CSTNode], origins) -> None:
        super().__init__()
        self.replacements = replacements
        self.origins = origins

    def on_visit(self, node: cst.CSTNode) -> bool:
        return id(node) not in self.replacements

    def on_leave(self, original_node, updated_node):
        found = self.replacements.get(id(original_node))
        if found is not None:
            return found
        entry = self.origins.get(id(original_node))
        if updated_node is not original_node and entry is not None and entry[0] is original_node:
            self.origins[id(updated_node)] = (updated_node, entry[1])
        return updated_node


def _report(ctx: ConversionContext, index: SourceIndex, original: cst.CSTNode, header_only: bool,
            error: SyntaxError) -> None:
    first, last = _lines(original, index)
    body = getattr(original, "body", None)
    if header_only and isinstance(body, cst.IndentedBlock) and body.body:
        last = index.code_range(body.body[0]).start.line - 1
    ctx.forget_reports(first, last)
    what = f"the header of this {_keyword(original)}" if header_only else "this statement"
    ctx.report("PT041", *index.start(original),
               f"the rewrite of {what} did not compile ({error.msg}); kept as it was, still torch")


def _keyword(node: cst.CSTNode) -> str:
    return {cst.FunctionDef: "def", cst.ClassDef: "class", cst.If: "if", cst.For: "for", cst.While: "while",
            cst.With: "with", cst.Try: "try", cst.Match: "match"}.get(type(node), "statement")
