"""Options and helpers shared by every CLI verb."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from opencanvas.workspace import Workspace

console = Console()

WorkspaceOption = Annotated[
    Path,
    typer.Option(
        "-w", "--workspace",
        help="Workspace directory (created if missing). Default: the current directory.",
        envvar="OPENCANVAS_WORKSPACE",
        file_okay=False,
    ),
]


def open_workspace(path: Path) -> Workspace:
    """Open the workspace, saying so when the directory is new (a mistyped -w would otherwise pass unseen)."""
    new = not Path(path).expanduser().exists()
    ws = Workspace.open(path)
    if new and os.environ.get("RANK", "0") == "0":
        console.print(f"[yellow]created a new, empty workspace at {ws.root}[/] (check the -w spelling if you "
                      "meant an existing one)", soft_wrap=True)
    return ws


def rounded(value: Any, digits: int = 4) -> Any:
    """Floats to `digits` significant digits, inside dicts and lists too (17.94586798299997 -> 17.95)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def print_settings(title: str, settings: dict[str, Any]) -> None:
    """Print the resolved settings of a verb before it runs (a habit worth having).

    Floats are rounded; a value still None is the stage's own default, shown as such rather than `null`.
    """
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column()
    table.add_column(overflow="fold")   # hashes and paths whole, over two lines if need be
    for k, v in settings.items():
        v = rounded(v)
        text = v if isinstance(v, str) else "(default)" if v is None else json.dumps(v, default=str)
        table.add_row(str(k), text)
    console.print(table)


def fail(message: str) -> typer.Exit:
    """Print an error that says what to do, and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)   # one line, whatever the width
    return typer.Exit(code=2)
