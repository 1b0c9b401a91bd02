"""Path relations every command checks before it writes: an output must not overlap an input."""

from __future__ import annotations

from pathlib import Path


def overlaps(a: str | Path, b: str | Path) -> bool:
    """Whether `a` and `b` are the same path or one lies inside the other (symlinks resolved).

    Writing to `a` (or, with --force, replacing it) could then change or delete `b`.
    """
    a, b = Path(a).resolve(), Path(b).resolve()
    return a == b or a in b.parents or b in a.parents
