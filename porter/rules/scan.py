"""`porter scan DIR`: which torch symbols a code base uses, how often, and which porter does not cover.

The symbols are counted with Python's ast: torch.X / F.X / nn.X names through
the file's own imports, and tensor method calls `x.name(...)` for names torch.Tensor
has (receivers that are `self`, an imported module or a string are not tensors;
names that builtin containers also have, such as `add` or `sort`, are not counted).
Whether porter covers a use is what `porter convert` does with it: the files are
converted (as `porter convert` would, a directory as a tree, nothing written), and a
use is not covered where the conversion reports an error at it (`torch.randint(...,
generator=g)`: PT004), covered otherwise, by a rule or by the passes (torch.no_grad,
clip_grad_norm_, backward, nn.init, manual_seed; torch.utils.data is kept).
"""

from __future__ import annotations

import ast
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from porter.convert.diagnostics import CODES, Severity
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
    sites: dict[str, list[tuple[str, int, int]]] = field(default_factory=lambda: defaultdict(list))  # (file, line, col)
    n_files: int = 0
    n_lines: int = 0
    unreadable: list[str] = field(default_factory=list)


def scan(paths: list[Path]) -> Usage:
    usage = Usage()
    for path in paths:
        files = _python_files(path) if path.is_dir() else [path]
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
                tree = ast.parse(text)
            except (SyntaxError, UnicodeDecodeError, ValueError):
                usage.unreadable.append(str(file))
                continue
            usage.n_files += 1
            usage.n_lines += text.count("\n")
            for symbol, line, col in _symbols(tree):
                usage.uses[symbol] += 1
                usage.files[symbol].add(str(file))
                usage.sites[symbol].append((str(file.resolve()), line, col))
    return usage


def _python_files(directory: Path) -> list[Path]:
    """The Python files `porter convert DIR` converts (no caches, environments or porter's own outputs)."""
    from porter.convert.tree import plan

    return [Path(task.path) for task in plan(directory).tasks if task.kind == "python"]


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
                yield name, node.lineno, node.col_offset + 1
                continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            if method in TENSOR_METHODS and method not in AMBIGUOUS and _maybe_tensor(node, imported, aliases):
                yield f"torch.Tensor.{method}", node.lineno, node.col_offset + 1


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


@dataclass
class Refusals:
    """What `porter convert` reports as errors in the scanned files: by position (file, line, col) the
    message, and the errors at no symbol's position (a training loop left unchanged: PT010) by code."""

    at: dict[tuple[str, int, int], str] = field(default_factory=dict)
    elsewhere: Counter = field(default_factory=Counter)


def refusals(paths: list[Path], usage: Usage, jobs: int | None = None) -> Refusals:
    """Converts the files as `porter convert` would (a directory as one tree, so that its files know
    each other's module classes), nothing written, and collects its errors."""
    from porter.convert.siblings import Siblings
    from porter.convert.tree import FAILURE_CODES, Task, convert_paths, convert_tree, plan

    found = Refusals()
    sites = {site for positions in usage.sites.values() for site in positions}
    for path in paths:
        if path.is_dir():
            tasks = [t for t in plan(path).tasks if t.kind == "python"]
            results = convert_tree(tasks, root_name=path.resolve().name, jobs=jobs)
        else:  # as `porter convert FILE`: with what the files it imports from define
            tasks = [Task(str(path), str(path), path.name, "python", tree=Siblings.of(path))]
            results = convert_paths(tasks, jobs=1)
        for task, result in zip(tasks, results):
            file = str(Path(task.path).resolve())
            if result.code is None:  # not converted at all (an internal error): none of its uses is covered
                failure = next((f"{d.code} {d.message}" for d in result.diagnostics), "not converted")
                found.at.update({site: failure for site in sites if site[0] == file})
                continue
            for d in result.diagnostics:
                if d.severity is not Severity.ERROR or d.code in FAILURE_CODES or d.code == "PT001":
                    continue
                if (file, d.line, d.col) in sites:
                    found.at.setdefault((file, d.line, d.col), f"{d.code} {d.message}")
                else:
                    found.elsewhere[d.code] += 1
    return found


def covered(symbol: str, rules: RuleSet) -> str | None:
    """The rule id converting symbol, 'module pass' for nn.Module, or None."""
    if symbol in STRUCTURAL:
        return "module pass"
    rule = rules.lookup(symbol)
    return rule.id if rule else None


def coverage(symbol: str, usage: Usage, rules: RuleSet, refused: Refusals) -> tuple[str | None, int, str]:
    """(what covers symbol's uses: a rule id, 'module pass', 'kept (PT011)' or 'porter's passes'; None when
    convert refuses every use), how many uses convert refuses, and the first reason it gives."""
    from porter.convert.passes.calls import KEPT_TORCH

    reasons = [refused.at[site] for site in usage.sites[symbol] if site in refused.at]
    why = reasons[0] if reasons else ""
    if len(reasons) == len(usage.sites[symbol]):
        return None, len(reasons), why
    if symbol.startswith(KEPT_TORCH):
        return "kept (PT011)", len(reasons), why
    return covered(symbol, rules) or "passes", len(reasons), why


def _coverage_text(rule: str | None, uses: int, refused: int, why: str) -> str:
    reason = f": {why if len(why) <= 100 else why[:99] + '…'}" if why else ""
    if rule is None:
        return f"-- not covered{reason}"
    if refused:
        return f"{rule}; -- {refused} of {uses} uses not covered{reason}"
    return rule


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
    parser.add_argument("-j", "--jobs", type=int, default=None,
                        help="processes to convert with, to learn what porter covers (default: every core)")
    parser.set_defaults(run=run_scan)


def run_scan(args) -> int:
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"porter scan: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.jobs is not None and args.jobs < 1:
        print("porter scan: --jobs must be at least 1", file=sys.stderr)
        return 2
    usage = scan(args.paths)
    rules = load_rules()
    refused = refusals(args.paths, usage, jobs=args.jobs)
    rows = [(symbol, n, len(usage.files[symbol]), *coverage(symbol, usage, rules, refused))
            for symbol, n in usage.uses.most_common()]
    total = sum(usage.uses.values())
    covered_uses = sum(n - n_refused for _, n, _, _, n_refused, _ in rows)
    summary = {"files": usage.n_files, "lines": usage.n_lines, "symbols": len(rows), "uses": total,
               "covered_symbols": sum(1 for r in rows if r[3] and not r[4]), "covered_uses": covered_uses,
               "not_converted_elsewhere": dict(sorted(refused.elsewhere.items())), "unreadable": usage.unreadable}
    shown = [r for r in rows if not (args.uncovered and r[3] and not r[4])]
    if args.top:
        shown = shown[:args.top]
    if args.json:
        json.dump({"summary": summary, "symbols": [
            {"symbol": s, "uses": n, "files": f, "rule": rule, "refused_uses": n_refused, "reason": why}
            for s, n, f, rule, n_refused, why in shown]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    width = max((len(s) for s, *_ in shown), default=10)
    print(f"{'symbol':<{width}}  {'uses':>6}  {'files':>5}  rule")
    for symbol, n, files, rule, n_refused, why in shown:
        print(f"{symbol:<{width}}  {n:>6}  {files:>5}  {_coverage_text(rule, n, n_refused, why)}")
    if refused.elsewhere:
        print("\nalso not converted (errors at no symbol's use): " + ", ".join(
            f"{n} {code} ({CODES[code].title})" for code, n in sorted(refused.elsewhere.items())))
    share = 100 * covered_uses / total if total else 100.0
    print(f"\n{usage.n_files} files, {usage.n_lines} lines: {len(rows)} torch symbols used {total} times; "
          f"porter covers {summary['covered_symbols']} symbols, {covered_uses} uses ({share:.0f}%); "
          f"{len(rows) - summary['covered_symbols']} symbols not covered")
    for path in usage.unreadable:
        print(f"{path}: not parsed (syntax error or not UTF-8)", file=sys.stderr)
    return 0
