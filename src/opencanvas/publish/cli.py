"""CLI verbs: `opencanvas publish dataset|model` (registered by opencanvas.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, fail, open_workspace, print_settings

publish_app = typer.Typer(help="Release a subset or a run in the Hugging Face Hub layout.", no_args_is_help=True)
OutOption = Annotated[Path, typer.Option("--out", help="New folder to write.", file_okay=False)]
PushOption = Annotated[str | None, typer.Option(
    "--push", help="Also upload to this Hub repo id (needs a token: `hf auth login`).")]


def _push(folder: Path, repo_id: str | None, repo_type: str) -> None:
    if repo_id is None:
        return
    from opencanvas.publish.model import push

    try:
        typer.echo(f"pushed: {push(folder, repo_id, repo_type)}")
    except ValueError as e:
        raise fail(str(e)) from None


@publish_app.command("dataset")
def dataset_command(
    subset: Annotated[str, typer.Option("--subset", help="Subset under subsets/.")],
    captions: Annotated[str, typer.Option("--captions", help="Captioners, comma-separated: one column each.")],
    out: OutOption,
    with_images: Annotated[bool, typer.Option("--with-images", help="Include the fetched image bytes.")] = False,
    push: PushOption = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Write a Hub dataset folder: Parquet shards (key, URL, size, license, attribution, captions) + README."""
    from opencanvas.publish.dataset import publish_dataset

    captioners = [c.strip() for c in captions.split(",") if c.strip()]
    print_settings("publish dataset", {"subset": subset, "captions": captioners, "with_images": with_images,
                                       "out": str(out), "push": push or "-"})
    try:
        publish_dataset(open_workspace(workspace), subset, captioners, out, with_images)
    except ValueError as e:
        raise fail(str(e)) from None
    typer.echo(f"wrote {out} (load it with datasets.load_dataset({str(out)!r}))")
    _push(out, push, "dataset")


@publish_app.command("model")
def model_command(
    run: Annotated[str, typer.Option("--run", help="Training run under runs/.")],
    out: OutOption,
    push: PushOption = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Write a Hub model folder: the diffusers pipeline, README (model card + YAML) and attribution."""
    from opencanvas.publish.model import publish_model

    print_settings("publish model", {"run": run, "out": str(out), "push": push or "-"})
    try:
        publish_model(open_workspace(workspace), run, out)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    typer.echo(f"wrote {out} (load it with diffusers.StableDiffusionPipeline.from_pretrained({str(out)!r}))")
    _push(out, push, "model")


def register(app: typer.Typer) -> None:
    app.add_typer(publish_app, name="publish")
