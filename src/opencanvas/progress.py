"""Rich progress bars for long work (quiet when not on a terminal or under tests)."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, e.g. '412.3 it/s' (the unit is the task's `unit` field)."""

    def render(self, task: Task) -> str:
        unit = task.fields.get("unit", "it")
        return f"{task.speed:,.1f} {unit}/s" if task.speed else f"- {unit}/s"


def progress_bar(disable: bool | None = None) -> Progress:
    """A progress bar with count, rate-friendly columns and ETA.

    Disabled automatically when stderr is not a terminal (CI logs stay short),
    unless OPENCANVAS_PROGRESS=1 forces it on.
    """
    if disable is None:
        forced = os.environ.get("OPENCANVAS_PROGRESS")
        disable = (forced == "0") if forced is not None else not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=False,
    )
