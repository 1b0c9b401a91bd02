"""Diagnostics and the change log: what porter tells a person about a conversion.

Codes are stable: scripts and CI filters rely on them. Add new codes at the
end of CODES; never renumber or reuse one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum


class Severity(str, Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Code:
    code: str
    severity: Severity
    title: str
    hint: str


CODES: dict[str, Code] = {
    c.code: c
    for c in [
        Code("PT001", Severity.ERROR, "syntax error",
             "Fix the Python syntax error; porter converts only files that parse."),
        Code("PT002", Severity.WARNING, "torch name used but never imported",
             "The file uses a conventional alias (torch, nn, F, optim) without importing it; "
             "porter assumed the usual meaning. Add the import to the original if it is a bug."),
        Code("PT003", Severity.ERROR, "torch API without a conversion rule",
             "Left unchanged. Rewrite it by hand with jax/jnp/nnx, or add a rule in rules/."),
        Code("PT004", Severity.ERROR, "argument value not supported by the rule",
             "Left unchanged. The rule converts this API only for the argument values it lists."),
        Code("PT005", Severity.WARNING, "converted with a semantic difference",
             "The converted code runs but differs from torch in the way the message says; check it."),
        Code("PT006", Severity.ERROR, "module construct not supported",
             "Left unchanged. Convert this part of the nn.Module by hand."),
        Code("PT007", Severity.INFO, "assumption made",
             "porter made the choice the message names; change it by hand if it does not fit."),
        Code("PT010", Severity.ERROR, "training loop not converted",
             "Left unchanged. porter converts loops with one loss.backward() followed by one optimizer.step(), "
             "the forward pass as plain assignments; write the train_step by hand for other shapes."),
        Code("PT011", Severity.INFO, "torch kept for data loading",
             "torch.utils.data (Dataset, DataLoader) is kept: the same batches in the same order as the "
             "original; batches become jax arrays at the train_step call. Swap in a numpy or grain loader "
             "to drop torch."),
    ]
}


@dataclass(frozen=True)
class Diagnostic:
    code: str
    severity: Severity
    line: int
    col: int
    message: str
    path: str | None = None

    @property
    def hint(self) -> str:
        return CODES[self.code].hint

    def format(self) -> str:
        where = f"{self.path or '<string>'}:{self.line}:{self.col}"
        return f"{where} {self.code} {self.severity.value} {self.message}"

    def to_json(self) -> dict:
        data = asdict(self)
        data["severity"] = self.severity.value
        data["hint"] = self.hint
        return data


@dataclass(frozen=True)
class Change:
    """One rewrite porter made: which rule, where, and the code before and after."""

    rule: str
    line: int
    col: int
    before: str
    after: str

    def format(self, path: str | None = None) -> str:
        return f"{path or '<string>'}:{self.line}:{self.col} {self.rule} {self.before!r} -> {self.after!r}"


def diagnostic(code: str, line: int, col: int, message: str, path: str | None = None) -> Diagnostic:
    """A Diagnostic whose severity is the code's own."""
    return Diagnostic(code, CODES[code].severity, line, col, message, path)
