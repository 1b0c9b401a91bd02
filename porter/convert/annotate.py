"""`--annotate`: a `# porter: CODE message` comment above each statement that needs a person.

The comments go into the *input* (above the statement holding each warning
or error, with that statement's indentation, below any comments already
there), and the annotated input is converted: comments travel with their
statement through the rewrite, so they land next to the code they are about.
The report keeps the positions of the unannotated input.

Idempotent: a comment already standing right above the statement (the same
text, as when porter runs on its own annotated output) is not added again.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import libcst as cst

from porter.convert.diagnostics import Diagnostic, Severity
from porter.convert.source_index import SourceIndex

PREFIX = "# porter:"
NEEDS_A_PERSON = (Severity.WARNING, Severity.ERROR)

# compound statement -> the fields holding its statements (and clauses holding statements)
_BLOCKS: dict[type, tuple[str, ...]] = {
    cst.IndentedBlock: ("body",), cst.If: ("body", "orelse"), cst.Else: ("body",),
    cst.For: ("body", "orelse"), cst.While: ("body", "orelse"), cst.With: ("body",),
    cst.Try: ("body", "handlers", "orelse", "finalbody"), cst.TryStar: ("body", "handlers", "orelse", "finalbody"),
    cst.ExceptHandler: ("body",), cst.ExceptStarHandler: ("body",), cst.Finally: ("body",),
    cst.FunctionDef: ("body",), cst.ClassDef: ("body",), cst.Match: ("cases",), cst.MatchCase: ("body",),
}
_STATEMENTS = (cst.SimpleStatementLine, cst.BaseCompoundStatement)


def comment_for(d: Diagnostic) -> str:
    message = " ".join(d.message.split())
    return f"{PREFIX} {d.code} {message}"


def annotate_source(source: str, diagnostics: list[Diagnostic]) -> str:
    """`source` with a comment above the statement of each warning and error in `diagnostics`."""
    spots = [d for d in diagnostics if d.severity in NEEDS_A_PERSON and d.line > 0]
    if not spots:
        return source
    module = cst.parse_module(source)
    index = SourceIndex(module)
    lines = source.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    wanted: dict[int, list[str]] = {}  # 0-based line to insert above -> comments, in order
    for d in spots:
        if d.line > len(lines):
            continue
        offset = starts[d.line - 1] + max(d.col - 1, 0)
        statement = _innermost(module.body, offset, index)
        if statement is None:
            continue
        header = statement.decorators[0] if getattr(statement, "decorators", None) else statement
        at = index.start(header)[0] - 1
        text = comment_for(d)
        if text not in wanted.setdefault(at, []):
            wanted[at].append(text)
    for at in sorted(wanted, reverse=True):
        line = lines[at]
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        present = _comments_above(lines, at)
        newline = _newline_of(line)
        new = [f"{indent}{text}{newline}" for text in wanted[at] if text not in present]
        lines[at:at] = new
    return "".join(lines)


def _innermost(statements, offset: int, index: SourceIndex):
    found = None
    level = list(statements)
    while level:
        inside = None
        for node in level:
            if not isinstance(node, _STATEMENTS) or not index.contains(node):
                continue
            start, end = index.span(node)
            if start <= offset < end:
                inside = node
                break
        if inside is None:
            return found
        found = inside
        level = list(_children(inside))
    return found


def _children(node: cst.CSTNode):
    for name in _BLOCKS.get(type(node), ()):
        child = getattr(node, name)
        if child is None:
            continue
        for item in child if isinstance(child, (list, tuple)) else [child]:
            if isinstance(item, _STATEMENTS):
                yield item
            elif type(item) in _BLOCKS:  # a block or clause: its statements
                yield from _children(item)


def _comments_above(lines: list[str], at: int) -> set[str]:
    """The comment lines right above line `at` (stripped)."""
    found = set()
    i = at - 1
    while i >= 0 and lines[i].lstrip().startswith("#"):
        found.add(lines[i].strip())
        i -= 1
    return found


def _newline_of(line: str) -> str:
    match = re.search(r"\r\n|\r|\n$", line)
    return match.group(0) if match else "\n"


def convert_annotated(source: str, filename: str | None, convert: Callable) -> object:
    """`convert(source, filename)`, its output annotated; diagnostics and changes keep the input's positions."""
    first = convert(source, filename)
    if getattr(first, "failed", False):
        return first
    annotated = annotate_source(source, first.diagnostics)
    if annotated == source:
        return first
    second = convert(annotated, filename)
    return dataclasses.replace(first, code=second.code)
