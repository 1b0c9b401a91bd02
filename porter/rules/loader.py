"""Reads rules/*.toml, validates them, and indexes them by torch symbol.

A rule is data: the torch symbol(s) it converts, the target, how each torch
argument maps (keyword rename, position, value transform), what to emit
always, and for layers the weight layout. Any torch argument the rule does not
map is supported only at its default value: passing anything else makes the
converter report PT004 and leave the call unchanged. That makes a rule safe by
default; it can only be incomplete, not silently wrong.
"""

from __future__ import annotations

import functools
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

# annotation: a name replaced only inside type annotations (`ids: torch.LongTensor`); anywhere else it keeps
# its torch meaning (`torch.LongTensor([1, 2])` builds one, `isinstance(x, torch.LongTensor)` tests the dtype)
KINDS = ("layer", "activation", "function", "method", "constant", "decorator", "annotation")
TARGET_ROOTS = ("jnp", "jax", "nnx", "math", "emitted", "method", "builder", "expr", "drop", "typing")
# [[rule.verify]] keys that are options, not values to draw (see porter/rules/verify.py)
VERIFY_OPTIONS = ("code", "rtol", "atol", "compare", "check", "jit", "expect", "symbols")


# emitted layer classes and the flax class each extends (same parameters, same layout)
EMITTED_BASES = {"emitted.TorchBatchNorm": "nnx.BatchNorm", "emitted.ChannelsFirstConv": "nnx.Conv"}


class RuleError(ValueError):
    """A malformed rule file; the message names the file and the rule."""


@dataclass(frozen=True)
class Param:
    name: str
    default: str | None  # Python source of the default; None when required
    keyword_only: bool = False
    var_positional: bool = False


@dataclass(frozen=True)
class ArgMap:
    keyword: str | None = None  # emit as this keyword argument
    position: int | None = None  # or as the n-th positional argument
    transform: str | None = None  # name in porter.convert.transforms.VALUE_TRANSFORMS
    always: bool = False  # emit even when the torch call leaves it at its default


@dataclass(frozen=True)
class WeightMap:
    flax_name: str
    layout: str  # key in porter.weights.layouts.LAYOUTS


@dataclass(frozen=True)
class Example:
    before: str
    after: str


@dataclass(frozen=True)
class VerifyCase:
    """One property test of a rule: torch code, how to draw its inputs, how to compare.

    `code` is a torch expression (or function body with `return`); `{name}` in it
    is replaced by the drawn value's literal, a bare `name` is passed as an
    argument. `draws` are (name, strategy expression) pairs drawn in order.
    """

    code: str
    draws: tuple[tuple[str, object], ...]
    options: dict


@dataclass(frozen=True)
class Rule:
    id: str
    kind: str
    source: tuple[str, ...]
    target: str
    signature: tuple[Param, ...]
    args: dict[str, ArgMap]
    drop: tuple[str, ...]
    warn: dict[str, str]
    emit: dict[str, str]
    builder: str | None
    receiver: int  # method rules with a function target: the tensor's position among the arguments
    helpers: tuple[str, ...]
    layout: dict[str, WeightMap]
    ignored_weights: tuple[str, ...]
    notes: str
    examples: tuple[Example, ...]
    file: str
    templates: tuple[str, ...] = ()  # target "expr": Python expressions with {argument} placeholders
    assume: str = ""  # reported (PT007 info) wherever the rule is applied
    verify: tuple[VerifyCase, ...] = ()

    def param(self, name: str) -> Param | None:
        return next((p for p in self.signature if p.name == name), None)

    @property
    def uses_rngs(self) -> bool:
        return "rngs" in self.emit


@dataclass
class RuleSet:
    rules: list[Rule]
    by_symbol: dict[str, Rule] = field(default_factory=dict)
    # decorator rules by symbol: `@torch.compile` is a decorator rule, `torch.compile(model)` a function one
    decorators: dict[str, Rule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for rule in self.rules:
            for symbol in rule.source:
                if rule.kind == "decorator":
                    self.decorators[symbol] = rule
                if rule.kind != "decorator" or self.by_symbol.get(symbol, rule).kind == "decorator":
                    self.by_symbol[symbol] = rule

    def lookup(self, symbol: str) -> Rule | None:
        return self.by_symbol.get(symbol)

    def method(self, name: str) -> Rule | None:
        return self.by_symbol.get(f"torch.Tensor.{name}")

    def layouts_by_target(self) -> dict[str, Rule]:
        """Layer rules with a weight layout, keyed by target (e.g. 'nnx.Linear'). An emitted
        subclass's layout also serves its flax base class (a hand-written nnx.BatchNorm loads too)."""
        layouts = {r.target: r for r in self.rules if r.layout}
        for emitted, base in EMITTED_BASES.items():
            if emitted in layouts:
                layouts.setdefault(base, layouts[emitted])
        return layouts


def rules_dir() -> Path:
    packaged = Path(__file__).resolve().parent.parent / "_rules"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "rules"


@functools.cache
def load_rules(directory: Path | None = None) -> RuleSet:
    directory = directory or rules_dir()
    files = sorted(p for p in directory.glob("*.toml") if p.name != RESIDUAL_FILE)
    if not files:
        raise RuleError(f"no rule files (*.toml) in {directory}")
    rules = [rule for path in files for rule in _read_file(path)]
    _check_unique(rules)
    return RuleSet(rules)


# the residual check's tables (porter/convert/passes/residual.py): attribute groups, not rules
RESIDUAL_FILE = "residual.toml"
RESIDUAL_FLAGS = {"tensor": ("value", "array", "traced", "likely", "no"), "tensor_shared": ("traced", "no"),
                  "module": ("module", "no"), "module_extra": ("module",)}


@dataclass(frozen=True)
class ResidualGroup:
    """Names of one table that the check treats alike: where it flags them (`flag`) and what to write instead."""

    table: str
    name: str
    flag: str
    hint: str
    methods: frozenset[str]
    attributes: frozenset[str]


@dataclass
class ResidualTables:
    groups: dict[str, list[ResidualGroup]]
    torch_packages: frozenset[str]  # top-level packages whose classes and functions work on torch tensors
    einops_functions: frozenset[str]  # einops functions that read their array arguments' shapes

    def lookup(self, table: str, name: str, called: bool) -> ResidualGroup | None:
        """The group of a method (when called) or an attribute (when read or written) whose flag is not 'no'."""
        index = self._index.get(table, {})
        return index.get((name, called))

    def __post_init__(self) -> None:
        self._index: dict[str, dict[tuple[str, bool], ResidualGroup]] = {}
        for table, groups in self.groups.items():
            found = self._index.setdefault(table, {})
            for group in groups:
                if group.flag == "no":
                    continue
                found.update({(n, True): group for n in group.methods})
                found.update({(n, False): group for n in group.attributes})
        self._flagged = frozenset(name for index in self._index.values() for name, _ in index)

    def flagged_names(self) -> frozenset[str]:
        return self._flagged


@functools.cache
def load_residual(directory: Path | None = None) -> ResidualTables:
    path = (directory or rules_dir()) / RESIDUAL_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{path.name}: not valid TOML: {exc}") from exc
    groups: dict[str, list[ResidualGroup]] = {}
    seen: dict[tuple[str, str, str], str] = {}
    for table, flags in RESIDUAL_FLAGS.items():
        for raw in data.get(table, []):
            name = raw.get("group", "<no group>")
            if unknown := set(raw) - {"group", "flag", "hint", "why", "methods", "attributes"}:
                raise RuleError(f"{path.name}: [[{table}]] {name}: unknown field(s) {sorted(unknown)}")
            if raw.get("flag") not in flags:
                raise RuleError(f"{path.name}: [[{table}]] {name}: flag must be one of {flags}")
            if raw["flag"] != "no" and not raw.get("hint"):
                raise RuleError(f"{path.name}: [[{table}]] {name}: a flagged group needs a hint")
            group = ResidualGroup(table, name, raw["flag"], raw.get("hint", ""), frozenset(raw.get("methods", ())),
                                  frozenset(raw.get("attributes", ())))
            for kind, names in (("methods", group.methods), ("attributes", group.attributes)):
                for member in names:
                    if (table, kind, member) in seen:
                        raise RuleError(f"{path.name}: [[{table}]] {member} is in groups {seen[table, kind, member]!r}"
                                        f" and {name!r}")
                    seen[table, kind, member] = name
            groups.setdefault(table, []).append(group)
    packages = data.get("torch_packages", {})
    return ResidualTables(groups, frozenset(packages.get("names", ())), frozenset(data.get("einops", {}).get("functions", ())))


def _read_file(path: Path) -> list[Rule]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{path.name}: not valid TOML: {exc}") from exc
    return [_parse_rule(raw, path.name) for raw in data.get("rule", [])]


def _parse_rule(raw: dict, file: str) -> Rule:
    rule_id = raw.get("id", "<no id>")

    def fail(message: str) -> RuleError:
        return RuleError(f"{file}: rule {rule_id}: {message}")

    known = {"id", "kind", "source", "target", "signature", "args", "drop", "warn", "emit", "builder", "receiver",
             "helpers", "layout", "ignored_weights", "notes", "examples", "template", "assume", "verify"}
    if unknown := set(raw) - known:
        raise fail(f"unknown field(s) {sorted(unknown)}")
    for required in ("id", "kind", "source", "target"):
        if required not in raw:
            raise fail(f"missing field '{required}'")
    if raw["kind"] not in KINDS:
        raise fail(f"kind must be one of {KINDS}, not {raw['kind']!r}")
    if (raw["kind"] == "decorator") != (raw["target"] == "drop"):
        raise fail("kind 'decorator' and target 'drop' go together (a decorator without effect on eager code)")
    if raw["target"].split(".")[0] not in TARGET_ROOTS:
        raise fail(f"target {raw['target']!r} must start with one of {TARGET_ROOTS}")
    # A builder converts the call; a layer rule's builder may still name its class as the target
    # (e.g. "emitted.ChannelsFirstConvTranspose"), which is what the weight loader looks layouts up by.
    if raw["target"] == "builder" and "builder" not in raw:
        raise fail("target 'builder' needs a 'builder' field")
    if "builder" in raw and raw["target"] != "builder" and raw["kind"] != "layer":
        raise fail("a rule with a 'builder' field has target 'builder' (or, a layer rule, names its layer class)")
    if (raw["target"] == "expr") != ("template" in raw):
        raise fail("target 'expr' and a 'template' field go together")
    signature = tuple(_parse_param(p, fail) for p in raw.get("signature", []) if p != "*")
    signature = _mark_keyword_only(raw.get("signature", []), signature)
    names = {p.name for p in signature}
    args = {name: _parse_argmap(name, spec, fail) for name, spec in raw.get("args", {}).items()}
    warned = raw.get("warn", {}) if raw["kind"] != "constant" else {}  # a constant's warn keys are labels
    for name in [*args, *raw.get("drop", []), *warned]:
        if name not in names:
            raise fail(f"argument '{name}' is not in the signature {sorted(names)}")
    layout = {}
    for torch_name, spec in raw.get("layout", {}).items():
        if "to" not in spec or "layout" not in spec:
            raise fail(f"layout.{torch_name} needs 'to' and 'layout'")
        layout[torch_name] = WeightMap(spec["to"], spec["layout"])
    templates = raw.get("template", ())
    templates = (templates,) if isinstance(templates, str) else tuple(templates)
    for template in templates:
        for placeholder in _placeholders(template):
            if placeholder != "self" and placeholder not in names:
                raise fail(f"template placeholder {{{placeholder}}} is not in the signature {sorted(names)}")
    verify = tuple(_parse_verify(case, fail) for case in raw.get("verify", []))
    return Rule(
        id=rule_id,
        kind=raw["kind"],
        source=tuple(raw["source"]),
        target=raw["target"],
        signature=signature,
        args=args,
        drop=tuple(raw.get("drop", [])),
        warn=dict(raw.get("warn", {})),
        emit=dict(raw.get("emit", {})),
        builder=raw.get("builder"),
        receiver=raw.get("receiver", 0),
        helpers=tuple(raw.get("helpers", [])),
        layout=layout,
        ignored_weights=tuple(raw.get("ignored_weights", [])),
        notes=raw.get("notes", ""),
        examples=tuple(Example(e["before"], e["after"]) for e in raw.get("examples", [])),
        file=file,
        templates=templates,
        assume=raw.get("assume", ""),
        verify=verify,
    )


def _placeholders(template: str) -> list[str]:
    return re.findall(r"{(\w+)}", template)


def _parse_verify(raw, fail) -> VerifyCase:
    if not isinstance(raw, dict) or not isinstance(raw.get("code"), str):
        raise fail("each [[rule.verify]] needs a 'code' string")
    options = {k: v for k, v in raw.items() if k in VERIFY_OPTIONS}
    draws = tuple((k, v) for k, v in raw.items() if k not in VERIFY_OPTIONS)
    for name, _ in draws:
        if not name.isidentifier():
            raise fail(f"verify: {name!r} is not a name")
    if options.get("compare", "values") not in ("values", "shape"):
        raise fail("verify: compare must be 'values' or 'shape'")
    return VerifyCase(raw["code"], draws, options)


def _parse_param(text: str, fail) -> Param:
    name, _, default = text.partition("=")
    name = name.strip()
    var_positional = name.startswith("*")
    name = name.lstrip("*")
    if not name.isidentifier():
        raise fail(f"bad signature entry {text!r}")
    return Param(name, default.strip() or None, var_positional=var_positional)


def _mark_keyword_only(entries: list[str], params: tuple[Param, ...]) -> tuple[Param, ...]:
    """Parameters after a bare '*' or a '*args' entry are keyword-only."""
    out, keyword_only = [], False
    for param in params:
        out.append(Param(param.name, param.default, keyword_only, param.var_positional))
        if param.var_positional:
            keyword_only = True
    if "*" in entries:
        star = entries.index("*")
        after = {e.partition("=")[0].strip() for e in entries[star + 1:]}
        out = [Param(p.name, p.default, p.keyword_only or p.name in after, p.var_positional) for p in out]
    return tuple(out)


def _parse_argmap(name: str, spec, fail) -> ArgMap:
    if isinstance(spec, int):
        return ArgMap(position=spec)
    if isinstance(spec, str):
        return ArgMap(keyword=spec)
    if isinstance(spec, dict):
        if set(spec) - {"to", "transform", "always"}:
            raise fail(f"args.{name}: only 'to', 'transform' and 'always' are allowed")
        to = spec.get("to", name)
        return ArgMap(position=to if isinstance(to, int) else None,
                      keyword=to if isinstance(to, str) else None,
                      transform=spec.get("transform"), always=spec.get("always", False))
    raise fail(f"args.{name}: expected a keyword name, a position or a table")


def _check_unique(rules: list[Rule]) -> None:
    seen_ids: dict[str, str] = {}
    seen_symbols: dict[tuple[str, bool], str] = {}
    for rule in rules:
        if rule.id in seen_ids:
            raise RuleError(f"{rule.file}: rule id {rule.id} is also used in {seen_ids[rule.id]}")
        seen_ids[rule.id] = rule.file
        for symbol in rule.source:
            key = (symbol, rule.kind == "decorator")  # one rule as a decorator, one as a call
            if key in seen_symbols:
                raise RuleError(f"{rule.file}: rule {rule.id}: {symbol} is already converted by rule "
                                f"{seen_symbols[key]}")
            seen_symbols[key] = rule.id
