"""`opencanvas train` and `opencanvas export` (registered by opencanvas.cli)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings

TRAIN_HELP = """Train a UNet on a precomputed latent set (opencanvas encode), or resume one.

Re-run the same command to resume from the newest checkpoint; progress is counted in images.
Multi-GPU / multi-node: torchrun --nproc_per_node N -m opencanvas train --run-name NAME ... (DDP; FSDP2 for
sd2-base/xl; spell --run as --run-name there, since torchrun's own parser claims --run).

Example: opencanvas train --latents shapes256 --preset tiny --run demo --images 20000 --batch 32
"""

Flag = Optional[bool]


def train_command(
    latents: Annotated[str, typer.Option("--latents", help="Latent set under latents/ (from opencanvas encode).")],
    run: Annotated[str, typer.Option(
        "--run", "--run-name", help="Run name: writes runs/<run>/; an existing run resumes. Under torchrun write "
        "--run-name (torchrun's parser takes --run for its own --run-path).")],
    preset: Annotated[str, typer.Option("--preset", help="UNet preset: tiny, small, sd2-base or xl.")] = "tiny",
    images: Annotated[Optional[int], typer.Option(
        "--images", min=1, help="Total training images over all ranks (default for a resume: the stored value).")]
    = None,
    minutes: Annotated[Optional[float], typer.Option(
        "--minutes", min=0, help="Instead of --images: a time budget, converted once to images from a short "
        "measured warm-up and recorded in config.json, so the same command again trains exactly as far.")] = None,
    batch: Annotated[Optional[int], typer.Option(
        "--batch", min=1, help="Global batch per optimizer step (default: the preset's).")] = None,
    micro_batch: Annotated[Optional[int], typer.Option(
        "--micro-batch", min=1, help="Per-rank batch per forward pass; batch / (micro-batch x ranks) "
        "micro-batches accumulate into a step (default: batch / ranks).")] = None,
    resolutions: Annotated[Optional[str], typer.Option(
        "--resolutions", help="Resolution schedule, e.g. 256 or '256,512@1000000' (512 px from 1M images on); "
        "each must be encoded in the latent set. Default: its only resolution.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak AdamW learning rate (default: the preset's).")]
    = None,
    lr_schedule: Annotated[Optional[str], typer.Option(
        "--lr-schedule", help="After warmup: constant or cosine (to 0 at --images).")] = None,
    warmup_images: Annotated[Optional[int], typer.Option(
        "--warmup-images", min=0, help="Linear LR warmup length in images (default: the preset's).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="AdamW weight decay.")] = None,
    grad_clip: Annotated[Optional[float], typer.Option(
        "--grad-clip", min=0, help="Clip the global gradient norm to this (0: no clipping).")] = None,
    ema_decay: Annotated[Optional[float], typer.Option(
        "--ema-decay", help="EMA decay per step (default: the preset's).")] = None,
    prediction: Annotated[Optional[str], typer.Option(
        "--prediction", help="UNet target: epsilon or v_prediction.")] = None,
    min_snr_gamma: Annotated[Optional[float], typer.Option(
        "--min-snr-gamma", min=0, help="Min-SNR-gamma loss weighting (Hang et al. 2023); 0 for plain MSE.")] = None,
    zero_terminal_snr: Annotated[Flag, typer.Option(
        "--zero-terminal-snr/--no-zero-terminal-snr", help="Rescale the schedule to SNR 0 at the last step "
        "(Lin et al. 2023; needs --prediction v_prediction).")] = None,
    offset_noise: Annotated[Optional[float], typer.Option(
        "--offset-noise", min=0, help="Offset noise strength (per sample and channel), e.g. 0.05.")] = None,
    caption_dropout: Annotated[Optional[float], typer.Option(
        "--caption-dropout", min=0, max=0.99, help="Share of captions replaced by the empty prompt (CFG).")] = None,
    holdout: Annotated[Optional[float], typer.Option(
        "--holdout", min=0, max=0.5, help="Leave out the held-out split (key-hash fraction below this), whose "
        "captions `opencanvas eval --prompts heldout` scores; 0 trains on every image.")] = None,
    text_mask: Annotated[Flag, typer.Option(
        "--text-mask/--no-text-mask", help="Mask padding tokens in cross-attention (off: SD convention, "
        "matches the exported diffusers pipeline).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of weights, data order and noise.")] = None,
    checkpoint_every: Annotated[Optional[int], typer.Option(
        "--checkpoint-every", min=0, help="Checkpoint every N images (default: a twentieth of the run; 0: only "
        "at the end).")] = None,
    checkpoint_minutes: Annotated[Optional[float], typer.Option(
        "--checkpoint-minutes", min=0, help="Also checkpoint after this many minutes of wall time since the "
        "last one (default 30; 0: off).")] = None,
    keep: Annotated[Optional[int], typer.Option(
        "--keep", min=0, help="Keep the N newest checkpoints (0: keep all).")] = None,
    validate_every: Annotated[Optional[int], typer.Option(
        "--validate-every", min=0, help="Validation grid (fixed prompts and seeds) every N images; needs "
        "the latent set's autoencoder and text encoder (0: none).")] = None,
    log_every: Annotated[Optional[int], typer.Option(
        "--log-every", min=0, help="Log metrics every N images (0: every step).")] = None,
    max_bad_steps: Annotated[Optional[int], typer.Option(
        "--max-bad-steps", min=1, help="Stop after this many consecutive non-finite steps.")] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=0, help="Loader threads gathering batches ahead (0: in the training thread).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    parallel: Annotated[Optional[str], typer.Option(
        "--parallel", help="ddp or fsdp (FSDP2 fully_shard) under torchrun (default: the preset's).")] = None,
    bf16: Annotated[Flag, typer.Option("--bf16/--no-bf16", help="bf16 autocast (default: on CUDA with bf16).")]
    = None,
    sdpa: Annotated[Flag, typer.Option(
        "--sdpa/--no-sdpa", help="Scaled-dot-product (flash) attention processor (default: on).")] = None,
    low_precision_norms: Annotated[Flag, typer.Option(
        "--low-precision-norms/--no-low-precision-norms",
        help="Run GroupNorm/LayerNorm in bf16 instead of fp32 (default: with --bf16).")] = None,
    channels_last: Annotated[Flag, typer.Option(
        "--channels-last/--no-channels-last", help="Channels-last memory format (default: on CUDA).")] = None,
    fused_adamw: Annotated[Flag, typer.Option(
        "--fused-adamw/--no-fused-adamw", help="Fused AdamW kernel (default: on, CPU and CUDA).")] = None,
    compile: Annotated[Flag, typer.Option(
        "--compile/--no-compile", help="torch.compile the model (default: on CUDA).")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Train or resume a run (see `opencanvas train --help`)."""
    from opencanvas.train.loop import TrainingDiverged, train

    ws = open_workspace(workspace)
    options = dict(
        minutes=minutes, micro_batch=micro_batch, lr=lr, lr_schedule=lr_schedule, warmup_images=warmup_images,
        weight_decay=weight_decay, grad_clip=grad_clip, ema_decay=ema_decay, prediction_type=prediction,
        min_snr_gamma=min_snr_gamma, zero_terminal_snr=zero_terminal_snr, offset_noise=offset_noise,
        caption_dropout=caption_dropout, holdout=holdout, use_text_mask=text_mask, seed=seed,
        checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes, keep=keep,
        validate_every=validate_every, log_every=log_every, max_bad_steps=max_bad_steps,
        workers=workers, device=device, parallel=parallel, bf16=bf16, sdpa=sdpa,
        low_precision_norms=low_precision_norms, channels_last=channels_last, fused_adamw=fused_adamw,
        compile=compile,
    )
    options = {k: v for k, v in options.items() if v is not None}
    main = os.environ.get("RANK", "0") == "0"
    if main:
        print_settings("train", {"workspace": str(ws.root), "latents": latents, "preset": preset, "run": run,
                                 "images": images, "batch": batch, "resolutions": resolutions, **options})
    try:
        summary = train(ws, latents, preset, run, images=images, batch=batch, resolutions=resolutions, **options)
    except (TrainingDiverged, FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    if main:
        print_settings("train summary", summary)


def export_command(
    run: Annotated[str, typer.Option("--run", help="Run under runs/ to export.")],
    out: Annotated[Path, typer.Option("--out", help="New directory for the diffusers pipeline folder.",
                                      file_okay=False)],
    raw: Annotated[bool, typer.Option("--raw", help="Export the raw weights instead of the EMA.")] = False,
    checkpoint: Annotated[Optional[str], typer.Option(
        "--checkpoint", help="Images count or file name of a checkpoint (default: the newest).")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Export a run as a diffusers StableDiffusionPipeline folder (DiffusionPipeline.from_pretrained loads it)."""
    from opencanvas.train.to_diffusers import export

    ws = open_workspace(workspace)
    try:
        path = export(ws, run, out, ema=not raw, checkpoint=checkpoint)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise fail(str(err)) from None
    console.print(f"exported [bold]{run}[/] to {path}")


def register(app: typer.Typer) -> None:
    """Add this stage's verbs to the root app."""
    app.command("train", help=TRAIN_HELP)(train_command)
    app.command("export")(export_command)
