"""What a load did: loaded, transposed, tied, guessed, ignored, missing, unexpected, mis-shaped keys."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ShapeMismatch:
    key: str
    torch_shape: tuple[int, ...]  # as found in the state_dict
    after_layout: tuple[int, ...]  # what that becomes through the layout (() when it cannot)
    expected: tuple[int, ...]  # the model variable's shape (() without a model)
    expected_torch: tuple[int, ...]  # the state_dict shape that would have fitted
    layout: str
    nnx_name: str

    def describe(self) -> str:
        if not self.expected:
            return f"{self.key}: state_dict has {self.torch_shape}, which the {self.layout} layout cannot take"
        if self.layout == "same":
            return (f"{self.key}: state_dict has {self.torch_shape}, model {self.nnx_name} "
                    f"expects {self.expected}")
        after = self.after_layout if self.after_layout else "(cannot be laid out)"
        return (f"{self.key}: state_dict has {self.torch_shape} -> {self.layout} -> {after}, "
                f"model {self.nnx_name} expects {self.expected} (torch shape {self.expected_torch})")


@dataclass
class LoadReport:
    model: str = ""
    loaded: list[str] = field(default_factory=list)
    transposed: dict[str, str] = field(default_factory=dict)  # key -> layout name (subset of loaded)
    ignored: list[str] = field(default_factory=list)  # e.g. num_batches_tracked
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[ShapeMismatch] = field(default_factory=list)
    cast: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (checkpoint dtype, model dtype)
    missing_info: dict[str, str] = field(default_factory=dict)  # key -> what the model expected
    unexpected_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)  # key -> the key its (one) variable was loaded from
    untied: dict[str, str] = field(default_factory=dict)  # same tensor in the checkpoint, two variables now
    tied_conflicts: list[str] = field(default_factory=list)  # tied in the model, different in the checkpoint
    guessed: dict[str, str] = field(default_factory=dict)  # key -> how it was mapped without a model
    prefix: list[str] = field(default_factory=list)  # what prefix handling did
    initial: list[str] = field(default_factory=list)  # written with the model's initial values (flax paths)
    mapped_by: str = "model"  # or "names and shapes"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.tied_conflicts)

    def format(self, *, verbose: bool = False) -> str:
        lines = [f"loaded {len(self.loaded)} key(s) into {self.model}: {len(self.transposed)} transposed, "
                 f"{len(self.tied)} tied, {len(self.ignored)} ignored, {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.mismatched)} mis-shaped"]
        lines += [f"  prefix: {note}" for note in self.prefix]
        if verbose and self.transposed:
            lines.append("  transposed: " + ", ".join(f"{k} ({v})" for k, v in self.transposed.items()))
        if self.tied:
            lines.append("  tied (one variable, loaded once): "
                         + ", ".join(f"{k} = {v}" for k, v in self.tied.items()))
        if self.untied:
            lines.append("  note: the same tensor in the checkpoint, separate variables here (no longer tied): "
                         + ", ".join(f"{k} = {v}" for k, v in self.untied.items()))
        if self.initial:
            lines.append("  not in the checkpoint, written with the model's initial values: " + ", ".join(self.initial))
        if self.ignored:
            lines.append("  ignored: " + ", ".join(self.ignored)
                         + (" (BatchNorm's step counter: flax does not keep one)"
                            if any(k.endswith("num_batches_tracked") for k in self.ignored) else ""))
        if self.cast:
            lines.append("  dtype cast: " + ", ".join(f"{k} ({a} -> {b})" for k, (a, b) in self.cast.items()))
        if self.guessed:
            kinds = {how.split(":")[0] for how in self.guessed.values()}
            lines.append(f"  mapped without a model, by key names and shapes ({len(self.guessed)} key(s); "
                         f"pass --model for an exact mapping):")
            order = {"guess": 0, "kept": 1, "pattern": 2}
            shown = sorted(self.guessed.items(), key=lambda kv: order.get(kv[1].split(":")[0], 3))
            limit = None if verbose else 40
            for k, how in shown[:limit]:
                lines.append(f"    {k}  {how}")
            if limit is not None and len(shown) > limit:
                lines.append(f"    ... {len(shown) - limit} more (--verbose lists all)")
            if "guess" in kinds:
                lines.append("    'guess' = more than one layer rule fits the names and shapes; check these keys")
        lines.extend(problem_lines(self))
        return "\n".join(lines)


def problem_lines(report: LoadReport) -> list[str]:
    lines = []
    if report.missing:
        lines.append("  missing (in the model, not in the state_dict):")
        lines += [f"    {k}  ({report.missing_info.get(k, '')})" for k in report.missing]
    if report.unexpected:
        lines.append("  unexpected (in the state_dict, not in the model):")
        lines += [f"    {k}  {report.unexpected_shapes.get(k, '')}" for k in report.unexpected]
    if report.mismatched:
        lines.append("  mis-shaped:")
        lines += [f"    {m.describe()}" for m in report.mismatched]
    if report.tied_conflicts:
        lines.append("  tied in the model but different values in the state_dict:")
        lines += [f"    {c}" for c in report.tied_conflicts]
    hint = _prefix_hint(report)
    if hint:
        lines.append(f"  hint: {hint}")
    return lines


def _prefix_hint(report: LoadReport) -> str | None:
    """A common prefix (DataParallel's 'module.') that explains the mismatch."""
    if not report.missing or not report.unexpected:
        return None
    first = report.unexpected[0].split(".")[0] + "."
    if all(k.startswith(first) for k in report.unexpected):
        stripped = {k[len(first):] for k in report.unexpected}
        if stripped & set(report.missing):
            return (f"every unexpected key starts with {first!r} (as DataParallel/DDP checkpoints do); "
                    f"strip it: --strip-prefix {first} (strip_prefix=[{first!r}])")
    return None


class StateDictMismatch(ValueError):
    """Strict loading found missing, unexpected or mis-shaped keys; `.report` has them all."""

    def __init__(self, report: LoadReport):
        self.report = report
        counts = (f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, "
                  f"{len(report.mismatched)} mis-shaped key(s)")
        if report.tied_conflicts:
            counts += f", {len(report.tied_conflicts)} tied key(s) with different values"
        super().__init__("\n".join([f"state_dict does not match {report.model}: {counts}; nothing was loaded",
                                    *problem_lines(report)]))
