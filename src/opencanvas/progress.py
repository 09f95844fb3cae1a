"""Progress for long work: a rich bar on a terminal, plain lines at a fixed interval in a log.

The bar (on stderr) shows when stderr is a terminal. When stdout is not a terminal
(`opencanvas train ... > train.log`, a CI job, a SLURM log), one line per task goes to
stdout every OPENCANVAS_PROGRESS_EVERY seconds (default 30): count, rate, ETA and the
mean since the last line of any number the stage passes as a field, e.g.

    train clipart-tiny: 4,800/9,600 img (50%), 41.2 img/s, ETA 0:01:56, loss 0.1873

A stage reports such numbers through the bar it already has:
`bar.update(task, completed=n, loss=value)`. OPENCANVAS_PROGRESS=0 turns both off,
=1 forces the bar on.
"""

from __future__ import annotations

import math
import os
import sys
import time
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)

DEFAULT_LINE_EVERY = 30.0  # seconds between progress lines off a terminal


class RateColumn(ProgressColumn):
    """Items per second, e.g. '412.3 it/s' (the unit is the task's `unit` field)."""

    def render(self, task: Task) -> str:
        unit = task.fields.get("unit", "it")
        return f"{task.speed:,.1f} {unit}/s" if task.speed else f"- {unit}/s"


class FieldsColumn(ProgressColumn):
    """The numbers a stage reports with its updates, e.g. 'loss 0.1873'."""

    def render(self, task: Task) -> str:
        return "  ".join(f"{k} {_number(v)}" for k, v in _numbers(task.fields).items())


def _numbers(fields: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in fields.items()
            if k != "unit" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(task: Task, rate: float | None, means: dict[str, float]) -> str:
    """One plain line for a log: description, count (of total), rate, ETA and the mean of each reported number."""
    unit = task.fields.get("unit", "it")
    done = int(task.completed)
    parts = [f"{done:,}/{int(task.total):,} {unit} ({100 * done / task.total:.0f}%)" if task.total
             else f"{done:,} {unit}"]
    if rate is not None:
        parts.append(f"{rate:,.1f} {unit}/s")
        if task.total and rate > 0 and done < task.total:
            parts.append(f"ETA {_clock((task.total - done) / rate)}")
    parts += [f"{k} {_number(v)}" for k, v in means.items()]
    return f"{task.description}: " + ", ".join(parts)


class StageProgress(Progress):
    """A rich Progress that also writes `progress_line`s to `lines_to` every `line_every` seconds."""

    def __init__(self, *columns: Any, line_every: float = 0.0, lines_to: TextIO | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.line_every = line_every
        self.lines_to = lines_to
        self._last_time = time.monotonic()
        self._last_done: dict[TaskID, float] = {}
        self._first_done: dict[TaskID, float] = {}
        self._last_seen: dict[TaskID, tuple[float, str]] = {}   # (count, description) in the last line
        self._sums: dict[TaskID, dict[str, list[float]]] = {}   # number -> [sum, count] since the last line
        self.lines_written = 0

    def add_task(self, description: str, start: bool = True, total: float | None = 100.0, completed: int = 0,
                 visible: bool = True, **fields: Any) -> TaskID:
        task_id = super().add_task(description, start=start, total=total, completed=completed, visible=visible,
                                   **fields)
        self._last_done[task_id] = self._first_done[task_id] = completed
        return task_id

    def update(self, task_id: TaskID, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, visible: bool | None = None,
               refresh: bool = False, **fields: Any) -> None:
        super().update(task_id, total=total, completed=completed, advance=advance, description=description,
                       visible=visible, refresh=refresh, **fields)
        sums = self._sums.setdefault(task_id, {})
        for k, v in _numbers(fields).items():
            if math.isfinite(v):   # a skipped step's NaN loss would poison the mean
                acc = sums.setdefault(k, [0.0, 0])
                acc[0] += v
                acc[1] += 1
        self._maybe_write()

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_write()

    def _maybe_write(self, force: bool = False) -> None:
        if self.lines_to is None or self.line_every <= 0:
            return
        now = time.monotonic()
        if not force and now - self._last_time < self.line_every:
            return
        elapsed = max(now - self._last_time, 1e-9)
        for task in self.tasks:
            if not task.visible or (task.completed, task.description) == self._last_seen.get(task.id):
                continue
            if force:   # the closing line: the rate over the whole task, not over a last sliver of time
                rate = (task.completed - self._first_done[task.id]) / max(task.elapsed or 0.0, 1e-9)
            else:
                rate = (task.completed - self._last_done.get(task.id, 0)) / elapsed
            sums = self._sums.pop(task.id, {})
            means = {k: s / n for k, (s, n) in sums.items() if n}
            print(progress_line(task, rate, means), file=self.lines_to, flush=True)
            self._last_done[task.id] = task.completed
            self._last_seen[task.id] = (task.completed, task.description)
            self.lines_written += 1
        self._last_time = now

    def __exit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                 exc_tb: TracebackType | None) -> None:
        # A closing line, so a log ends on the final count, but only where lines were written at all.
        if self.lines_written and exc_type is None:
            self._maybe_write(force=True)
        super().__exit__(exc_type, exc_val, exc_tb)


def line_interval() -> float:
    """Seconds between progress lines off a terminal (OPENCANVAS_PROGRESS_EVERY; 0: none)."""
    try:
        return max(0.0, float(os.environ.get("OPENCANVAS_PROGRESS_EVERY", DEFAULT_LINE_EVERY)))
    except ValueError:
        return DEFAULT_LINE_EVERY


def progress_bar(disable: bool | None = None) -> StageProgress:
    """A progress bar with count, rate, ETA and reported numbers; plain lines when stdout is not a terminal.

    The bar is off when stderr is not a terminal (CI logs stay short). disable=True silences both (e.g. ranks
    other than 0); OPENCANVAS_PROGRESS=0 too, and =1 forces the bar on.
    """
    forced = os.environ.get("OPENCANVAS_PROGRESS")
    quiet = disable is True or forced == "0"
    if disable is None:
        disable = (forced == "0") if forced is not None else not sys.stderr.isatty()
    lines = not quiet and not sys.stdout.isatty()
    return StageProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        FieldsColumn(),
        console=console,
        disable=disable,
        transient=False,
        line_every=line_interval() if lines else 0.0,
        lines_to=sys.stdout if lines else None,
    )
