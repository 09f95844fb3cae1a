"""`opencanvas train` and `opencanvas export` (registered by opencanvas.cli)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings, require
from opencanvas.train.presets import PRESETS
from opencanvas.workspace import Workspace

TRAIN_HELP = """Train a UNet on a precomputed latent set (opencanvas encode), or resume one.

Re-run the same command to resume from the newest checkpoint; progress is counted in images.
Multi-GPU / multi-node: add --nproc-per-node N (and --nnodes M --rdzv-endpoint HOST:PORT on every node), which
starts torchrun for you (DDP; FSDP2 for sd2-base/xl). Calling torchrun yourself works too: torchrun
--nproc_per_node N -m opencanvas train --run-name NAME ... (torchrun's own parser claims --run).

Example: opencanvas train --latents shapes256 --preset tiny --run demo --images 20000 --batch 32
"""

Flag = bool | None


def train_command(
    ctx: typer.Context,
    latents: Annotated[str, typer.Option("--latents", help="Latent set under latents/ (from opencanvas encode).")],
    run: Annotated[str | None, typer.Option(
        "--run", "--run-name", help="Run name (required): writes runs/<run>/; an existing run resumes. Under "
        "torchrun write --run-name (torchrun's parser takes --run for its own --run-path).")] = None,
    preset: Annotated[str, typer.Option("--preset", help=f"UNet preset: {', '.join(PRESETS)}.")] = "tiny",
    images: Annotated[int | None, typer.Option(
        "--images", min=1, help="Total training images over all ranks (default for a resume: the stored value).")]
    = None,
    minutes: Annotated[float | None, typer.Option(
        "--minutes", min=0, help="Instead of --images: a time budget, converted once to images from a short "
        "measured warm-up and recorded in config.json, so the same command again trains exactly as far.")] = None,
    batch: Annotated[int | None, typer.Option(
        "--batch", min=1, help="Global batch per optimizer step (default: the preset's).")] = None,
    micro_batch: Annotated[int | None, typer.Option(
        "--micro-batch", min=1, help="Per-rank batch per forward pass; batch / (micro-batch x ranks) "
        "micro-batches accumulate into a step (default: batch / ranks).")] = None,
    resolutions: Annotated[str | None, typer.Option(
        "--resolutions", help="Resolution schedule, e.g. 256 or '256,512@1000000' (512 px from 1M images on); "
        "each must be encoded in the latent set. Default: its only resolution.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Peak AdamW learning rate (default: the preset's).")]
    = None,
    lr_schedule: Annotated[str | None, typer.Option(
        "--lr-schedule", help="After warmup: constant or cosine (to 0 at --images).")] = None,
    warmup_images: Annotated[int | None, typer.Option(
        "--warmup-images", min=0, help="Linear LR warmup length in images (default: the preset's).")] = None,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="AdamW weight decay.")] = None,
    grad_clip: Annotated[float | None, typer.Option(
        "--grad-clip", min=0, help="Clip the global gradient norm to this (0: no clipping).")] = None,
    ema_decay: Annotated[float | None, typer.Option(
        "--ema-decay", help="EMA decay per step (default: the preset's).")] = None,
    prediction: Annotated[str | None, typer.Option(
        "--prediction", help="UNet target: epsilon or v_prediction.")] = None,
    min_snr_gamma: Annotated[float | None, typer.Option(
        "--min-snr-gamma", min=0, help="Min-SNR-gamma loss weighting (Hang et al. 2023); 0 for plain MSE.")] = None,
    zero_terminal_snr: Annotated[Flag, typer.Option(
        "--zero-terminal-snr/--no-zero-terminal-snr", help="Rescale the schedule to SNR 0 at the last step "
        "(Lin et al. 2023; needs --prediction v_prediction).")] = None,
    timestep_sampling: Annotated[str | None, typer.Option(
        "--timestep-sampling", help="Training timesteps: uniform, or lognormal sigmas (EDM; ln sigma ~ "
        "N(-1.2, 1.2^2)).")] = None,
    offset_noise: Annotated[float | None, typer.Option(
        "--offset-noise", min=0, help="Offset noise strength (per sample and channel), e.g. 0.05.")] = None,
    caption_dropout: Annotated[float | None, typer.Option(
        "--caption-dropout", min=0, max=0.99, help="Share of captions replaced by the empty prompt (CFG).")] = None,
    caption_mix: Annotated[str | None, typer.Option(
        "--caption-mix", help="Weights of each captioner's captions in the per-image draw, e.g. "
        "metadata=0.05,blip2=0.95 (renormalised over the captions an image has; captioners left out are never "
        "drawn). Default: uniform among an image's captions.")] = None,
    conditioning: Annotated[str | None, typer.Option(
        "--conditioning", help="text (one caption per image, the default), multi-caption (up to --max-captions "
        "of each image's captioner slots at once, concatenated along the sequence with a learned per-slot "
        "embedding) or text+image (the latent set's CLIP image embeddings, from encode --image-embeddings, as "
        "extra tokens and in the timestep embedding, with their own --image-dropout). A latent set with two "
        "text encoders trains on both (feature-axis concatenation, each with its own --encoder-dropout).")] = None,
    max_captions: Annotated[int | None, typer.Option(
        "--max-captions", min=1, help="multi-caption: caption slots K, the latent set's first K captioners "
        "(default: all).")] = None,
    slot_dropout: Annotated[float | None, typer.Option(
        "--slot-dropout", min=0, max=0.99, help="multi-caption: each caption's own dropout (CFG still drops all "
        "of them together with --caption-dropout).")] = None,
    class_column: Annotated[str | None, typer.Option(
        "--class-column", help="Catalog column (e.g. category) or extra.FIELD used as a class label (diffusers "
        "num_class_embeds); dropped with --caption-dropout for CFG.")] = None,
    max_classes: Annotated[int | None, typer.Option(
        "--max-classes", min=1, help="Refuse a --class-column with more classes than this (default 1000).")] = None,
    text_encoders: Annotated[int | None, typer.Option(
        "--text-encoders", min=1, max=2, help="Of a latent set with two text encoders: 1 trains on the first only, "
        "2 on both (an error for a set with one). Default: every encoder the set has.")] = None,
    encoder_dropout: Annotated[float | None, typer.Option(
        "--encoder-dropout", min=0, max=0.99, help="With two text encoders: each one's own dropout (eDiff-I), so "
        "the model works with either alone (default 0.1).")] = None,
    image_dropout: Annotated[float | None, typer.Option(
        "--image-dropout", min=0, max=0.99, help="text+image: the image embedding's own dropout (default 0.1).")]
    = None,
    image_tokens: Annotated[int | None, typer.Option(
        "--image-tokens", min=1, help="text+image: cross-attention tokens made from the image embedding (4).")]
    = None,
    holdout: Annotated[float | None, typer.Option(
        "--holdout", min=0, max=0.5, help="Leave out the held-out split (key-hash fraction below this), whose "
        "captions `opencanvas eval --prompts heldout` scores; 0 trains on every image.")] = None,
    text_mask: Annotated[Flag, typer.Option(
        "--text-mask/--no-text-mask", help="Mask padding tokens in cross-attention (off: SD convention, "
        "matches the exported diffusers pipeline).")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of weights, data order and noise.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(
        "--checkpoint-every", min=0, help="Checkpoint every N images (default: a twentieth of the run; 0: only "
        "at the end).")] = None,
    checkpoint_minutes: Annotated[float | None, typer.Option(
        "--checkpoint-minutes", min=0, help="Also checkpoint after this many minutes of wall time since the "
        "last one (default 30; 0: off).")] = None,
    keep: Annotated[int | None, typer.Option(
        "--keep", min=0, help="Keep the N newest checkpoints (0: keep all).")] = None,
    validate_every: Annotated[int | None, typer.Option(
        "--validate-every", min=0, help="Validation grid (fixed prompts and seeds) every N images; needs "
        "the latent set's autoencoder and text encoder (0: none).")] = None,
    log_every: Annotated[int | None, typer.Option(
        "--log-every", min=0, help="Log metrics every N images (0: every step).")] = None,
    max_bad_steps: Annotated[int | None, typer.Option(
        "--max-bad-steps", min=1, help="Stop after this many consecutive non-finite steps.")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=0, help="Loader threads gathering batches ahead (0: in the training thread).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    parallel: Annotated[str | None, typer.Option(
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
    nproc_per_node: Annotated[int | None, typer.Option(
        "--nproc-per-node", min=1, help="Start torchrun with N processes on this node (one per GPU) running "
        "this command.")] = None,
    nnodes: Annotated[int | None, typer.Option(
        "--nnodes", min=1, help="Nodes taking part (with --nproc-per-node; more than 1 needs --rdzv-endpoint).")]
    = None,
    rdzv_endpoint: Annotated[str | None, typer.Option(
        "--rdzv-endpoint", help="HOST:PORT where the nodes meet (torchrun's c10d rendezvous), the same on "
        "every node.")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Train or resume a run (see `opencanvas train --help`)."""
    if run is None:
        raise fail(missing_run_message())
    if nproc_per_node is not None or nnodes is not None or rdzv_endpoint is not None:
        _exec_torchrun(ctx, nproc_per_node, nnodes, rdzv_endpoint)
    from opencanvas.train.config import parse_caption_mix
    from opencanvas.train.loop import TrainingDiverged, train

    ws = open_workspace(workspace)
    ws.run_dir(run)   # a bad name fails before anything else is looked at
    require(ws, "latents", latents)
    try:
        mix = parse_caption_mix(caption_mix) if caption_mix is not None else None
    except ValueError as err:
        raise fail(str(err)) from None
    options = dict(
        minutes=minutes, micro_batch=micro_batch, lr=lr, lr_schedule=lr_schedule, warmup_images=warmup_images,
        weight_decay=weight_decay, grad_clip=grad_clip, ema_decay=ema_decay, prediction_type=prediction,
        min_snr_gamma=min_snr_gamma, zero_terminal_snr=zero_terminal_snr, timestep_sampling=timestep_sampling,
        offset_noise=offset_noise,
        caption_dropout=caption_dropout, caption_mix=mix, conditioning=conditioning, max_captions=max_captions,
        slot_dropout=slot_dropout, class_column=class_column, max_classes=max_classes, encoder_dropout=encoder_dropout,
        text_encoders=text_encoders, image_dropout=image_dropout, image_tokens=image_tokens, holdout=holdout,
        use_text_mask=text_mask, seed=seed,
        checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes, keep=keep,
        validate_every=validate_every, log_every=log_every, max_bad_steps=max_bad_steps,
        workers=workers, device=device, parallel=parallel, bf16=bf16, sdpa=sdpa,
        low_precision_norms=low_precision_norms, channels_last=channels_last, fused_adamw=fused_adamw,
        compile=compile,
    )
    options = {k: v for k, v in options.items() if v is not None}
    main = os.environ.get("RANK", "0") == "0"
    if main:
        try:
            shown = shown_settings(ws, preset, run, images, batch, resolutions, options)
        except ValueError as err:
            raise fail(str(err)) from None
        print_settings("train", {"workspace": str(ws.root), "latents": latents, **shown})
    try:
        summary = train(ws, latents, preset, run, images=images, batch=batch, resolutions=resolutions, **options)
    except (TrainingDiverged, FileNotFoundError, ValueError) as err:
        raise fail(str(err)) from None
    if main:
        print_settings("train summary", {**summary, **where_logs_are(ws, run)})


def missing_run_message() -> str:
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        return ("no run name reached `opencanvas train`: under torchrun write --run-name NAME, since torchrun's "
                "own parser takes --run for its --run-path (or use `opencanvas train --nproc-per-node N`)")
    return "give the run a name with --run NAME (an existing run resumes)"


def torchrun_argv(ctx: typer.Context, nproc_per_node: int | None, nnodes: int | None,
                  rdzv_endpoint: str | None) -> list[str]:
    """`python -m torch.distributed.run ... -m opencanvas train ...` for this command's options.

    Rebuilt from the parsed options, not sys.argv, so --run becomes --run-name (torchrun claims --run) and the
    launcher options are not passed on (the ranks would start torchrun again).
    """
    if "LOCAL_RANK" in os.environ:
        raise ValueError("--nproc-per-node under torchrun: run `opencanvas train --nproc-per-node N` directly, "
                         "or leave the option out of the torchrun command")
    nnodes = nnodes or 1
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, the same on every node")
    launcher = ["--nproc_per_node", str(nproc_per_node or 1), "--nnodes", str(nnodes)]
    launcher += ["--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv_endpoint] if rdzv_endpoint else ["--standalone"]
    args: list[str] = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in ("nproc_per_node", "nnodes", "rdzv_endpoint", "help") or value is None:
            continue
        if param.name == "workspace":
            args += ["--workspace", str(Path(value).expanduser().resolve())]
        elif param.name == "run":
            args += ["--run-name", str(value)]
        elif getattr(param, "is_flag", False):
            if param.secondary_opts or value:
                args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "opencanvas", "train", *args]


def _exec_torchrun(ctx: typer.Context, nproc_per_node: int | None, nnodes: int | None,
                   rdzv_endpoint: str | None) -> None:
    try:
        argv = torchrun_argv(ctx, nproc_per_node, nnodes, rdzv_endpoint)
    except ValueError as err:
        raise fail(str(err)) from None
    console.print(f"[dim]starting: {shlex.join(argv)}[/]", soft_wrap=True)
    sys.stdout.flush()
    os.execvp(argv[0], argv)


def shown_settings(ws: Workspace, preset_name: str, run: str, images: int | None, batch: int | None,
                   resolutions: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """The settings a run will use: the options given, else the stored run's, the preset's or the defaults."""
    import dataclasses
    import json

    from opencanvas.train.config import TrainConfig
    from opencanvas.train.presets import get_preset
    from opencanvas.train.recipe import resolve_recipe
    from opencanvas.training.distributed import pick_device

    preset = get_preset(preset_name)
    config_path = ws.run_dir(run) / "config.json"
    stored = json.loads(config_path.read_text()) if config_path.exists() else {}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    batch = batch or preset.batch
    preset_values = {"lr": preset.lr, "warmup_images": preset.warmup_images, "ema_decay": preset.ema_decay,
                     "parallel": preset.parallel, "micro_batch": max(1, batch // world)}
    shown: dict[str, Any] = {
        "preset": preset_name, "run": run + (" (resumes)" if stored else ""),
        "images": images or stored.get("images") or "required for a new run (--images)",
        "batch": batch,
        "resolutions": resolutions or stored.get("resolutions") or "the latent set's resolution",
    }
    skip = {"run", "latents", "preset", "images", "batch", "unet", "resolutions", "data", "validation_prompts",
            "class_names"}
    for field in dataclasses.fields(TrainConfig):
        if field.name in skip:
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        shown[field.name] = options.get(field.name, preset_values.get(field.name, default))
    device = pick_device(str(options.get("device", "auto")), int(os.environ.get("LOCAL_RANK", "0")))
    recipe = resolve_recipe(device, **{k: options.get(k) for k in ("bf16", "sdpa", "low_precision_norms",
                                                                     "channels_last", "fused_adamw", "compile")})
    shown.update(recipe.to_dict(), device=str(device))
    return shown


def where_logs_are(ws: Workspace, run: str) -> dict[str, Any]:
    """The final logged loss and where the logs are, for the closing summary."""
    import json

    run_dir = ws.run_dir(run)
    metrics = run_dir / "metrics.jsonl"
    final_loss = None
    if metrics.exists():
        for line in reversed(metrics.read_text().splitlines()):
            try:
                final_loss = json.loads(line).get("loss")
            except json.JSONDecodeError:
                continue
            if final_loss is not None:
                break
    return {"final_loss": final_loss, "metrics": str(metrics),
            "tensorboard": f"tensorboard --logdir {run_dir / 'tb'}"}


def export_command(
    run: Annotated[str, typer.Option("--run", help="Run under runs/ to export.")],
    out: Annotated[Path, typer.Option(
        "--out", help="New directory for the diffusers pipeline folder; a relative path is taken from the current "
        "directory, not from the workspace (-w).", file_okay=False)],
    raw: Annotated[bool, typer.Option("--raw", help="Export the raw weights instead of the EMA.")] = False,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="Images count or file name of a checkpoint (default: the newest).")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Export a run as a diffusers StableDiffusionPipeline folder (DiffusionPipeline.from_pretrained loads it)."""
    import json

    from opencanvas.train.to_diffusers import export, export_notes

    ws = open_workspace(workspace)
    require(ws, "run", run)
    try:
        path = export(ws, run, out, ema=not raw, checkpoint=checkpoint)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        raise fail(str(err)) from None
    console.print(f"exported [bold]{run}[/] to {path}")
    for note in export_notes(json.loads((path / "opencanvas.json").read_text())["config"]):
        console.print(f"note: {note}", soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this stage's verbs to the root app."""
    app.command("train", help=TRAIN_HELP)(train_command)
    app.command("export")(export_command)
