"""Positions and text of the original nodes, computed cheaply; statement prefilter.

libcst's PositionProvider runs a full code generation that records a
CodeRange per node through a context manager and a regex per token: on real
code it costs about three times the parse itself. `SourceIndex` runs one
plain code generation of the original module that records only token
indices per node (plus the syntactic ranges libcst's own provider records),
and turns them into line/column on demand. The positions are exactly
PositionProvider's (tests compare them over all fixtures).

The same index gives each statement's source text for free, which drives the
statement prefilter: a pass declares the identifiers it reacts to (its
`trigger_words()`); a statement whose text contains none of them is skipped
(not visited, returned unchanged). Skipping is only an optimisation: with
`SKIP_STATEMENTS = False` every statement is visited, and tests check that the
output and diagnostics are identical either way.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from itertools import accumulate
from typing import Iterable

import libcst as cst
from libcst._nodes.internal import CodegenState
from libcst._position import CodePosition, CodeRange

# Turned off by tests (and by anyone debugging a pass) to visit every statement.
SKIP_STATEMENTS = True

NEWLINE_RE = re.compile(r"\r\n?|\n")
WORD_RE = re.compile(r"\w+")
# no pass reacts to what comments and string literals say: the prefilter reads the code around them
_PROSE = frozenset({cst.Comment, cst.SimpleString, cst.FormattedStringText})
STATEMENT_TYPES = frozenset({
    cst.SimpleStatementLine, cst.If, cst.For, cst.While, cst.With, cst.Try, cst.TryStar,
    cst.FunctionDef, cst.ClassDef, cst.Match,
})


class _NullContext:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> bool:
        return False


class _Syntactic:
    """PositionProvidingCodegenState.record_syntactic_position, without a generator."""

    __slots__ = ("state", "node", "start_node", "end_node", "start")

    def __init__(self, state: "_IndexingState", node, start_node, end_node) -> None:
        self.state, self.node, self.start_node, self.end_node = state, node, start_node, end_node

    def __enter__(self) -> None:
        self.start = len(self.state.tokens)

    def __exit__(self, *exc) -> bool:
        state = self.state
        start = state.range_of(self.start_node)[0] if self.start_node is not None else self.start
        end = state.range_of(self.end_node)[1] if self.end_node is not None else len(state.tokens)
        state.syntactic[id(self.node)] = (start, end)
        return False


class _IndexingState(CodegenState):
    """Code generation that records, per node id, the token range it produced."""

    def __init__(self, module: cst.Module) -> None:
        super().__init__(default_indent=module.default_indent, default_newline=module.default_newline)
        self.inclusive: dict[int, tuple[int, int]] = {}  # whitespace-inclusive ranges
        self.syntactic: dict[int, tuple[int, int]] = {}  # ranges libcst's PositionProvider prefers
        self._stack: list[int] = []
        self.popped: list[str] = []
        self.prose: list[tuple[int, int]] = []  # token ranges of comments and string literals

    def before_codegen(self, node: cst.CSTNode) -> None:
        self._stack.append(len(self.tokens))

    def after_codegen(self, node: cst.CSTNode) -> None:
        start = self._stack.pop()
        self.inclusive[id(node)] = (start, len(self.tokens))
        if type(node) in _PROSE:
            self.prose.append((start, len(self.tokens)))

    def record_syntactic_position(self, node, *, start_node=None, end_node=None):
        return _Syntactic(self, node, start_node, end_node)

    def pop_trailing_newline(self) -> None:
        # a file without a final newline: ranges recorded before the pop still count the token
        if self.tokens:
            self.popped.append(self.tokens.pop())

    def range_of(self, node) -> tuple[int, int]:
        key = id(node)
        found = self.syntactic.get(key)
        return found if found is not None else self.inclusive[key]


class SourceIndex:
    """Where each node of one parsed module sits in its source text."""

    def __init__(self, module: cst.Module) -> None:
        state = _IndexingState(module)
        module._codegen(state)
        self.module = module  # keeps the nodes (and so their ids) alive
        self._inclusive = state.inclusive
        self._syntactic = state.syntactic
        self._offsets = [0, *accumulate(map(len, [*state.tokens, *state.popped]))]
        self.text = "".join(state.tokens)
        counted = self.text + "".join(state.popped)
        self._line_starts = [m.end() for m in NEWLINE_RE.finditer(counted)]
        self._word_offsets: dict[str, list[int]] = {}
        self.code_text = self._without_prose(state.prose)

    def _without_prose(self, prose: list[tuple[int, int]]) -> str:
        """The text with every comment and string literal blanked out (same length, same offsets)."""
        if not prose:
            return self.text
        pieces, at = [], 0
        for first, last in prose:  # in order, and never nested (none of these contains another)
            start, end = self._offsets[first], self._offsets[last]
            pieces.append(self.text[at:start])
            pieces.append(" " * (end - start))
            at = end
        pieces.append(self.text[at:])
        return "".join(pieces)

    # positions ----------------------------------------------------------------
    def _line_col(self, offset: int) -> tuple[int, int]:
        """1-based line, 0-based column (in characters), as libcst counts them."""
        i = bisect_right(self._line_starts, offset)
        return i + 1, offset - (self._line_starts[i - 1] if i else 0)

    def _token_range(self, node: cst.CSTNode) -> tuple[int, int]:
        key = id(node)
        found = self._syntactic.get(key)
        if found is None:
            found = self._inclusive[key]  # KeyError: not a node of the original module
        return found

    def start(self, node: cst.CSTNode) -> tuple[int, int]:
        """(line, column + 1) of the node's start: what diagnostics print."""
        line, col = self._line_col(self._offsets[self._token_range(node)[0]])
        return line, col + 1

    def code_range(self, node: cst.CSTNode) -> CodeRange:
        """The node's range exactly as libcst's PositionProvider gives it."""
        first, last = self._token_range(node)
        return CodeRange(CodePosition(*self._line_col(self._offsets[first])),
                         CodePosition(*self._line_col(self._offsets[last])))

    def contains(self, node: cst.CSTNode) -> bool:
        return id(node) in self._inclusive

    # text ---------------------------------------------------------------------
    def span(self, node: cst.CSTNode) -> tuple[int, int]:
        """Character offsets of all the node's code, leading comments and whitespace included."""
        first, last = self._inclusive[id(node)]
        return self._offsets[first], self._offsets[last]

    def code_of(self, node: cst.CSTNode) -> str:
        """The node's code as `module.code_for_node(node)` gives it (for top-level statements)."""
        start, end = self.span(node)
        return self.text[start:end]

    def mentions(self, word: str) -> bool:
        """True when the identifier occurs in the file's code (comments and strings aside)."""
        return bool(self._occurrences(word))

    def _occurrences(self, word: str) -> list[int]:
        found = self._word_offsets.get(word)
        if found is None:
            found = [m.start() for m in re.finditer(rf"(?<!\w){re.escape(word)}(?!\w)", self.code_text)]
            self._word_offsets[word] = found
        return found


class TriggerSet:
    """Does a stretch of the code (comments and strings aside) hold one of a set of identifiers?"""

    def __init__(self, index: SourceIndex) -> None:
        self.index = index
        self.words: set[str] = set()

    def update(self, words: Iterable[str]) -> None:
        self.words = set(words)

    def any_within(self, start: int, end: int) -> bool:
        return not self.words.isdisjoint(WORD_RE.findall(self.index.code_text, start, end))


class StatementFilter:
    """Mixin for a libcst visitor or transformer: skips statements that cannot matter to it.

    The pass supplies `trigger_words()` (identifiers it reacts to) and
    `trigger_state()` (a cheap value that changes whenever the words may have
    changed). A statement of the original module whose text (comments and
    strings included: a superset) holds none of the words is neither visited
    nor left: it comes back unchanged, identical object and all.
    """

    _index: SourceIndex | None = None
    _triggers: TriggerSet | None = None
    _trigger_state: object = None
    _skipping: cst.CSTNode | None = None

    def attach(self, index: SourceIndex, *, skip: bool = True) -> None:
        self._index = index
        self._triggers = TriggerSet(index) if skip and SKIP_STATEMENTS else None
        parent = super()
        if hasattr(parent, "attach"):
            parent.attach(index)

    # The pass defines trigger_words() -> Iterable[str] and trigger_state() -> object (found
    # further along the MRO: `filtered(cls)` puts this mixin first).

    def _wanted(self, node: cst.CSTNode) -> bool:
        triggers = self._triggers
        if triggers is None or not self._index.contains(node):
            return True
        state = self.trigger_state()
        if state != self._trigger_state or not triggers.words:  # the words may have changed
            self._trigger_state = state
            triggers.update(self.trigger_words())
        return triggers.any_within(*self._index.span(node))

    def on_visit(self, node: cst.CSTNode) -> bool:
        if type(node) in STATEMENT_TYPES and self._triggers is not None and not self._wanted(node):
            self._skipping = node
            return False
        return super().on_visit(node)

    def on_leave(self, original_node, *updated):
        if original_node is self._skipping:
            self._skipping = None
            return updated[0] if updated else None
        return super().on_leave(original_node, *updated)


_FILTERED: dict[type, type] = {}


def filtered(cls: type) -> type:
    """`cls` with the statement prefilter in front of all its own visit/leave hooks."""
    if issubclass(cls, StatementFilter):
        return cls
    if cls not in _FILTERED:
        _FILTERED[cls] = type(f"Filtered{cls.__name__}", (StatementFilter, cls), {"__module__": cls.__module__})
    return _FILTERED[cls]


class StatementCode:
    """Code of top-level statements, from the source text where the statement is an original one.

    A top-level statement the rewrite left alone (the same object) prints exactly as
    its slice of the original text; any other is generated once and remembered.
    `module_code` assembles a module from these pieces: what `module.code` returns.
    """

    def __init__(self, index: SourceIndex | None) -> None:
        self.index = index
        self._original = {id(s) for s in index.module.body} if index is not None else set()
        self._cache: dict[int, tuple[cst.CSTNode, str]] = {}  # keeps the node: its id stays unique

    def __call__(self, module: cst.Module, statement: cst.CSTNode) -> str:
        key = id(statement)
        if key in self._original:
            return self.index.code_of(statement)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = (statement, module.code_for_node(statement))
        return found[1]

    def module_code(self, module: cst.Module) -> str:
        if not module.has_trailing_newline:
            return module.code  # the last token goes: leave that to libcst
        parts = [module.code_for_node(line) for line in module.header]
        parts.extend(self(module, statement) for statement in module.body)
        parts.extend(module.code_for_node(line) for line in module.footer)
        return "".join(parts) or module.default_newline
