"""Where `porter weights` writes: checked before anything is read or written, replaced only when safe.

- An output equal to, inside, or containing a file the conversion reads (the
  checkpoint, a sharded index and each of its shards) is refused, force or not:
  replacing OUT as a whole would delete the input (porter.paths.overlaps, the
  check `porter convert` makes).
- An existing OUT is replaced only with force, and only if it is what porter
  itself writes in that format: a safetensors file, a torch.save zip, or an
  Orbax checkpoint directory (Orbax's `_METADATA` and nothing but Orbax's own
  entries). Anything else (a directory of other files, a file of another kind,
  a symbolic link) is refused with the reason, even with force.
- Outputs are written under temporary names beside OUT (`.OUT.tmp-PID-XXXXXXXX`,
  `OUT.porter-tmp-PID-XXXXXXXX...`) and renamed into place. A run that was killed
  leaves them behind; the next run for the same OUT removes those of porter's
  naming whose process is gone (stale_temporaries), and nothing else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import zipfile
from collections.abc import Iterable
from pathlib import Path

from porter.paths import overlaps


class OutputError(ValueError):
    """The output cannot be written where asked; the message says what is there and what to do."""


# What an Orbax checkpoint directory holds at its top level (pytree metadata, OCDBT manifest and data, the
# per-process OCDBT stores, array metadata, checkpoint-level metadata).
ORBAX_ENTRIES = re.compile(r"_METADATA|_CHECKPOINT_METADATA|_ROOT_METADATA|_sharding|manifest\.ocdbt|d|"
                           r"array_metadatas|descriptor|commit_success\.txt|ocdbt\.process_[0-9A-Za-z_.-]+")


def temp_sibling(path: Path) -> Path:
    """A fresh temporary name beside `path`, of porter's naming (stale_temporaries knows it)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def orbax_temp(path: Path) -> Path:
    """The temporary Orbax checkpoint beside `path` (Orbax's partial saving mishandles names that start with
    a dot, so it is visible; Orbax adds suffixes to it)."""
    return path.with_name(f"{path.name}.porter-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _temp_pattern(output: Path) -> re.Pattern:
    name = re.escape(output.name)
    return re.compile(rf"(?:\.{name}\.tmp|{name}\.porter-tmp)-(?P<pid>\d+)-[0-9a-f]{{8}}(?:\..+)?")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # another user's process (or not ours to judge): keep its files
    return True


def stale_temporaries(output: Path) -> list[Path]:
    """Temporaries of porter's naming beside `output` left by runs whose process no longer exists."""
    parent = output.absolute().parent
    pattern = _temp_pattern(output)
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    return sorted(p for p in entries
                  if (m := pattern.fullmatch(p.name)) and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])))


def remove_stale_temporaries(output: Path) -> list[str]:
    """Remove stale_temporaries(output); their names, for a note."""
    removed = []
    for path in stale_temporaries(output):
        remove(path)
        removed.append(path.name)
    return removed


def check_output(output: Path, fmt: str, inputs: Iterable[str | Path], *, force: bool) -> None:
    """Raise OutputError (or FileExistsError without force) unless `output` may be written (module docstring).

    `fmt`: "orbax", "safetensors" or "torch" (a torch.save file).
    """
    for source in inputs:
        if overlaps(output, source):
            relation = _relation(output, Path(source))
            what = "checkpoint" if Path(source).is_dir() else "checkpoint file"
            raise OutputError(f"{output} {relation} the {what} {source}: writing it would replace the input. "
                              f"Choose an output outside the checkpoint (-o elsewhere)")
    if not output.absolute().parent.is_dir():
        raise OutputError(f"{output}: the directory {output.absolute().parent} does not exist")
    if not (output.exists() or output.is_symlink()):
        return
    if not force:
        raise FileExistsError(f"{output} exists; use --force (force=True) to replace it")
    reason = _not_replaceable(output, fmt)
    if reason:
        raise OutputError(f"{output} exists and is {reason}: --force replaces only what porter writes in this "
                          f"format ({_WHAT[fmt]}). Remove it yourself, or choose another -o")


_WHAT = {"orbax": "an Orbax checkpoint directory", "safetensors": "a safetensors file",
         "torch": "a torch.save zip file"}


def _relation(output: Path, source: Path) -> str:
    out, src = output.resolve(), source.resolve()
    return "is" if out == src else "contains" if out in src.parents else "is inside"


def _not_replaceable(target: Path, fmt: str) -> str | None:
    """Why `target` is not what porter writes as `fmt` (None: it is, or it is empty, and may be replaced)."""
    if target.is_symlink():
        return "a symbolic link"
    if fmt == "orbax":
        if not target.is_dir():
            return "not a directory (an Orbax checkpoint is one)"
        return _not_orbax(target)
    if target.is_dir():
        return f"a directory, where this output is a file ({_WHAT[fmt]})"
    if not target.is_file():
        return "not a regular file"
    if target.stat().st_size == 0:
        return None
    if fmt == "safetensors":
        from porter.weights.safetensors_io import SafetensorsFormatError, read_header

        try:
            read_header(target)
        except (SafetensorsFormatError, OSError):
            return "not a safetensors file"
        return None
    try:
        with zipfile.ZipFile(target) as archive:
            if any(n == "data.pkl" or n.endswith("/data.pkl") for n in archive.namelist()):
                return None
    except (zipfile.BadZipFile, OSError):
        pass
    return "not a torch.save file"


def _not_orbax(directory: Path) -> str | None:
    entries = sorted(p.name for p in directory.iterdir())
    if not entries:
        return None
    try:
        metadata = json.loads((directory / "_METADATA").read_text(encoding="utf-8"))
        if not isinstance(metadata, dict) or "tree_metadata" not in metadata:
            raise ValueError("no tree_metadata")
    except (OSError, ValueError, UnicodeDecodeError):
        return f"a directory that is not an Orbax checkpoint (no Orbax _METADATA; it holds {_listing(entries)})"
    foreign = [name for name in entries if not ORBAX_ENTRIES.fullmatch(name)]
    if foreign:
        return f"an Orbax checkpoint directory that also holds other files ({_listing(foreign)})"
    return None


def _listing(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def replace_into(temp: Path, target: Path, *, force: bool) -> None:
    """Rename temp to target; an existing target (checked by check_output before) is replaced only with force."""
    if target.exists() or target.is_symlink():
        if not force:
            raise FileExistsError(f"{target} exists (use --force / force=True to replace it)")
        if target.is_dir() and not target.is_symlink():
            old = temp_sibling(target)
            os.replace(target, old)
            os.replace(temp, target)
            shutil.rmtree(old, ignore_errors=True)
            return
    os.replace(temp, target)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
