"""Progress of long work: rich's live bars on a terminal, periodic plain lines on stderr otherwise.

A live bar redrawn with carriage returns is noise in a log file, a CI job or a pipe (rich prints nothing useful
there, or blank lines), so off a terminal each task prints `description: done/total (pct) elapsed` at most
every `PERIOD_S` seconds and once when it finishes. The API is the small part of `rich.progress` the
project uses (`Progress.add_task / advance / update`, `track`), so call sites only change their import.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
# Often enough to show a run is alive, rare enough that a long training log stays readable.
PERIOD_S = 30.0
# Set in the non-main processes of a multi-process run: only the main process shows progress.
_SILENT = False


def silence(on: bool = True) -> None:
    """Turn every progress bar and line of this process off (on=True) or back on."""
    global _SILENT
    _SILENT = on


def interactive() -> bool:
    """True when stderr (where progress goes) is a terminal."""
    return sys.stderr.isatty()


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    start: float = field(default_factory=time.monotonic)
    last_line: float = field(default_factory=time.monotonic)
    finished: bool = False


class Progress:
    """`rich.progress.Progress` on a terminal; plain periodic lines elsewhere; nothing when `disable`."""

    def __init__(self, *columns: Any, disable: bool = False, transient: bool = False, period_s: float = PERIOD_S,
                 **kwargs: Any):
        self.disable = disable = disable or _SILENT
        self.period_s = period_s
        self._tasks: dict[int, _Task] = {}
        self._rich: Any = None
        if not disable and interactive():
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(*columns, transient=transient, console=Console(stderr=True), **kwargs)

    @property
    def console(self) -> Any:
        """Where notes beside the bars go (stderr), as with rich's `Progress.console`."""
        if self._rich is not None:
            return self._rich.console
        from rich.console import Console

        return Console(stderr=True)

    def __enter__(self) -> Progress:
        if self._rich is not None:
            self._rich.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
            return
        if exc[0] is None:
            for task in self._tasks.values():
                if not task.finished and task.completed:
                    self._line(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        task_id = len(self._tasks)
        self._tasks[task_id] = _Task(description, total, completed)
        if self._rich is not None:
            return self._rich.add_task(description, total=total, completed=completed, **fields)
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               total: float | None = None, description: str | None = None, **fields: Any) -> None:
        if self._rich is not None:
            self._rich.update(task_id, completed=completed, advance=advance, total=total, description=description,
                              **fields)
            return
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if description is not None:
            task.description = description
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        done = task.total is not None and task.completed >= task.total
        if self.disable or task.finished:
            return
        if done or time.monotonic() - task.last_line >= self.period_s:
            self._line(task)
            task.finished = done

    def _line(self, task: _Task) -> None:
        if self.disable:
            return
        task.last_line = time.monotonic()
        elapsed = task.last_line - task.start
        count = f"{task.completed:g}/{task.total:g} ({task.completed / task.total:.0%})" if task.total else \
            f"{task.completed:g}"
        print(f"{task.description}: {count}, {elapsed:.0f} s", file=sys.stderr, flush=True)


def track(sequence: Sequence[T] | Iterable[T], description: str = "working", total: float | None = None,
          transient: bool = False, disable: bool = False, period_s: float = PERIOD_S) -> Iterator[T]:
    """Iterate `sequence` with a progress bar (or plain lines off a terminal), like `rich.progress.track`."""
    if total is None and hasattr(sequence, "__len__"):
        total = len(sequence)  # type: ignore[arg-type]
    with Progress(disable=disable, transient=transient, period_s=period_s) as bar:
        task = bar.add_task(description, total=total)
        for item in sequence:
            yield item
            bar.advance(task)
