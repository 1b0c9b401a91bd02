"""`porter rules`: the rule table (id, torch symbol, target, verified).

A symbol counts as verified when a `[[rule.verify]]` case of its rule calls it
(a constant such as torch.float16: when any case uses it); the property tests
(tests/test_rules_verify.py) run every case against torch.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from dataclasses import dataclass

from porter.rules.loader import Rule, RuleSet, VerifyCase, load_rules

ALIASES = {"torch": "torch", "F": "torch.nn.functional", "nn": "torch.nn"}


def case_symbols(case: VerifyCase) -> set[str]:
    """The torch symbols a case's code uses: torch.X / F.X / nn.X, tensor methods, x[i] = v."""
    code = re.sub(r"{(\w+)}", r"\1", case.code)
    if "return" not in code:
        code = f"return {code}"
    tree = ast.parse("def f():\n" + "\n".join("    " + line for line in code.strip().splitlines()))
    symbols: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = _qualified(node)
            if name:
                symbols.add(name)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and not _qualified(node.func):
            symbols.add(f"torch.Tensor.{node.func.attr}")
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Subscript) for t in targets):
                symbols.add("torch.Tensor.__setitem__")
    for _, spec in case.draws:  # raw('torch.float16', ...) values are written into the code as they are
        if isinstance(spec, str) and "raw(" in spec:
            symbols.update(re.findall(r"['\"](torch\.[\w.]+)['\"]", spec))
    return symbols


def _qualified(node: ast.AST) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in ALIASES:
        return ".".join([ALIASES[node.id], *reversed(parts)])
    return None


@dataclass(frozen=True)
class Row:
    id: str
    symbol: str
    target: str
    verified: bool
    file: str


def rows(rules: RuleSet | None = None) -> list[Row]:
    rules = rules or load_rules()
    used_anywhere = set().union(*(case_symbols(c) for r in rules.rules for c in r.verify)) if rules.rules else set()
    out = []
    for rule in rules.rules:
        own = set().union(*(case_symbols(c) for c in rule.verify)) if rule.verify else set()
        for symbol in rule.source:
            verified = symbol in own or (rule.kind == "constant" and symbol in used_anywhere) \
                or (reexported(symbol) in rule.source and reexported(symbol) in own)
            out.append(Row(rule.id, symbol, _target(rule), verified, rule.file))
    return out


def reexported(symbol: str) -> str:
    """torch.nn.modules.conv.Conv2d is the object torch.nn.Conv2d names (likewise torch.nn.parameter.Parameter):
    a case that uses one checks the other."""
    parts = symbol.split(".")
    if parts[:3] == ["torch", "nn", "modules"] and len(parts) == 5 or parts[:3] == ["torch", "nn", "parameter"]:
        return f"torch.nn.{parts[-1]}"
    return symbol


def _target(rule: Rule) -> str:
    if rule.builder:
        return rule.builder.rsplit(".", 1)[-1] + "()"
    if rule.templates:
        return rule.templates[0]
    return rule.target


def verified_symbols(rules: RuleSet | None = None) -> set[str]:
    return {row.symbol for row in rows(rules) if row.verified}


# ------------------------------------------------------------------ CLI
def add_rules_parser(commands) -> None:
    parser = commands.add_parser(
        "rules", help="list the conversion rules",
        description="List every torch symbol porter converts: rule id, symbol, target and whether a property "
                    "test checks it against torch.")
    parser.add_argument("--unverified", action="store_true", help="only the symbols no property test checks")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.add_argument("symbol", nargs="?", help="only symbols containing this text (e.g. 'linalg', 'pad')")
    parser.set_defaults(run=run_rules)


def run_rules(args) -> int:
    table = rows()
    shown = [r for r in table if (not args.unverified or not r.verified) and (not args.symbol or args.symbol in r.symbol)]
    out = sys.stdout
    if args.json:
        for r in shown:
            out.write(json.dumps(r.__dict__) + "\n")
        return 0
    width = max((len(r.symbol) for r in shown), default=10)
    out.write(f"{'id':<7} {'symbol':<{width}}  {'verified':<8}  target\n")
    for r in shown:
        target = r.target if len(r.target) <= 70 else r.target[:67] + "..."
        out.write(f"{r.id:<7} {r.symbol:<{width}}  {'yes' if r.verified else 'no':<8}  {target}\n")
    verified = sum(r.verified for r in table)
    out.write(f"\n{len(table)} symbols in {len({r.id for r in table})} rules; {verified} verified against torch\n")
    return 0
