"""How deeply a source nests, read from its text before libcst parses it.

libcst's native parser recurses on the C stack: about 1,300 nested brackets, or a few thousand
terms of `a + a + ...`, crash the process (SIGSEGV, nothing to catch). `too_deep(source)` finds
such a file first, so that it is reported (PT034) instead of taking the process, and the tree,
down. The limits: CPython's own for brackets (200) and indentation (100 levels), which valid
Python never passes, and 1,000 for brackets and chained operators together.

The scan over-estimates the syntax tree's depth in any one statement: every bracket and every
operator between two commas counts as a level, strings and comments aside (the expressions inside
an f-string too). A first pass that only C code runs over (the strings and comments cut out, the
keywords made operators, everything but brackets, operators and line ends deleted) clears nearly
every file for about 1% of a parse; a file it does not clear is scanned token by token, which
finds the line and column (Python's `tokenize` would cost a sixth of a parse).
"""

from __future__ import annotations

import re

# CPython's own limits: valid Python stays within them. libcst crashes past ~1,300 nested brackets.
MAX_BRACKETS = 200
MAX_INDENT = 100
# Brackets and chained operators together (`a + a + ...`, `x.a.b`, `not not x`): Python has no limit
# but libcst crashes past 3,000-5,000 terms of a sum. 1,000 convert in 0.3 s (sympy's longest
# polynomials reach 600).
MAX_DEPTH = 1000

# strings (any prefix: the letters before the quote are left, and count for nothing), comments, and
# backslash line continuations; the loops unrolled, which makes the scan of long docstrings cheap
_SKIPPED = (r"""'\'\'[^'\\]*(?:(?:\\.|'(?!''))[^'\\]*)*'\'\'|\"\"\"[^"\\]*(?:(?:\\.|"(?!""))[^"\\]*)*\"\"\""""
            r"""|'[^'\\\r\n]*(?:\\.[^'\\\r\n]*)*'|"[^"\\\r\n]*(?:\\.[^"\\\r\n]*)*"|\#[^\r\n]*|\\\r?\n""")
_WORDS = "and or not if else lambda await in is".split()
_KEYWORDS = "|".join(rf"{word}\b(?<!\w{word})" for word in _WORDS)  # no \b first: a literal first is faster
_OPERATORS = r"(?:\*\*|//|<<|>>|[-+*/%@&|^<>=!])=?|[~.]|->"
_TOKENS = re.compile(rf"(?P<skip>{_SKIPPED})|(?P<open>[(\[{{])|(?P<close>[)\]}}])|(?P<reset>[,;])"
                     rf"|(?P<newline>\r?\n[ \t\f]*)|(?P<op>{_KEYWORDS}|{_OPERATORS})", re.DOTALL)
_STRINGS_AND_COMMENTS = re.compile(_SKIPPED, re.DOTALL)
_KEYWORD = re.compile(_KEYWORDS)
_NOT_STRUCTURE = re.compile(r"[^()\[\]{},;\n\-+*/%@&|^~<>=!.]+")  # all but brackets, operators, line ends
_DEEP_INDENT = re.compile(r"^[ \t\f]{%d,}" % (MAX_INDENT + 1), re.MULTILINE)


def too_deep(source: str) -> tuple[int, int, str] | None:
    """(line, col, message) where the source first nests deeper than porter (libcst) can take,
    or None."""
    return _scan(source) if _may_be_too_deep(source) else None


def _may_be_too_deep(source: str) -> bool:
    """False when the file nests within the limits; True when it may not (an estimate at least
    _scan's: every operator character counts, where _scan counts `**` or `==` once). Then _scan
    decides."""
    text = _STRINGS_AND_COMMENTS.sub("", source)
    if _DEEP_INDENT.search(text):
        return True
    runs, depth = [0], 0
    for char in _NOT_STRUCTURE.sub("", _KEYWORD.sub("~", text)):
        if char in "([{":
            runs[-1] += 1
            depth += runs[-1]
            runs.append(0)
            if depth > MAX_DEPTH or len(runs) > MAX_BRACKETS + 1:
                return True
        elif char in ")]}":
            if len(runs) > 1:
                runs.pop()
                depth -= runs[-1]
        elif char in ",;":
            runs[-1] = 0
        elif char == "\n":
            if len(runs) == 1:
                runs[0] = 0
        else:
            runs[-1] += 1
            if depth + runs[-1] > MAX_DEPTH:
                return True
    return False


def _scan(source: str) -> tuple[int, int, str] | None:
    runs = [0]  # operators since the last comma, at each bracket level
    depth = 0  # brackets open plus the runs of the levels around this one
    indents = [0]
    line, line_start = 1, 0
    for match in _TOKENS.finditer(source):
        kind = match.lastgroup
        if kind == "skip":
            if "\n" in match.group():
                line_start = match.start() + match.group().rindex("\n") + 1
                line += match.group().count("\n")
            continue
        if kind == "newline":
            line += 1
            line_start = match.start() + match.group().index("\n") + 1
            if len(runs) > 1:
                continue  # inside brackets: one statement goes on
            runs[0] = 0
            following = source[match.end():match.end() + 1]
            if following not in ("", "\n", "\r", "#"):
                width = len(match.group().expandtabs(8)) - (match.group().index("\n") + 1)
                while width < indents[-1]:
                    indents.pop()
                if width > indents[-1]:
                    indents.append(width)
                    if len(indents) - 1 > MAX_INDENT:
                        return line, 1, (f"more than {MAX_INDENT} levels of indentation (Python allows "
                                         f"{MAX_INDENT})")
            continue
        if kind == "reset":
            runs[-1] = 0
        elif kind == "close":
            if len(runs) > 1:
                runs.pop()
                depth -= runs[-1]
        else:  # an operator, or a bracket (a level, and one step of the chain it is a trailer of)
            runs[-1] += 1
            if kind == "open":
                depth += runs[-1]
                runs.append(0)
                if len(runs) > MAX_BRACKETS + 1:
                    return line, match.start() - line_start + 1, (
                        f"more than {MAX_BRACKETS} nested brackets (Python allows {MAX_BRACKETS})")
            if depth + runs[-1] > MAX_DEPTH:
                return line, match.start() - line_start + 1, (
                    f"an expression nested more than {MAX_DEPTH} levels deep (brackets, and operators "
                    f"chained between two commas)")
    return None
