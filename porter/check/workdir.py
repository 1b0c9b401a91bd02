"""A working directory of its own for each run of `porter check --script`.

Both scripts would otherwise run in the caller's directory and write the same relative paths: torch's
`out/ckpt.pt` is a pickle file, the converted script's an Orbax directory of the same name, and a script
that resumes when its checkpoint exists would have the converted run resume from torch's. Each run gets a
mirror of the caller's directory instead: its directories recreated, its files linked, so whatever the
script reads relative to its directory (`data/...`, `config/...`, an earlier checkpoint) is there, and what
it creates stays in the run's own directory (thrown away with the check's temporary directory).

A file that existed before and that the script rewrites in place is written through its link, as it would
be in the caller's directory. Hidden directories, virtual environments and whatever lies beyond
MIRRORED_ENTRIES entries are linked whole rather than mirrored.
"""

from __future__ import annotations

import os
from pathlib import Path

MIRRORED_ENTRIES = 20_000


def mirror(source: Path, target: Path, *, leave_out: Path) -> Path:
    """`target` (created) mirroring `source`: directories recreated, everything else a symbolic link;
    `leave_out` (the check's own temporary directory, when the caller works in /tmp) is not mirrored."""
    budget = [MIRRORED_ENTRIES]
    target.mkdir(parents=True)
    _mirror_entries(source.resolve(), target, budget, str(leave_out.resolve()))
    return target


def _mirror_entries(source: Path, target: Path, budget: list[int], leave_out: str) -> None:
    try:
        entries = sorted(os.scandir(source), key=lambda entry: entry.name)
    except OSError:
        return
    for entry in entries:
        budget[0] -= 1
        if entry.path == leave_out:
            continue
        link = target / entry.name
        if entry.is_dir(follow_symlinks=False) and budget[0] > 0 and not _linked_whole(Path(entry.path)):
            link.mkdir()
            _mirror_entries(Path(entry.path), link, budget, leave_out)
        else:
            link.symlink_to(entry.path)


def _linked_whole(directory: Path) -> bool:
    return directory.name.startswith(".") or directory.name == "__pycache__" or (directory / "pyvenv.cfg").exists()
