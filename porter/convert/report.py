"""The conversion report: porter_report.txt for people, porter_report.json for tools.

Both say the same, in the same order: the summary first (files converted
cleanly, with issues, skipped, failed; issues by code), then every warning
and error as `path:line:col CODE severity message` with its hint, then the
notes (info), then every change made. The JSON schema ("porter-report/1") is
documented in the README; fields are only ever added to it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from porter.convert.diagnostics import CODES, Severity
from porter.convert.tree import REPORT_NAMES, FileResult, write_bytes_atomically

SCHEMA = "porter-report/1"
STATUSES = ("clean", "issues", "skipped", "failed")
STATUS_TEXT = {
    "clean": "converted cleanly",
    "issues": "converted with issues",
    "skipped": "skipped (nothing to convert)",
    "failed": "failed (not converted, not written)",
}
_SEVERITY_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


def porter_version() -> str:
    try:
        from importlib.metadata import version
        return version("porter")
    except Exception:  # not installed (a source checkout on the path)
        return "unknown"


def build(results: list[FileResult], *, source: str, output: str | None, mode: str,
          copied: list[str] = (), version: str = "", removed: list[str] = (),
          not_read: list[tuple[str, str]] = ()) -> dict:
    """The report as JSON-ready data; files, copied and removed sorted by relative path.

    `removed` (a field only when not empty): outputs of an earlier run deleted because their file
    failed this time (--force). `not_read` (likewise): (relative path, why) for what the tree holds
    that porter did not read: symlinks, files that are not regular files, its own backups."""
    results = sorted(results, key=lambda r: r.relative)
    statuses = Counter(r.status for r in results)
    diagnostics = [d for r in results for d in r.diagnostics]
    by_code = Counter(d.code for d in diagnostics)
    by_severity = Counter(d.severity.value for d in diagnostics)
    report = {
        "schema": SCHEMA,
        "porter_version": version,
        "mode": mode,
        "source": source,
        "output": output,
        "summary": {
            "files": len(results),
            **{status: statuses.get(status, 0) for status in STATUSES},
            "copied": len(copied),
            "changes": sum(len(r.changes) for r in results),
            "by_severity": {s.value: by_severity.get(s.value, 0) for s in Severity},
            "by_code": {code: by_code[code] for code in sorted(by_code)},
        },
        "codes": {code: {"severity": CODES[code].severity.value, "title": CODES[code].title,
                         "hint": CODES[code].hint} for code in sorted(by_code) if code in CODES},
        "files": [
            {
                "path": r.display,
                "relative": r.relative,
                "kind": r.kind,
                "status": r.status,
                "changed": r.changed,
                "error": r.error,
                "diagnostics": [d.to_json() for d in r.diagnostics],
                "changes": [{"path": where, "rule": c.rule, "line": c.line, "col": c.col,
                             "before": c.before, "after": c.after} for where, c in r.changes],
            }
            for r in results
        ],
        "copied": sorted(copied),
    }
    if removed:  # a field only when there are some
        report["removed"] = sorted(removed)
    if not_read:
        report["not_read"] = [{"relative": relative, "reason": why} for relative, why in sorted(not_read)]
    return report


def text(report: dict) -> str:
    """The report for people: summary, warnings and errors with hints, notes, changes."""
    summary = report["summary"]
    lines = ["porter conversion report", "=" * 24, f"source: {report['source']}"]
    if report["output"]:
        lines.append(f"output: {report['output']}")
    lines += ["", "Summary", "-------",
              f"{summary['files']} Python file(s) and notebook(s); {summary['copied']} other file(s) copied"]
    width = max(len(t) for t in STATUS_TEXT.values())
    for status in STATUSES:
        lines.append(f"  {STATUS_TEXT[status]:<{width}}  {summary[status]}")
    lines.append(f"  {'changes made':<{width}}  {summary['changes']}")
    removed = report.get("removed", [])
    if removed:
        lines.append(f"{len(removed)} output(s) of an earlier run removed: their file failed this time")
        lines.extend(f"  {path}" for path in removed)
    not_read = report.get("not_read", [])
    if not_read:
        lines.append(f"{len(not_read)} path(s) not read (symlinks, files that are not regular files, porter's own):")
        lines.extend(f"  {entry['relative']}: {entry['reason']}" for entry in not_read)
    if summary["by_code"]:
        lines += ["", "Diagnostics by code (errors, warnings, then notes):"]
        codes = report["codes"]
        for code, count in sorted(summary["by_code"].items(),
                                  key=lambda kv: (_SEVERITY_ORDER[Severity(codes[kv[0]]["severity"])], kv[0])):
            lines.append(f"  {code} {codes[code]['severity']:<7} {count:>5}  {codes[code]['title']}")
    else:
        lines += ["", "No diagnostics."]
    diagnostics = [d for f in report["files"] for d in f["diagnostics"]]
    serious = [d for d in diagnostics if d["severity"] != "info"]
    lines += ["", "Warnings and errors", "-------------------"]
    if serious:
        for d in serious:
            lines.append(_diagnostic_line(d))
            lines.append(f"    hint: {d['hint']}")
    else:
        lines.append("none")
    notes = [d for d in diagnostics if d["severity"] == "info"]
    if notes:
        lines += ["", "Notes", "-----"]
        lines.extend(_diagnostic_line(d) for d in notes)
    lines += ["", "Changes", "-------"]
    changes = [c for f in report["files"] for c in f["changes"]]
    if changes:
        lines.extend(f"{c['path']}:{c['line']}:{c['col']} {c['rule']} {c['before']!r} -> {c['after']!r}"
                     for c in changes)
    else:
        lines.append("none")
    return "\n".join(lines) + "\n"


def _diagnostic_line(d: dict) -> str:
    return f"{d['path']}:{d['line']}:{d['col']} {d['code']} {d['severity']} {d['message']}"


def write(report: dict, directory: Path) -> list[Path]:
    """porter_report.txt and porter_report.json in `directory`, each written atomically."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    txt, js = (directory / name for name in REPORT_NAMES)
    write_bytes_atomically(txt, text(report).encode("utf-8"))
    write_bytes_atomically(js, (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))
    return [txt, js]
