"""`porter explain CODE`: what a diagnostic code (PT0xx) or a rule id (PT1xx and up) means."""

from __future__ import annotations

import sys

from porter.convert.diagnostics import CODES, DOCS


def add_explain_parser(commands) -> None:
    parser = commands.add_parser(
        "explain",
        help="explain a diagnostic code or a rule id",
        description="Print the documentation of a diagnostic code (PT001, PT003, ...) or of a conversion "
                    "rule (PT101 ...: what it converts, to what, and its examples). Without a code, list "
                    "the diagnostic codes.",
    )
    parser.add_argument("code", nargs="?", help="e.g. PT003 or PT101")
    parser.set_defaults(run=run_explain)


def run_explain(args) -> int:
    if not args.code:
        sys.stdout.write(code_table())
        return 0
    code = args.code.strip().upper()
    text = explain(code)
    if text is None:
        print(f"porter: error: {args.code}: no such diagnostic code or rule id "
              f"(`porter explain` lists the codes)", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def code_table() -> str:
    lines = ["code   severity  meaning"]
    lines += [f"{c.code}  {c.severity.value:<8}  {c.title}" for c in CODES.values()]
    lines.append("")
    lines.append("`porter explain CODE` says more; rule ids (PT101, ...) are explained the same way.")
    return "\n".join(lines) + "\n"


def explain(code: str) -> str | None:
    if code in CODES:
        return _explain_code(code)
    return _explain_rule(code)


def _explain_code(code: str) -> str:
    c = CODES[code]
    lines = [f"{c.code} ({c.severity.value}): {c.title}", ""]
    if code in DOCS:
        lines += [DOCS[code], ""]
    lines += [f"What to do: {c.hint}", ""]
    return "\n".join(lines)


def _explain_rule(code: str) -> str | None:
    from porter.rules.loader import load_rules

    rules = [r for r in load_rules().rules if r.id == code]
    if not rules:
        return None
    rule = rules[0]
    lines = [f"{rule.id}: rule ({rule.kind}) in rules/{rule.file}", "",
             f"converts: {', '.join(rule.source)}",
             f"into:     {rule.target}"]
    if rule.signature:
        params = ", ".join(p.name + (f"={p.default}" if p.default is not None else "") for p in rule.signature)
        lines.append(f"torch signature: ({params})")
    unmapped = [p.name for p in rule.signature if p.name not in rule.args and p.name not in rule.drop
                and p.name not in rule.warn and p.default is not None]
    if unmapped:
        lines.append(f"accepted only at their defaults (else PT004): {', '.join(unmapped)}")
    if rule.drop:
        lines.append(f"dropped: {', '.join(rule.drop)}")
    for name, warning in rule.warn.items():
        lines.append(f"warns (PT005) when {name} is not its default: {warning}")
    if rule.notes:
        lines += ["", rule.notes.strip()]
    for example in rule.examples:
        lines += ["", "example:", f"    {example.before}", f"    -> {example.after}"]
    lines.append("")
    return "\n".join(lines)
