"""Jupyter notebooks (.ipynb): the code cells are converted as one program, cell by cell.

Cells share names (torch imported in one cell, used in the next), so the code
cells are joined into one module, each after a boundary statement, converted
in one go and cut apart again at the boundaries. What stays as it was:

- markdown and raw cells;
- IPython line magics and shell lines inside Python cells (`%matplotlib
  inline`, `!pip install x`, `files = !ls`, `obj?`): each is swapped for a
  placeholder statement while converting and put back afterwards;
- cells under a cell magic whose body is not Python (`%%bash`,
  `%%writefile`, ... : reported as PT033); cells under `%%time`, `%%timeit`,
  `%%capture`, `%%prun` are converted below their first line;
- cells that do not parse on their own (reported as PT001, in the cell).

Outputs: a cell porter changed loses its outputs and execution count (they
came from the torch code); every other cell keeps them. A notebook with
nothing to convert comes out byte for byte as it went in; otherwise it is
written as JSON with one-space indentation (nbformat's layout), keys in
their original order.

Diagnostics and changes name the cell: `nb.ipynb#cell3:4:9` is line 4,
column 9 of the notebook's third cell (counting every cell, markdown too).
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field, replace

from porter.convert.diagnostics import Change, Diagnostic, diagnostic

BOUNDARY = "__porter_cell_boundary__"
MAGIC = "__porter_magic__"
PYTHON_CELL_MAGICS = {"time", "timeit", "capture", "prun", "debug"}

_BOUNDARY_LINE = re.compile(rf"^{BOUNDARY}\((\d+)\)[ \t]*$")
_MAGIC_LINE = re.compile(rf"^([ \t]*){MAGIC}\((\d+)\)[ \t]*$")
# `%magic`, `!cmd`, `?obj`, `x = !cmd`, `a, b = %magic`, `obj?`, `obj??`
_ESCAPED = re.compile(r"^[ \t]*(?:[%!?]|(?:[\w.]+[ \t]*,[ \t]*)*[\w.]+[ \t]*=[ \t]*[%!]|[\w.]+\?\??[ \t]*$)")


@dataclass
class NotebookConversion:
    code: str  # the notebook's new JSON text (the input itself when nothing changed)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    filename: str | None = None
    cell_changes: list[tuple[str, Change]] = field(default_factory=list)  # (path#cellN, change)
    failed: bool = False  # not a notebook, or its cells together do not parse: nothing converted


@dataclass
class _Cell:
    index: int  # 1-based, among all cells
    source: str
    python: str  # the source with magics swapped for placeholders
    magics: list[str]
    first_line: int = 0  # line of the joined program where the cell's first line sits


def _cell_source(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _mask_magics(source: str, magics: list[str]) -> str:
    """Each escaped line (and its backslash continuations) -> `<indent>__porter_magic__(k)`."""
    lines = source.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if _ESCAPED.match(line):
            taken = [line]
            while taken[-1].endswith("\\") and i + 1 < len(lines):
                i += 1
                taken.append(lines[i])
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            magics.append("\n".join(taken)[len(indent):])
            out.append(f"{indent}{MAGIC}({len(magics) - 1})")
            # keep the line count: continuation lines become blank lines
            out.extend([""] * (len(taken) - 1))
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


def _unmask_magics(text: str, magics: list[str]) -> str:
    """Puts the escaped lines back (with the indentation their placeholder has now), dropping the
    blank lines that stood in for their continuation lines."""
    out: list[str] = []
    skip = 0
    for line in text.split("\n"):
        if skip and not line.strip():
            skip -= 1
            continue
        skip = 0
        found = _MAGIC_LINE.match(line)
        if found:
            magic = magics[int(found.group(2))]
            out.append(found.group(1) + magic)
            skip = magic.count("\n")
        else:
            out.append(line)
    return "\n".join(out)


def convert_notebook(text: str, *, filename: str | None = None, convert=None) -> NotebookConversion:
    """Converts the code cells of a notebook's JSON text. `convert(source, filename)` converts
    the joined program (porter.convert.pipeline's notebook mode by default)."""
    path = filename or "<notebook>"
    try:
        notebook = json.loads(text)
    except json.JSONDecodeError as exc:
        return NotebookConversion(text, [diagnostic("PT032", exc.lineno, exc.colno, f"not JSON: {exc.msg}", path)],
                                  filename=filename, failed=True)
    cells = notebook.get("cells") if isinstance(notebook, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        return NotebookConversion(text, [diagnostic("PT032", 1, 1, "no list of cells (nbformat 4) in the JSON", path)],
                                  filename=filename, failed=True)
    diagnostics: list[Diagnostic] = []
    program: list[_Cell] = []
    for number, cell in enumerate(cells, start=1):
        if cell.get("cell_type") != "code":
            continue
        source = _cell_source(cell)
        where = f"{path}#cell{number}"
        head, _, rest = source.partition("\n")
        if head.startswith("%%"):
            magic = head[2:].split()[0] if head[2:].split() else ""
            if magic not in PYTHON_CELL_MAGICS:
                diagnostics.append(diagnostic("PT033", 1, 1, f"%%{magic} cell: not Python, left as it is", where))
                continue
        magics: list[str] = []
        python = _mask_magics(source, magics)
        try:
            compile(python, where, "exec", ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
        except SyntaxError as err:
            diagnostics.append(diagnostic("PT001", err.lineno or 1, err.offset or 1,
                                          f"syntax error: {err.msg}; cell left as it is", where))
            continue
        except (ValueError, RecursionError, MemoryError) as err:
            diagnostics.append(diagnostic("PT001", 1, 1, f"cannot parse the cell: {err}; left as it is", where))
            continue
        program.append(_Cell(number, source, python, magics))
    if not program:
        return NotebookConversion(text, diagnostics, filename=filename)

    # one program: the first cell as it is, every further one after a boundary statement
    pieces: list[str] = []
    line = 1
    for k, cell in enumerate(program):
        if k:
            pieces.append(f"{BOUNDARY}({cell.index})\n")
            line += 1
        cell.first_line = line
        body = cell.python if cell.python.endswith("\n") else cell.python + "\n"
        pieces.append(body)
        line += body.count("\n")
    joined = "".join(pieces)
    if convert is None:
        from porter.convert.pipeline import convert_in_tree

        def convert(source, name):
            return convert_in_tree(source, filename=name, notebook=True)
    conversion = convert(joined, path)

    def locate(line_number: int) -> tuple[str, int]:
        owner = program[0]
        for cell in program:
            if cell.first_line <= line_number:
                owner = cell
        return f"{path}#cell{owner.index}", max(line_number - owner.first_line + 1, 0)

    for d in conversion.diagnostics:
        if d.code in ("PT001", "PT034"):  # the joined program did not parse (or nests too deep) though every cell did
            where, in_cell = locate(d.line)
            diagnostics.append(replace(d, path=where, line=in_cell))
            return NotebookConversion(text, sorted(diagnostics, key=_order), filename=filename, failed=True)
        where, in_cell = locate(d.line) if d.line > 0 else (path, d.line)
        diagnostics.append(replace(d, path=where, line=in_cell))
    cell_changes = []
    for c in conversion.changes:
        where, in_cell = locate(c.line) if c.line > 0 else (path, c.line)
        cell_changes.append((where, replace(c, line=in_cell)))

    # cut the converted program apart again
    segments: dict[int, list[str]] = {program[0].index: []}
    current = program[0].index
    for out_line in conversion.code.split("\n"):
        found = _BOUNDARY_LINE.match(out_line)
        if found:
            current = int(found.group(1))
            segments[current] = []
        else:
            segments[current].append(out_line)
    changed = False
    for cell in program:
        new = _unmask_magics("\n".join(segments.get(cell.index, [])), cell.magics)
        trailing = cell.source[len(cell.source.rstrip()):]
        new = new.rstrip() + trailing
        if new == cell.source:
            continue
        changed = True
        target = cells[cell.index - 1]
        target["source"] = new.splitlines(keepends=True) if isinstance(target.get("source"), list) else new
        if "outputs" in target:
            target["outputs"] = []
        if "execution_count" in target:
            target["execution_count"] = None
    code = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n" if changed else text
    diagnostics.sort(key=_order)
    return NotebookConversion(code, diagnostics, [c for _, c in cell_changes], filename, cell_changes)


def _order(d: Diagnostic):
    cell = d.path.rpartition("#cell")[2] if d.path and "#cell" in d.path else "0"
    return (int(cell) if cell.isdigit() else 0, d.line, d.col, d.code)
