"""`opencanvas card`: the data card, model card and attribution list of a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, require


def card_command(
    run: Annotated[str, typer.Option("--run", help="Run under runs/ whose cards to write.")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Write runs/RUN/cards/: DATA_CARD.md, MODEL_CARD.md, ATTRIBUTION.md, attribution.csv (from records only).

    The cards are also copied into every folder `opencanvas export` wrote for the run (its cards/ folder).
    """
    import duckdb

    from opencanvas.cards.model_facts import export_folders
    from opencanvas.cards.writer import write_cards

    ws = open_workspace(workspace)
    require(ws, "run", run)
    try:
        out = write_cards(ws, run)
    except (FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    except duckdb.Error as err:
        raise fail(f"cannot read the workspace's Parquet records for the cards ({str(err).splitlines()[0]}): "
                   "re-run the stage that wrote the damaged file") from None
    for name in ("DATA_CARD.md", "MODEL_CARD.md", "ATTRIBUTION.md", "attribution.csv"):
        console.print(f"wrote {out / name}")
    for folder in export_folders(ws, run):
        console.print(f"updated the cards in export {folder / 'cards'}")


def register(app: typer.Typer) -> None:
    app.command("card", help="Write a run's data card, model card and attribution list.")(card_command)
