"""Converts one file: parse, analyse, rewrite, fix imports.

The rewrite of calls, module classes and training loops runs as one traversal
over the original tree (TrainingRewrite extends ModuleRewrite extends CallRewrite), so every diagnostic and
change carries the line and column of the user's original code.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst
from libcst.metadata import MetadataWrapper

from porter.convert.context import ConversionContext
from porter.convert.diagnostics import Change, Diagnostic, Severity, diagnostic
from porter.convert.passes.analyze import Analyze
from porter.convert.passes.imports import FinalizeImports
from porter.convert.passes.training import TrainingRewrite
from porter.rules.loader import load_rules


@dataclass
class Conversion:
    """The result of converting one file (contract: .code and .diagnostics)."""

    code: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    filename: str | None = None

    @property
    def failed(self) -> bool:
        """True when the file could not be converted at all (nothing to write)."""
        return any(d.code == "PT001" for d in self.diagnostics)

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.diagnostics)


def convert_source(source: str, *, filename: str | None = None) -> Conversion:
    """Converts PyTorch source code to Flax NNX source code."""
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        line, col, message = _syntax_error(source, exc)
        return Conversion(source, [diagnostic("PT001", line, col, message, filename)], filename=filename)
    ctx = ConversionContext(rules=load_rules(), filename=filename)
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)  # positions computed once, for both passes
    wrapper.visit(Analyze(ctx))
    if not ctx.torch_aliases:
        return Conversion(source, ctx.diagnostics, filename=filename)  # no torch here: nothing to do
    rewritten = wrapper.visit(TrainingRewrite(ctx))
    final = rewritten.visit(FinalizeImports(ctx))
    diagnostics = sorted(ctx.diagnostics, key=lambda d: (d.line, d.col, d.code))
    changes = sorted(ctx.changes, key=lambda c: (c.line, c.col))
    return Conversion(final.code, diagnostics, changes, filename)


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
