"""`opencanvas caption score` and `opencanvas caption select` (added to the `caption` verb)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencanvas.caption.cli import caption_app
from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings, require
from opencanvas.workspace import Workspace


def default_clip(ws: Workspace) -> str:
    """The workspace's one trained CLIP (clips/<name>/); several or none need --clip."""
    root = ws.root / "clips"
    names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(names) != 1:
        found = f"found {', '.join(names)}" if names else "found none under clips/"
        raise ValueError(f"pass --clip NAME_OR_PATH (a CLIP under clips/, a local CLIPModel folder or a hub id): "
                         f"{found}")
    return names[0]


def score_command(
    subset: Annotated[str, typer.Option(help="Subset whose images the captions describe.")],
    captioner: Annotated[str, typer.Option(help="Caption table to score (captions/<captioner>/).")],
    clip: Annotated[str | None, typer.Option(
        help="CLIP to score with: a name under clips/, a local CLIPModel folder or a hub id (default: the "
             "workspace's only CLIP).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images and captions per CLIP forward.", min=1)] = 256,
    run: Annotated[str | None, typer.Option(
        help="Also the round-trip score: generate from each caption with this run (EMA weights) and take the CLIP "
             "image cosine of generated and original, averaged over --seeds (slow: seeds x steps per caption).")]
    = None,
    seeds: Annotated[int, typer.Option(help="Generations per caption for the round-trip score.", min=1)] = 3,
    steps: Annotated[int, typer.Option(help="Sampler steps of each round-trip generation.", min=1)] = 20,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance of the round-trip generations.")] = 5.0,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda or cuda:N.")] = "cpu",
    workspace: WorkspaceOption = Path("."),
) -> None:
    """CLIP score (100 x image-text cosine) of every caption, to captions/stats/<subset>/scores/<captioner>.parquet."""
    from opencanvas.caption_quality.score import RoundTrip, score_captions
    from opencanvas.components.loading import load_clip_evaluator
    from opencanvas.sample.loading import load_model

    ws = open_workspace(workspace)
    require(ws, "fetched", subset)
    try:
        ws.captions_dir(captioner)
        spec = clip or default_clip(ws)
        print_settings("caption score", {"subset": subset, "captioner": captioner, "clip": spec,
                                         "batch_size": batch_size, "device": device, "run": run,
                                         **({"seeds": seeds, "steps": steps, "guidance": guidance} if run else {})})
        trip = RoundTrip(load_model(ws, run, None, device=device), run, seeds=seeds, steps=steps,
                         guidance=guidance) if run else None
        stats = score_captions(ws, subset, captioner, load_clip_evaluator(ws, spec, device=device), batch_size,
                               round_trip=trip)
    except (FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    console.print(f"scored {stats.scored} of {stats.captions} captions at {stats.captions_per_s:.0f} captions/s; "
                  f"quarantined: {stats.quarantined or 'none'}; `opencanvas caption stats --subset {subset}` "
                  "shows them per captioner")


def select_command(
    subset: Annotated[str, typer.Option(help="Subset whose captions to choose between.")],
    sources: Annotated[str, typer.Option(
        "--from", help="Comma-separated captioners, each scored with `caption score` and the same CLIP.")],
    name: Annotated[str, typer.Option(help="New caption table captions/<name>/.")],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Keep each image's best-scoring caption among --from; each row's `captioner` names its source."""
    from opencanvas.caption_quality.select import select_captions

    ws = open_workspace(workspace)
    require(ws, "fetched", subset)
    names = [s.strip() for s in sources.split(",") if s.strip()]
    try:
        record = select_captions(ws, subset, names, name)
    except (FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from None
    chosen = ", ".join(f"{src} {n}" for src, n in record["chosen"].items())
    console.print(f"captions/{name}/: best caption of {record['images']} images by {record['clip']} ({chosen})")


def register(app: typer.Typer) -> None:
    """Add `caption score` and `caption select` under the `caption` verb (registered by opencanvas.caption)."""
    caption_app.command("score")(score_command)
    caption_app.command("select")(select_command)
