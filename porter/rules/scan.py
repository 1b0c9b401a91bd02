"""`porter scan DIR`: which torch symbols a code base uses, how often, and which porter does not cover.

Static and fast (Python's ast, no conversion): torch.X / F.X / nn.X names through
the file's own imports, and tensor method calls `x.name(...)` for names torch.Tensor
has (receivers that are `self`, an imported module or a string are not tensors;
names that builtin containers also have, such as `add` or `sort`, are not counted).
"""

from __future__ import annotations

import ast
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from porter.rules.loader import RuleSet, load_rules

TENSOR_METHODS = frozenset(
    line.strip() for line in (Path(__file__).parent / "tensor_methods.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#"))
_BUILTIN_METHODS = {n for t in (list, dict, set, str, bytes, int, float, tuple, frozenset) for n in dir(t)}
# attributes and methods too common on other objects to count as tensor use
AMBIGUOUS = frozenset(_BUILTIN_METHODS - {"split"}) | {"data", "apply", "type", "names", "to", "cpu", "cuda", "float"}
# handled by the module pass rather than a rule
STRUCTURAL = {"torch.nn.Module", "torch.nn.modules.module.Module"}


@dataclass
class Usage:
    uses: Counter = field(default_factory=Counter)
    files: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    n_files: int = 0
    n_lines: int = 0
    unreadable: list[str] = field(default_factory=list)


def scan(paths: list[Path]) -> Usage:
    usage = Usage()
    for path in paths:
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
                tree = ast.parse(text)
            except (SyntaxError, UnicodeDecodeError, ValueError):
                usage.unreadable.append(str(file))
                continue
            usage.n_files += 1
            usage.n_lines += text.count("\n")
            for symbol in _symbols(tree):
                usage.uses[symbol] += 1
                usage.files[symbol].add(str(file))
    return usage


def _aliases(tree: ast.Module) -> tuple[dict[str, str], set[str]]:
    aliases: dict[str, str] = {}
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                local = alias.asname or alias.name.split(".")[0]
                imported.add(local)
                if alias.name.split(".")[0] == "torch":
                    aliases[local] = alias.name if alias.asname else "torch"
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                local = alias.asname or alias.name
                imported.add(local)
                if node.module.split(".")[0] == "torch":
                    aliases[local] = f"{node.module}.{alias.name}"
    return aliases, imported


def _symbols(tree: ast.Module):
    aliases, imported = _aliases(tree)
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            inner.add(id(node.value))
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                inner.add(id(alias))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)) and id(node) not in inner:
            name = _qualified(node, aliases)
            if name and name != "torch":
                yield name
                continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if method in TENSOR_METHODS and method not in AMBIGUOUS and _maybe_tensor(node, imported, aliases):
                yield f"torch.Tensor.{method}"


def _qualified(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in aliases:
        return ".".join([aliases[node.id], *reversed(parts)])
    return None


def _maybe_tensor(call: ast.Call, imported: set[str], aliases: dict[str, str]) -> bool:
    receiver = call.func.value
    if _qualified(receiver, aliases) is not None:
        return False  # torch.nn.init.zeros_(...) and friends are symbols, not methods
    if any(isinstance(a, ast.Constant) and isinstance(a.value, (str, bytes)) for a in call.args):
        return False
    if isinstance(receiver, ast.Constant):
        return False
    head = receiver
    while isinstance(head, ast.Attribute):
        head = head.value
    if isinstance(head, ast.Name) and head.id in imported:
        return False  # np.split(a), os.path.split(p): a function of an imported module
    return not (isinstance(receiver, ast.Name) and receiver.id == "self")


def covered(symbol: str, rules: RuleSet) -> str | None:
    """The rule id converting symbol, 'module pass' for nn.Module, or None."""
    if symbol in STRUCTURAL:
        return "module pass"
    rule = rules.lookup(symbol)
    return rule.id if rule else None


# ------------------------------------------------------------------ CLI
def add_scan_parser(commands) -> None:
    parser = commands.add_parser(
        "scan", help="which torch symbols a code base uses, and which porter does not convert",
        description="Count the torch symbols (functions, layers, constants, tensor methods) that Python files use, "
                    "and say which have a porter rule: the to-do list for converting a code base.")
    parser.add_argument("paths", nargs="+", type=Path, help="files or directories")
    parser.add_argument("--uncovered", action="store_true", help="only symbols porter does not convert")
    parser.add_argument("--top", type=int, default=0, help="only the N most used symbols")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.set_defaults(run=run_scan)


def run_scan(args) -> int:
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"porter scan: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    usage = scan(args.paths)
    rules = load_rules()
    rows = [(symbol, n, len(usage.files[symbol]), covered(symbol, rules)) for symbol, n in usage.uses.most_common()]
    total = sum(usage.uses.values())
    covered_uses = sum(n for _, n, _, rule in rows if rule)
    summary = {"files": usage.n_files, "lines": usage.n_lines, "symbols": len(rows), "uses": total,
               "covered_symbols": sum(1 for r in rows if r[3]), "covered_uses": covered_uses,
               "unreadable": usage.unreadable}
    shown = [r for r in rows if not (args.uncovered and r[3])]
    if args.top:
        shown = shown[:args.top]
    if args.json:
        json.dump({"summary": summary, "symbols": [
            {"symbol": s, "uses": n, "files": f, "rule": rule} for s, n, f, rule in shown]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    width = max((len(s) for s, *_ in shown), default=10)
    print(f"{'symbol':<{width}}  {'uses':>6}  {'files':>5}  rule")
    for symbol, n, files, rule in shown:
        print(f"{symbol:<{width}}  {n:>6}  {files:>5}  {rule or '-- not covered'}")
    share = 100 * covered_uses / total if total else 100.0
    print(f"\n{usage.n_files} files, {usage.n_lines} lines: {len(rows)} torch symbols used {total} times; "
          f"porter covers {summary['covered_symbols']} symbols, {covered_uses} uses ({share:.0f}%); "
          f"{len(rows) - summary['covered_symbols']} symbols not covered")
    for path in usage.unreadable:
        print(f"{path}: not parsed (syntax error or not UTF-8)", file=sys.stderr)
    return 0
