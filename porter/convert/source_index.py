"""Positions and text of the original nodes, computed cheaply; the prefilter.

libcst's PositionProvider runs a full code generation that records a
CodeRange per node through a context manager and a regex per token: on real
code it costs about three times the parse itself. `SourceIndex` runs one
plain code generation of the original module that records only token
indices per node (plus the syntactic ranges libcst's own provider records),
and turns them into line/column on demand. The positions are exactly
PositionProvider's (tests compare them over all fixtures).

The same index gives each node's source text for free, which drives the
prefilter (`Prefilter`): a pass declares the identifiers it reacts to (its
`trigger_words()`); a node whose code holds none of them is skipped by
porter/convert/traverse.py (not visited, returned unchanged). Skipping is only
an optimisation: the pipeline's reference mode (`_convert(..., fast=False)`)
visits everything, and tests check that the output and diagnostics are
identical either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from bisect import bisect_left, bisect_right, insort
from functools import cache, partial
from itertools import accumulate
from typing import Iterable

import libcst as cst
from libcst._nodes.internal import CodegenState
from libcst._position import CodePosition, CodeRange

NEWLINE_RE = re.compile(r"\r\n?|\n")
WORD_RE = re.compile(r"\w+")
# no pass reacts to what comments and string literals say: the prefilter reads the code around them
_PROSE = frozenset({cst.Comment, cst.SimpleString, cst.FormattedStringText})
STATEMENT_TYPES = frozenset({
    cst.SimpleStatementLine, cst.If, cst.For, cst.While, cst.With, cst.Try, cst.TryStar,
    cst.FunctionDef, cst.ClassDef, cst.Match,
})
_PROSE_NODE, _STATEMENT_NODE = "prose", "statement"
_SPECIAL = {**{t: _PROSE_NODE for t in _PROSE}, **{t: _STATEMENT_NODE for t in STATEMENT_TYPES}}


class _NullContext:
    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc) -> bool:
        return False


_NULL_CONTEXT = _NullContext()


def _one_token_operators() -> frozenset[type]:
    """Operators and punctuation whose code generation is whitespace, the one token (their syntactic range), whitespace."""
    from libcst._nodes.op import _BaseOneTokenOp

    return frozenset(cls for cls in vars(cst).values() if isinstance(cls, type) and issubclass(cls, _BaseOneTokenOp)
                     and cls._codegen_impl is _BaseOneTokenOp._codegen_impl)


_ONE_TOKEN = _one_token_operators()


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


class _FastTokens(CodegenState):
    """libcst's CodegenState with its per-token methods bound to the lists' own (C) methods: the same
    tokens without a Python call per token. (`decrease_indent` returns the popped token; no caller reads it.)"""

    def __init__(self, *, default_indent: str, default_newline: str) -> None:
        super().__init__(default_indent=default_indent, default_newline=default_newline)
        self.add_token = self.tokens.append
        self.increase_indent = self.indent_tokens.append
        self.decrease_indent = self.indent_tokens.pop
        self.add_indent_tokens = partial(self.tokens.extend, self.indent_tokens)


class _IndexingState(_FastTokens):
    """Code generation that records, per node id, the token range it produced.

    The per-node hooks are closures over local variables (no attribute lookups): they run for
    every node of the file."""

    def __init__(self, module: cst.Module) -> None:
        super().__init__(default_indent=module.default_indent, default_newline=module.default_newline)
        self.inclusive: dict[int, tuple[int, int]] = {}  # whitespace-inclusive ranges (first write wins)
        self.syntactic: dict[int, tuple[int, int]] = {}  # ranges libcst's PositionProvider prefers
        self.popped: list[str] = []
        self.prose: list[tuple[int, int]] = []  # token ranges of comments and string literals
        self.indents: dict[int, str] = {}  # nested statements: the indentation they were generated at
        tokens, indent_tokens = self.tokens, self.indent_tokens
        stack: list[int] = []
        push, pop = stack.append, stack.pop
        remember = self.inclusive.setdefault
        special_of = _SPECIAL.get
        prose, indents = self.prose, self.indents

        def before_codegen(node) -> None:
            push(len(tokens))

        def after_codegen(node) -> None:
            span = (pop(), len(tokens))
            remember(id(node), span)
            special = special_of(type(node))
            if special is not None:
                if special is _PROSE_NODE:
                    prose.append(span)
                elif indent_tokens:
                    indents[id(node)] = "".join(indent_tokens)

        self.before_codegen = before_codegen
        self.after_codegen = after_codegen

    def record_syntactic_position(self, node, *, start_node=None, end_node=None):
        if start_node is None and end_node is None:
            if not getattr(node, "lpar", True) and type(node) is not cst.StarredElement:  # (whose comma comes
                # after its syntactic range) an expression without parentheses: its syntactic range is its whole range
                return _NULL_CONTEXT
            if type(node) in _ONE_TOKEN:  # (a comma, a colon, an operator: most of the ranges recorded)
                at = len(self.tokens)
                self.syntactic[id(node)] = (at, at + 1)
                return _NULL_CONTEXT
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
        self._indents = state.indents
        self._syntactic = state.syntactic
        self._offsets = [0, *accumulate(map(len, [*state.tokens, *state.popped]))]
        self.text = "".join(state.tokens)
        counted = self.text + "".join(state.popped)
        self._line_starts = [m.end() for m in NEWLINE_RE.finditer(counted)]
        self._words: dict[str, list[int]] | None = None
        self.code_text = self._without_prose(state.prose)
        assert len(self.code_text) == len(self.text), "the code text must keep every offset"

    def _without_prose(self, prose: list[tuple[int, int]]) -> str:
        """The text with every comment and string literal blanked out (same length, same offsets)."""
        if not prose:
            return self.text
        pieces, at = [], 0
        for first, last in prose:  # in the order they ended: a comment inside a string's parentheses first
            start, end = max(self._offsets[first], at), self._offsets[last]
            if end <= start:
                continue
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

    def word_occurrences(self) -> dict[str, list[int]]:
        """Identifier -> sorted offsets where it occurs in the code (comments and strings aside)."""
        if self._words is None:
            words: dict[str, list[int]] = {}
            for match in WORD_RE.finditer(self.code_text):
                words.setdefault(match.group(), []).append(match.start())
            self._words = words
        return self._words

    def one_line_code(self, node: cst.CSTNode) -> "CodeText | None":
        """For an expression (or other non-statement) whose code is one line: its code as a node
        that generates exactly that text, which is what generating it in isolation would give (no
        newline, so no indentation and no newline style enters it). None otherwise."""
        if type(node) in STATEMENT_TYPES:
            return None
        start, end = self.span(node)
        text = self.text[start:end]
        if "\n" in text or "\r" in text:
            return None
        return CodeText(text)

    def mentions(self, word: str) -> bool:
        """True when the identifier occurs in the file's code (comments and strings aside)."""
        return word in self.word_occurrences()


class TriggerSet:
    """Does a stretch of the code (comments and strings aside) hold one of a set of identifiers?"""

    def __init__(self, index: SourceIndex) -> None:
        self.index = index
        self.words: set[str] = set()

    def update(self, words: Iterable[str]) -> None:
        self.words = set(words)

    def any_within(self, start: int, end: int) -> bool:
        return not self.words.isdisjoint(WORD_RE.findall(self.index.code_text, start, end))


# Node types whose code holds no identifier: a pass can only react to them through a hook of
# their own (visit_Comma...), which the prefilter checks for.
NO_IDENTIFIERS = frozenset({
    cst.SimpleWhitespace, cst.ParenthesizedWhitespace, cst.Newline, cst.TrailingWhitespace, cst.EmptyLine,
    cst.Comment, cst.Comma, cst.Dot, cst.Colon, cst.Semicolon, cst.AssignEqual, cst.LeftParen, cst.RightParen,
    cst.LeftSquareBracket, cst.RightSquareBracket, cst.LeftCurlyBrace, cst.RightCurlyBrace, cst.SimpleString,
    cst.Integer, cst.Float, cst.Imaginary, cst.Ellipsis, cst.Add, cst.Subtract, cst.Multiply, cst.Divide,
    cst.FloorDivide, cst.Modulo, cst.Power, cst.MatrixMultiply, cst.LeftShift, cst.RightShift, cst.BitAnd,
    cst.BitOr, cst.BitXor, cst.Plus, cst.Minus, cst.BitInvert, cst.Not, cst.And, cst.Or, cst.Equal,
    cst.NotEqual, cst.LessThan, cst.LessThanEqual, cst.GreaterThan, cst.GreaterThanEqual, cst.In, cst.NotIn,
    cst.Is, cst.IsNot, cst.AddAssign, cst.SubtractAssign, cst.MultiplyAssign, cst.DivideAssign,
    cst.FloorDivideAssign, cst.ModuloAssign, cst.PowerAssign, cst.MatrixMultiplyAssign, cst.LeftShiftAssign,
    cst.RightShiftAssign, cst.BitAndAssign, cst.BitOrAssign, cst.BitXorAssign, cst.FormattedStringText,
    cst.Pass, cst.Break, cst.Continue,
})


_REFRESH_AT = STATEMENT_TYPES | {cst.IndentedBlock}  # where the prefilter reads a pass's trigger state again


class WordSets(tuple):
    """A pass's trigger words as the union of these sets, not made: the prefilter reads a frozenset it has
    read before (the same object) no more (a pass whose few words change per function over many that do not)."""


@cache
def _never_visited(cls: type) -> frozenset[type]:
    """The node types without identifiers the visitor class has no hook for: the prefilter always skips them."""
    from porter.convert.traverse import hook
    return NO_IDENTIFIERS - {t for t in NO_IDENTIFIERS if hook(cls, f"visit_{t.__name__}") or hook(cls, f"leave_{t.__name__}")}


class Prefilter:
    """`skip(node)` for porter/convert/traverse.py: True for a node of the original module whose code
    (comments and strings aside) holds none of the pass's trigger words.

    The pass supplies `trigger_words()` (identifiers it reacts to, or a WordSets) and `trigger_state()` (a cheap
    value that changes whenever the words may have changed; read at each statement). The words only
    ever grow. Skipping is an optimisation only: tests hold the output to the one of a full visit.
    """

    def __init__(self, index: SourceIndex, visitor) -> None:
        self.index = index
        self.visitor = visitor
        self.never = _never_visited(type(visitor))
        self.words: set[str] = set()
        self.offsets: list[int] = []  # where the words occur, sorted
        self.state: object = object()
        self._read: dict[int, frozenset[str]] = {}  # the frozensets of a WordSets read whole, by id

    def _refresh(self) -> None:
        state = self.visitor.trigger_state()
        if state == self.state:
            return
        self.state = state
        new = self._new_words(self.visitor.trigger_words())
        if not new:
            return
        self.words.update(new)
        occurrences = self.index.word_occurrences()
        found = [o for w in new for o in occurrences.get(w, ())]
        if not found:
            return
        if len(found) < 32:
            for offset in found:
                insort(self.offsets, offset)
        else:
            self.offsets = sorted(self.offsets + found)

    def _new_words(self, words: Iterable[str]) -> Iterable[str]:
        known = self.words
        if type(words) is WordSets:
            new: set[str] = set()
            for part in words:
                if type(part) is frozenset:
                    if self._read.get(id(part)) is part:
                        continue  # (its words are all known since it was read)
                    self._read[id(part)] = part
                new.update(part.difference(known))
            return new
        if isinstance(words, (set, frozenset)):
            return words - known
        return [w for w in words if w not in known]

    def also_at(self, offsets: Iterable[int]) -> None:
        """Places in the code (character offsets) that count as occurrences of a trigger word: a pass that
        reacts to a construct without a name of its own (an item assignment's `] =`) marks them here."""
        self.offsets = sorted([*self.offsets, *offsets])

    def __call__(self, node: cst.CSTNode) -> bool:
        kind = type(node)
        if kind in self.never:
            return True
        if kind is cst.Module:
            self._refresh()
            return False  # its visit and leave hooks always run
        index = self.index
        span = index._inclusive.get(id(node))
        if span is None:
            return False  # not from the original module
        if kind in _REFRESH_AT:  # a function's visit hook may add words
            self._refresh()
        offsets = index._offsets
        start = offsets[span[0]]
        found = self.offsets
        i = bisect_left(found, start)
        return not (i < len(found) and found[i] < offsets[span[1]])


# containers of statements -> their fields that hold statements or clauses holding statements
_STATEMENT_FIELDS: dict[type, tuple[str, ...]] = {
    cst.IndentedBlock: ("body",), cst.If: ("body", "orelse"), cst.Else: ("body",),
    cst.For: ("body", "orelse"), cst.While: ("body", "orelse"), cst.With: ("body",),
    cst.Try: ("body", "handlers", "orelse", "finalbody"), cst.TryStar: ("body", "handlers", "orelse", "finalbody"),
    cst.ExceptHandler: ("body",), cst.ExceptStarHandler: ("body",), cst.Finally: ("body",),
    cst.FunctionDef: ("body",), cst.ClassDef: ("body",), cst.Match: ("cases",), cst.MatchCase: ("body",),
}


@dataclass(frozen=True)
class CodeText(cst.CSTNode):
    """Code generation only: a fixed piece of code."""

    text: str

    def _visit_and_replace_children(self, visitor):  # pragma: no cover - never visited
        return self

    def _codegen_impl(self, state, **kwargs) -> None:
        state.add_token(self.text)


@dataclass(frozen=True)
class _Verbatim(cst.BaseStatement):
    """Code generation only: an unchanged statement of the source as its text, when it is generated
    at the indentation it had (else generated as usual)."""

    original: cst.BaseStatement
    text: str
    indent: str

    def _visit_and_replace_children(self, visitor):  # pragma: no cover - never visited
        return self

    def _codegen_impl(self, state, **kwargs) -> None:
        if "".join(state.indent_tokens) == self.indent:
            state.add_token(self.text)
        else:
            self.original._codegen(state, **kwargs)


class _PlainState(_FastTokens):
    """libcst's CodegenState without the generator-based context manager it enters for every
    expression (it records nothing here): the same tokens, a quarter faster."""

    def record_syntactic_position(self, node, *, start_node=None, end_node=None):
        return _NULL_CONTEXT


def code_for_node(module: cst.Module, node: cst.CSTNode) -> str:
    """`module.code_for_node(node)`, faster."""
    if type(node) is CodeText:  # (the change log's original one-line expressions)
        return node.text
    state = _PlainState(default_indent=module.default_indent, default_newline=module.default_newline)
    node._codegen(state)
    return "".join(state.tokens)


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
            spliced = self._splice(statement) if self.index is not None else statement
            found = self._cache[key] = (statement, code_for_node(module, spliced))
        return found[1]

    def _splice(self, node: cst.CSTNode) -> cst.CSTNode:
        """`node` with each statement inside it that is an original one (unchanged) standing in as
        its source text, generated again only where its indentation changed."""
        fields = _STATEMENT_FIELDS.get(type(node))
        if not fields:
            return node
        changes = {}
        for name in fields:
            child = getattr(node, name)
            if isinstance(child, (list, tuple)):
                new = [self._stand_in(item) for item in child]
                if any(a is not b for a, b in zip(new, child)):
                    changes[name] = new
            elif type(child) is cst.If:  # an elif: generated by its If, which must see an If
                new = self._splice(child)
            elif child is not None:
                new = self._stand_in(child)
                if new is not child:
                    changes[name] = new
        return node.with_changes(**changes) if changes else node

    def _stand_in(self, node):
        index = self.index
        if type(node) in STATEMENT_TYPES and index.contains(node):
            return _Verbatim(node, index.code_of(node), index._indents.get(id(node), ""))
        return self._splice(node)

    def module_code(self, module: cst.Module) -> str:
        if not module.has_trailing_newline:
            return module.code  # the last token goes: leave that to libcst
        parts = [code_for_node(module, line) for line in module.header]
        parts.extend(self(module, statement) for statement in module.body)
        parts.extend(code_for_node(module, line) for line in module.footer)
        return "".join(parts) or module.default_newline
