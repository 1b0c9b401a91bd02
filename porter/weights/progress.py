"""A progress bar for long conversions: tensors and bytes, on a terminal only.

Uses rich (already installed: flax depends on it). Nothing is printed when
stderr is not a terminal (CI logs, pipes) or when disabled.
"""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """`with Progress(n_tensors, n_bytes, enabled=None) as p: p.advance(nbytes)`; enabled=None: stderr is a TTY."""

    def __init__(self, tensors: int, nbytes: int, *, description: str = "converting", enabled: bool | None = None):
        self.tensors, self.nbytes = tensors, nbytes
        self.done = 0
        if enabled is None:
            enabled = sys.stderr.isatty()
        self._bar: Any = None
        self._task: Any = None
        if enabled:
            try:
                from rich.console import Console
                from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress, TextColumn,
                                           TimeRemainingColumn, TransferSpeedColumn)
            except ImportError:  # rich is flax's dependency; without it, no bar
                return
            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(),
                TextColumn("{task.fields[done]}/{task.fields[tensors]} tensors"),
                DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(description, total=max(nbytes, 1), done=0, tensors=tensors)

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def advance(self, nbytes: int, tensors: int = 1) -> None:
        self.done += tensors
        if self._bar is not None:
            self._bar.update(self._task, advance=nbytes, done=self.done)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
