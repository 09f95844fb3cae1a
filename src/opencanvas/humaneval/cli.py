"""`opencanvas humaneval prepare|raters|report|export`: pairwise human evaluation of two or more models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings

humaneval_app = typer.Typer(help="Pairwise human evaluation (arena): prepare a study, invite raters, report.",
                            no_args_is_help=True)


@humaneval_app.command("prepare")
def prepare_command(
    name: Annotated[str, typer.Option("--name", help="Study name (humaneval/<name>.sqlite).")],
    prompts: Annotated[str, typer.Option("--prompts", help="A prompt file (one a line, or PartiPrompts TSV) "
                                         "or `heldout` (the first model's held-out captions).")],
    a: Annotated[str | None, typer.Option("--a", help="Model A: a run name or a diffusers folder.")] = None,
    b: Annotated[str | None, typer.Option("--b", help="Model B: a run name or a diffusers folder.")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="Another model (repeat for more).")] = None,
    n: Annotated[int | None, typer.Option("-n", help="How many prompts (drawn by --seed); default all.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of prompt i is seed + i; also draws the prompts.")] = 0,
    steps: Annotated[int, typer.Option(help="Sampler steps.")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 7.5,
    sampler: Annotated[str, typer.Option(help="Sampler name (as `opencanvas sample`).")] = "dpmpp-2m",
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 8,
    device: Annotated[str, typer.Option(help="cpu, cuda, ...")] = "cpu",
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Generate every model's images for the same prompts and seeds, ahead of time (resumable)."""
    from opencanvas.humaneval.prepare import prepare

    ws = open_workspace(workspace)
    models = [m for m in (a, b, *(model or [])) if m]
    print_settings("humaneval prepare", {"study": name, "models": models, "prompts": prompts, "n": n, "seed": seed,
                                         "steps": steps, "guidance": guidance, "sampler": sampler})
    try:
        summary = prepare(ws, name, models, prompts, n=n, seed=seed, steps=steps, guidance=guidance,
                          sampler=sampler, batch_size=batch_size, device=device)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    console.print_json(json.dumps(summary))


@humaneval_app.command("raters")
def raters_command(
    name: Annotated[str, typer.Option("--name", help="Study name.")],
    add: Annotated[int, typer.Option("--add", help="How many invite tokens to make.")] = 1,
    label: Annotated[str, typer.Option(help="A label for these raters (default rater-N).")] = "",
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Print K new rater tokens, one a line (only their hashes are stored: keep them)."""
    from opencanvas.humaneval.prepare import add_raters

    try:
        tokens = add_raters(open_workspace(workspace), name, add, label)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    for token in tokens:
        typer.echo(token)


@humaneval_app.command("report")
def report_command(
    name: Annotated[str, typer.Option("--name", help="Study name.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap rounds for Bradley-Terry intervals.")] = 200,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Win rates (Wilson 95%), Bradley-Terry strengths (bootstrap 95%), categories, agreement; writes the plot."""
    from opencanvas.cards.studies import SECTION_FILE
    from opencanvas.humaneval.report import results_markdown, results_plot, study_results
    from opencanvas.humaneval.store import open_study
    from opencanvas.storage import atomic_write_json, atomic_write_text

    ws = open_workspace(workspace)
    try:
        study = open_study(ws, name)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    results = study_results(study, bootstrap=bootstrap)
    out = study.path.with_suffix("")
    results_plot(results, out / "results.png")
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "REPORT.md", results_markdown(results) + "\n\n![win rates](results.png)\n")
    atomic_write_text(out / SECTION_FILE, results_markdown(results))   # what the model card includes
    if as_json:
        typer.echo(json.dumps(results, sort_keys=True))
    else:
        console.print(results_markdown(results))
        console.print(f"wrote {ws.relative(out / 'REPORT.md')} and {ws.relative(out / 'results.png')}")


@humaneval_app.command("export")
def export_command(
    name: Annotated[str, typer.Option("--name", help="Study name.")],
    out: Annotated[Path | None, typer.Option(help="Parquet file (default humaneval/<name>/votes.parquet).")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Write every raw vote to Parquet."""
    from opencanvas.humaneval.prepare import export_votes

    try:
        path = export_votes(open_workspace(workspace), name, out)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.add_typer(humaneval_app, name="humaneval")
