"""`opencanvas distill` (registered by opencanvas.cli)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings

DISTILL_HELP = """Distil a classifier-free guided teacher run into a few-step student run (Meng et al. 2023).

Stage 1 teaches the student the teacher's guided output with the guidance scale as an input; stage 2
halves the teacher's DDIM steps (--base-steps) round by round down to --target-steps (Salimans & Ho 2022).
Every phase is counted in images and checkpointed; re-run the same command to resume. Under torchrun:
torchrun --nproc_per_node N -m opencanvas distill --run-name TEACHER --name STUDENT ...

Example: opencanvas distill --run demo --name demo-4step --guidance-range 1,8 --target-steps 4
Then: opencanvas sample --run demo-4step --steps 4 --guidance 5 "a red circle"
"""


def distill_command(
    run: Annotated[str | None, typer.Option("--run", "--run-name", help="The teacher run (trained with caption "
                                            "dropout).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="The student run to write (an existing one resumes).")]
    = None,
    guidance_range: Annotated[str, typer.Option(
        "--guidance-range", help="LOW,HIGH: guidance scales w ~ U(LOW, HIGH) the student learns, within (0, 30].")]
    = "1,8",
    target_steps: Annotated[int, typer.Option("--target-steps", help="Sampling steps of the final student.")] = 4,
    base_steps: Annotated[int, typer.Option(
        "--base-steps", help="Teacher DDIM steps the halving starts from (N).")] = 32,
    images_per_round: Annotated[int, typer.Option(
        "--images-per-round", min=1, help="Training images of stage 1 and of each halving round.")] = 2048,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Global batch per optimizer step.")] = 16,
    micro_batch: Annotated[int | None, typer.Option(
        "--micro-batch", min=1, help="Images per forward pass on each rank (default: batch / ranks); smaller "
        "accumulates gradients.")] = None,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate (1e-4 left stage 1 short of the teacher on "
                                      "the demo; benchmarks/RESULTS.md).")] = 5e-4,
    ema_decay: Annotated[float, typer.Option("--ema-decay", help="EMA decay of the student's weights.")] = 0.999,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data order, noise and guidance draws.")] = 0,
    checkpoint_every: Annotated[int | None, typer.Option(
        "--checkpoint-every", min=0, help="Images between checkpoints (default: a twentieth of a phase).")] = None,
    keep: Annotated[int, typer.Option("--keep", min=0, help="Newest checkpoints kept per phase (0: all).")] = 2,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
    reference: Annotated[str | None, typer.Option(
        "--reference", help="After distilling, compare teacher (25 CFG steps) and student (8/4/2/1 steps) against "
        "this subset or image folder: CLIP score, FD, memorization, wall time (runs/<name>/distill_report/).")]
    = None,
    prompts: Annotated[str, typer.Option(
        "--prompts", help="Prompts of the comparison: heldout (the run's held-out captions) or a prompt file.")]
    = "heldout",
    report_n: Annotated[int, typer.Option("--report-n", min=2, help="Images per comparison cell.")] = 16,
    report_guidance: Annotated[str, typer.Option(
        "--report-guidance", help="Guidance scales of the comparison, comma-separated.")] = "3,5",
    report_all_phases: Annotated[bool, typer.Option(
        "--report-all-phases", help="Also compare the phases above 8 steps (stage 1's student at --base-steps, the "
        "first rounds): where quality is lost.")] = False,
    clip: Annotated[str | None, typer.Option(
        "--clip", help="CLIP for the comparison's scores (a component name or folder; default: the run's).")]
    = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Distil a teacher run into a student run (see `opencanvas distill --help`)."""
    from opencanvas.distill.settings import DistillSettings, parse_range
    from opencanvas.distill.stage import distill

    if run is None or name is None:
        raise fail("give the teacher with --run TEACHER and the student with --name STUDENT")
    ws = open_workspace(workspace)
    try:
        ws.run_dir(run), ws.run_dir(name)  # bad names fail first
        settings = DistillSettings(teacher=run, student=name, guidance_range=parse_range(guidance_range),
                                   base_steps=base_steps, target_steps=target_steps,
                                   images_per_round=images_per_round, batch=batch, micro_batch=micro_batch, lr=lr,
                                   ema_decay=ema_decay, seed=seed, checkpoint_every=checkpoint_every,
                                   keep=keep).validate()
    except ValueError as err:
        raise fail(str(err)) from None
    main = os.environ.get("RANK", "0") == "0"
    if main:
        print_settings("distill", {"workspace": str(ws.root), **settings.to_dict(), "rounds": settings.rounds})
    try:
        summary = distill(ws, settings, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    if main:
        print_settings("distill summary", summary)
    if reference is not None and main:
        from opencanvas.distill.report import compare
        from opencanvas.sample.evaluate import resolve_prompts
        from opencanvas.train.pipeline import load_pipeline

        try:
            scales = [float(g) for g in report_guidance.split(",")]
            config = load_pipeline(ws, run, device="cpu").config
            prompt_list, _ = resolve_prompts(ws, prompts, config)
            report = compare(ws, name, prompt_list, reference, scales, report_n, clip=clip,
                             device="cpu" if device == "auto" else device, all_phases=report_all_phases)
        except (FileNotFoundError, ValueError) as err:
            raise fail(str(err)) from None
        from opencanvas.distill.report import markdown

        console.print(markdown(report))


def register(app: typer.Typer) -> None:
    """Add this stage's verbs to the root app."""
    app.command("distill", help=DISTILL_HELP)(distill_command)
