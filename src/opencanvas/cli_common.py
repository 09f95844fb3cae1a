"""Options and helpers shared by every CLI verb."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from opencanvas.workspace import Workspace, check_name

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


# How to make each kind of thing a verb may need (for "not found" errors).
MAKE = {
    "subset": "make one with `opencanvas catalog subset --policy commercial --name {name}`",
    "captions": "caption the subset with `opencanvas caption --subset SUBSET --captioner {name}`",
    "latents": "encode one with `opencanvas encode --subset SUBSET ... --name {name}`",
    "run": "train one with `opencanvas train --latents LATENTS --run {name} ...`",
}
WORDS = {"subset": "subset", "fetched": "fetched subset", "captions": "caption table", "latents": "latent set",
         "run": "run"}


def not_found(ws: Workspace, kind: str, name: str) -> str:
    """'no subset 'CC' in WS; subsets here: cc (did you mean 'cc'?); make one with ...' for a missing name."""
    import difflib

    have = ws.names(kind)
    word = WORDS.get(kind, kind)
    listed = ", ".join(have[:20]) + (f" and {len(have) - 20} more" if len(have) > 20 else "") if have else "none"
    close = difflib.get_close_matches(name.lower(), [h.lower() for h in have], n=1, cutoff=0.6)
    hint = f" (did you mean {next(h for h in have if h.lower() == close[0])!r}?)" if close else ""
    todo = MAKE.get(kind, "").format(name=name)
    return f"no {word} {name!r} in {ws.root} ({word}s here: {listed}){hint}" + (f"; {todo}" if todo else "")


def require(ws: Workspace, kind: str, name: str) -> None:
    """Fail with `not_found` unless `name` exists; a subset that exists but is not fetched says to fetch it."""
    check_name(WORDS.get(kind, kind), name)
    if name in ws.names(kind):
        return
    if kind == "fetched":
        if name in ws.names("subset"):
            raise fail(f"subset {name!r} has no fetched images yet: run `opencanvas fetch --subset {name}`")
        raise fail(not_found(ws, "subset", name))
    raise fail(not_found(ws, kind, name))


def fail(message: str) -> typer.Exit:
    """Print an error that says what to do, and return the Exit to raise.

    The message is printed as plain text: errors quote user input and paths, whose `[...]` Rich would
    otherwise read as markup and drop.
    """
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)   # one line, whatever the width
    return typer.Exit(code=2)
