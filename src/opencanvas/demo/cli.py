"""`opencanvas demo`: the whole pipeline on the Open Clip Art Library."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings


def demo_command(
    minutes: Annotated[float, typer.Option("--minutes", min=3, help="Total time budget; the training stages "
                                           "(autoencoder, CLIP, UNet) share it.")] = 15.0,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Start over: delete the workspace's stage folders (catalog/, runs/, ...). Refuses when "
        "the workspace holds files OpenCanvas did not write.")] = False,
    max_images: Annotated[int | None, typer.Option(
        "--max-images", min=50, help="Use a fixed sample of this many images (default: the whole library).")]
    = None,
    categories: Annotated[str | None, typer.Option(
        "--categories", help="Comma-separated top-level folders of the library, e.g. 'food,animals' "
        "(default: all).")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Run ingest → subset → fetch → caption → autoencoder → CLIP → encode → train → sample → eval → cards.

    Offline, on a CPU. Re-running skips finished stages.
    """
    from opencanvas.demo.pipeline import run_demo
    from opencanvas.demo.settings import DemoSettings
    from opencanvas.demo.summary import print_summary
    from opencanvas.workspace import WorkspaceNotEmpty

    ws = open_workspace(workspace)
    cats = tuple(c.strip() for c in (categories or "").split(",") if c.strip())
    settings = DemoSettings(minutes=minutes, max_images=max_images, categories=cats)
    print_settings("demo", {"workspace": str(ws.root), "minutes": minutes, "fresh": fresh,
                            "max_images": max_images or "all",
                            "categories": ",".join(cats) or "all", "resolution": settings.resolution})
    try:
        results = run_demo(ws, settings, fresh=fresh)
    except (FileNotFoundError, WorkspaceNotEmpty) as err:
        raise fail(str(err)) from None
    print_summary(ws, results)
    console.print(f"[bold green]demo finished[/] in {ws.root}")


def register(app: typer.Typer) -> None:
    app.command("demo", help="Run the whole pipeline on the Open Clip Art Library (offline, CPU, ~15 min).")(
        demo_command)
