"""Options and helpers shared by every CLI verb."""

from __future__ import annotations

import json
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
    return Workspace.open(path)


def print_settings(title: str, settings: dict[str, Any]) -> None:
    """Print the resolved settings of a verb before it runs (a habit worth having)."""
    table = Table(title=title, show_header=False, title_justify="left")
    for k, v in settings.items():
        table.add_row(str(k), v if isinstance(v, str) else json.dumps(v, default=str))
    console.print(table)


def fail(message: str) -> typer.Exit:
    """Print an error that says what to do, and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)   # one line, whatever the width
    return typer.Exit(code=2)
