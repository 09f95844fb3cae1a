"""`opencanvas study run|plan` (registered by opencanvas.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings

RUN_HELP = """Run a study: a grid of training runs with one evaluation each, and a report.

STUDY is a TOML file or a built-in study (data-scaling, captions). Cells share images, captions,
latents (one set per captioner, read by each data fraction through a key filter) and components;
by default every cell trains on the same number of images (equal compute).

Resumable: kill it at any point and run the same command again. Finished cells are skipped, the
interrupted one resumes, and studies/<name>/results.parquet comes out identical (bit for bit on CPU).
If the study file changed after cells ran, the run is refused with the changed keys named: restore
them, or give the study a new name. A cell that fails (NaN loss, out of memory, too little
data) is recorded as failed with its reason and the others go on (--retry-failed runs it again).

Writes studies/<name>/: results.parquet (one row per cell and guidance scale), REPORT.md, PNG plots.
On a cluster: `opencanvas study plan STUDY` prints one command per cell (--cell K).
"""


def run_command(
    study: Annotated[str, typer.Argument(help="A study TOML file, or data-scaling / captions.")],
    cell: Annotated[int | None, typer.Option("--cell", min=0, help="Run only cell K (see `study plan`); "
                                                "the report is written once every cell has finished.")] = None,
    prepare: Annotated[bool, typer.Option("--prepare", help="Only the shared work (images, captions, latents, "
                                          "eval prompts); run it once before parallel --cell jobs.")] = False,
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="Train each cell under torchrun with N "
                                                 "processes (one per GPU).")] = None,
    engine: Annotated[str, typer.Option("--engine", help="local (cells one after another), or ray (cells as Ray "
                                        "tasks on the cluster in RAY_ADDRESS, or a local one; the workspace must "
                                        "be on a filesystem the workers share).")] = "local",
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run cells recorded as failed again.")]
    = False,
    workspace: WorkspaceOption = Path("."),
) -> None:
    from opencanvas.study.runner import run_study
    from opencanvas.study.spec import StudyError, load_study

    ws = open_workspace(workspace)
    try:
        spec = load_study(study)
        print_settings("study run", {"workspace": str(ws.root), "study": spec.name, "source": spec.source,
                                     "axes": {k: list(v) for k, v in spec.axes}, "cell": cell if cell is not None
                                     else "all", "nproc": nproc or 1, "engine": engine})
        result = run_study(ws, spec, cell=cell, nproc=nproc, prepare_only=prepare, retry_failed=retry_failed,
                           engine=engine)
    except (StudyError, FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    failed = [r for r in result["cells"].values() if r["status"] != "ok"]
    for r in failed:
        console.print(f"[red]cell {r['cell']} ({r['label']}) failed:[/] {r['reason']}")
    if result["report"] is not None:
        console.print(f"[bold green]study {spec.name}[/]: {ws.relative(result['report'])}")


def plan_command(
    study: Annotated[str, typer.Argument(help="A study TOML file, or data-scaling / captions.")],
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="Add --nproc N to each cell.")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Print every cell of a study as its own command (for a SLURM array or a Ray job)."""
    from opencanvas.study.plan import plan_commands
    from opencanvas.study.spec import StudyError, check_workspace, load_study

    ws = open_workspace(workspace)
    try:
        spec = load_study(study)
        check_workspace(ws, spec)
    except StudyError as err:
        raise fail(str(err)) from None
    for command, comment in plan_commands(spec, str(ws.root), nproc):
        typer.echo(f"{command}  # {comment}")


def train_cell_command(
    study: Annotated[str, typer.Argument()],
    cell: Annotated[int, typer.Option("--cell", min=0)],
    workspace: WorkspaceOption = Path("."),
) -> None:
    """One cell's training alone: what `study run --nproc N` starts under torchrun."""
    from opencanvas.study.runner import train_cell
    from opencanvas.study.spec import load_study

    train_cell(open_workspace(workspace), load_study(study), cell)


def register(app: typer.Typer) -> None:
    """Add `opencanvas study run|plan` to the root app."""
    group = typer.Typer(help="Studies: grids of runs with a report (data scaling, captions).", no_args_is_help=True)
    group.command("run", help=RUN_HELP)(run_command)
    group.command("plan")(plan_command)
    group.command("train-cell", hidden=True)(train_cell_command)
    app.add_typer(group, name="study")
