"""The training loop: precomputed latents -> UNet, counted in images seen.

One optimizer step consumes `batch` images over all ranks: `accumulation`
micro-batches of `micro_batch` images on each rank. Everything a step does is a
function of (config, weights, optimizer state, images seen), so re-running the
same command after a kill resumes from the newest checkpoint and ends with the
same weights, bit for bit on CPU, as a run that was never interrupted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.licenses import refuse_no_derivatives
from opencanvas.progress import progress_bar
from opencanvas.storage import atomic_write_json
from opencanvas.train import distributed as D
from opencanvas.train.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    remove_partial_files,
    save_checkpoint,
    tensors_hash,
)
from opencanvas.train.config import TrainConfig, config_changes, parse_resolutions, resolve_config
from opencanvas.train.data import LatentStream, phase_resolution, step_generator, training_inputs
from opencanvas.train.ema import EMA
from opencanvas.train.metrics import MetricsLog, memory_gb, peak_flops, train_flops_per_image
from opencanvas.train.presets import build_unet, get_preset
from opencanvas.train.recipe import Recipe, apply_recipe, autocast, make_optimizer, resolve_recipe, to_memory_format
from opencanvas.workspace import Workspace


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


class DiffusionLoss(nn.Module):
    """The module data parallelism wraps: its forward is the per-sample loss (B,)."""

    def __init__(self, denoiser: Denoiser, min_snr_gamma: float) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.min_snr_gamma = min_snr_gamma or None

    def forward(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        return self.denoiser.loss(x0, noise, timesteps, text, mask, self.min_snr_gamma)


def lr_at(cfg: TrainConfig, images_seen: int) -> float:
    """Linear warmup over warmup_images, then constant or cosine to zero at `images`."""
    after = images_seen + cfg.batch  # the images this step trains on included
    if cfg.warmup_images and after <= cfg.warmup_images:
        return cfg.lr * after / cfg.warmup_images
    if cfg.lr_schedule == "cosine":
        span = max(1, cfg.images - cfg.warmup_images)
        progress = min(1.0, (after - cfg.warmup_images) / span)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.lr


@dataclass
class Session:
    """Everything one rank holds while training."""

    ws: Workspace
    cfg: TrainConfig
    env: D.DistEnv
    recipe: Recipe
    run_dir: Path
    unet: nn.Module
    denoiser: Denoiser
    step_module: nn.Module  # DiffusionLoss, wrapped in DDP when that is the parallelism
    optimizer: torch.optim.Optimizer
    ema: EMA
    state: TrainState
    data_position: dict[str, int]
    stream: LatentStream | None = None
    log: MetricsLog | None = None


def train(ws: Workspace, latents: str, preset: str, run: str, images: int | None = None,
          batch: int | None = None, resolutions: str | None = None, **options: Any) -> dict[str, Any]:
    """Train (or resume) run `run` on latent set `latents`; returns the summary (also summary.json).

    options: any other TrainConfig field (lr, micro_batch, prediction_type, bf16, ...);
    unknown ones raise ValueError.
    """
    env = D.init_distributed(options.get("device") or "auto")
    try:
        session = _setup(ws, latents, preset, run, images, batch, resolutions, options, env)
        return _run(session)
    finally:
        D.shutdown(env)


# ---- setup ------------------------------------------------------------------------------

def _resolve(ws: Workspace, latents: str, preset_name: str, run: str, images: int | None, batch: int | None,
             resolutions: str | None, options: dict[str, Any], env: D.DistEnv) -> TrainConfig:
    from opencanvas.encode import open_latents

    preset = get_preset(preset_name)
    run_dir = ws.run_dir(run)
    stored = _stored_config(run_dir)
    if resolutions:
        schedule = parse_resolutions(resolutions)
    elif stored is not None:
        schedule = tuple(tuple(r) for r in stored["resolutions"])
    else:
        schedule = None
    # Opened once: a LatentSet reads every part's keys (None: the set's only resolution).
    first = open_latents(ws, latents, schedule[0][0] if schedule else None)
    refuse_no_derivatives(str(first.meta.get("policy") or ""), None, stage="train",
                          subset=str(first.meta.get("subset")))
    schedule = schedule or ((int(first.resolution), 0),)
    if images is None:
        images = stored["images"] if stored else None
    if images is None:
        raise ValueError("--images is required for a new run (total training images, over all ranks)")
    opts = dict(options)
    if batch is not None:
        opts["batch"] = batch
    cfg = resolve_config(run=run, latents=latents, preset=preset, latent_meta=first.meta,
                         resolutions=schedule, images=images, options=opts, world=env.world)
    recipe = resolve_recipe(env.device, bf16=cfg.bf16, sdpa=cfg.sdpa, low_precision_norms=cfg.low_precision_norms,
                            channels_last=cfg.channels_last, fused_adamw=cfg.fused_adamw, compile=cfg.compile)
    cfg = dataclasses.replace(cfg, device=str(env.device), **recipe.to_dict()).validate(env.world)
    if cfg.zero_terminal_snr and cfg.prediction_type == "epsilon":
        raise ValueError("--zero-terminal-snr needs --prediction v_prediction: epsilon is undefined at SNR 0 "
                         "(Lin et al. 2023, section 3.2)")
    if stored is not None:
        changed = config_changes(stored, cfg.to_dict())
        if changed:
            detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
            raise ValueError(f"run {run!r} exists with a different configuration ({detail}). Re-run with the "
                             f"stored settings to resume, or pick a new --run name")
    return cfg


def _stored_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def _setup(ws: Workspace, latents: str, preset: str, run: str, images: int | None, batch: int | None,
           resolutions: str | None, options: dict[str, Any], env: D.DistEnv) -> Session:
    cfg = _resolve(ws, latents, preset, run, images, batch, resolutions, options, env)
    recipe = Recipe(**{k: getattr(cfg, k) for k in Recipe.__dataclass_fields__})
    run_dir = ws.run_dir(run)
    if env.is_main:
        remove_partial_files(run_dir)
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
    D.barrier(env)

    ckpt_path = latest_checkpoint(run_dir)
    ckpt = load_checkpoint(ckpt_path) if ckpt_path else None
    unet = build_unet(cfg.unet, cfg.seed)
    if ckpt is not None:
        unet.load_state_dict(ckpt.model)
    apply_recipe(unet, recipe)
    unet.to(env.device)
    denoiser = Denoiser(unet, NoiseSchedule(zero_terminal_snr=cfg.zero_terminal_snr), cfg.prediction_type)
    denoiser.to(env.device)
    loss_module = DiffusionLoss(denoiser, cfg.min_snr_gamma)
    if recipe.compile:
        loss_module.compile()
    step_module = D.wrap_model(loss_module, unet, env, cfg.parallel)
    optimizer = make_optimizer(unet.parameters(), recipe, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               betas=cfg.adam_betas, eps=cfg.adam_eps)
    ema = EMA(unet, cfg.ema_decay)
    state = TrainState()
    if ckpt is not None:
        _load_optimizer(unet, optimizer, ckpt.optimizer)
        for name, t in ema.shadow.items():
            D.load_full_into(t, ckpt.ema[name])
        state = ckpt.state
    return Session(ws=ws, cfg=cfg, env=env, recipe=recipe, run_dir=run_dir, unet=unet, denoiser=denoiser,
                   step_module=step_module, optimizer=optimizer, ema=ema, state=state,
                   data_position=dict(state.data))


def _load_optimizer(unet: nn.Module, optimizer: torch.optim.Optimizer, osd: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(unet, optimizer, osd, options=StateDictOptions(full_state_dict=True))


def _gather_state(s: Session) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """Full (unsharded, CPU) model, EMA and optimizer state; collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model = get_model_state_dict(s.unet, options=opts)
    optim = get_optimizer_state_dict(s.unet, s.optimizer, options=opts)
    ema = {name: D.full_tensor(t) for name, t in s.ema.shadow.items()}
    return model, ema, optim


def _save(s: Session) -> Path | None:
    model, ema, optim = _gather_state(s)
    s.state.data = s.stream.position() if s.stream else s.data_position
    path = None
    if s.env.is_main:
        path = save_checkpoint(s.run_dir, s.cfg.to_dict(), s.state, model, ema, optim, keep=s.cfg.keep)
    D.barrier(s.env)
    return path


# ---- the loop ---------------------------------------------------------------------------

def _stream(s: Session) -> LatentStream:
    """The latent stream of the current resolution phase (reopened when the phase changes)."""
    res = phase_resolution(s.cfg.resolutions, s.state.images_seen)
    if s.stream is None or s.stream.resolution != res:
        s.stream = LatentStream.open(s.ws, s.cfg.latents, res, s.cfg.micro_batch, s.cfg.seed, s.env.rank,
                                     s.env.world, s.env.device, position=s.data_position, workers=s.cfg.workers,
                                     holdout=s.cfg.holdout, key_filter=s.cfg.key_filter)
    return s.stream


def _sync(s: Session, last: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if not s.env.active or last:
        if s.env.active and s.cfg.parallel == "fsdp":
            s.unet.set_requires_gradient_sync(True)
        return contextlib.nullcontext()
    if s.cfg.parallel == "fsdp":
        s.unet.set_requires_gradient_sync(False)
        return contextlib.nullcontext()
    return s.step_module.no_sync()


def train_step(s: Session) -> dict[str, float]:
    """One optimizer step (or a skipped one); advances images seen by the global batch."""
    cfg, env = s.cfg, s.env
    accumulation = cfg.accumulation(env.world)
    lr = lr_at(cfg, s.state.images_seen)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    stream = _stream(s)
    loss_sum = torch.zeros((), device=env.device)
    for micro in range(accumulation):
        # Micro-batch g = micro * world + rank reads loader batch (step * accumulation + micro) * world + rank,
        # so seeding by g makes a step the same computation on any number of ranks.
        gen = step_generator(env.device, cfg.seed, micro * env.world + env.rank, s.state.images_seen)
        inputs = training_inputs(stream.next_batch(), stream, gen, env.device,
                                 num_timesteps=s.denoiser.schedule.num_train_timesteps,
                                 caption_dropout=cfg.caption_dropout, offset_noise=cfg.offset_noise,
                                 use_text_mask=cfg.use_text_mask)
        x0, noise = to_memory_format(inputs["x0"], s.recipe), to_memory_format(inputs["noise"], s.recipe)
        with _sync(s, last=micro == accumulation - 1):
            with autocast(env.device, s.recipe):
                loss = s.step_module(x0, noise, inputs["timesteps"], inputs["text"], inputs["mask"]).mean()
            (loss / accumulation).backward()
        loss_sum += loss.detach()
    # Mean loss over ranks; every rank sees the same value, so all skip (or step) together.
    loss_mean = float(D.all_reduce_sum(env, loss_sum)) / (accumulation * env.world)
    max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(s.unet.parameters(), max_norm)
    grad_norm = float(D.full_tensor(grad_norm))
    finite = math.isfinite(loss_mean) and math.isfinite(grad_norm)
    if finite:
        s.optimizer.step()
        s.ema.update(s.unet, s.state.steps - s.state.skipped_steps)
        s.state.bad_streak = 0
    else:
        s.state.skipped_steps += 1
        s.state.bad_streak += 1
    s.optimizer.zero_grad(set_to_none=True)
    s.state.steps += 1
    s.state.images_seen += cfg.batch
    if s.state.bad_streak >= cfg.max_bad_steps:
        raise TrainingDiverged(
            f"{s.state.bad_streak} consecutive steps had a non-finite loss or gradient (last loss {loss_mean}, "
            f"grad norm {grad_norm}) at {s.state.images_seen} images; the newest checkpoint is untouched. "
            "Lower --lr, raise --warmup-images, or try --no-bf16")
    return {"loss": loss_mean, "lr": lr, "grad_norm": grad_norm, "skipped": 0.0 if finite else 1.0}


def _crossed(every: int, before: int, after: int) -> bool:
    return every > 0 and after // every > before // every


def _run(s: Session) -> dict[str, Any]:
    cfg, env, state = s.cfg, s.env, s.state
    if env.is_main:
        s.log = MetricsLog(s.run_dir, state.images_seen)
    validator = _validator(s) if cfg.validate_every else None  # None on ranks > 0
    peak = peak_flops(env.device, s.recipe.bf16)
    flops: dict[int, float] = {}
    start_images, start_wall = state.images_seen, state.wall_seconds
    window_t, window_images = time.perf_counter(), state.images_seen
    t0 = time.perf_counter()
    s.unet.train()
    with progress_bar(disable=None if env.is_main else True) as bar:
        task = bar.add_task(f"train {cfg.run}", total=cfg.images, completed=state.images_seen, unit="img")
        while state.images_seen < cfg.images:
            before = state.images_seen
            res = phase_resolution(cfg.resolutions, before)
            if res not in flops:  # a forward pass on every rank (collective under FSDP)
                flops[res] = _flops(s, res)
            scalars = train_step(s)
            bar.update(task, completed=state.images_seen, loss=scalars["loss"])  # the progress line shows it
            state.wall_seconds = start_wall + time.perf_counter() - t0
            last = state.images_seen >= cfg.images
            if env.is_main and (last or _crossed(cfg.log_every, before, state.images_seen) or not cfg.log_every):
                now = time.perf_counter()
                rate = (state.images_seen - window_images) / max(now - window_t, 1e-9)
                window_t, window_images = now, state.images_seen
                scalars.update(images_per_s=rate, memory_gb=memory_gb(env.device), resolution=res,
                               tflops=flops[res] * rate / 1e12)
                if peak:
                    scalars["mfu"] = flops[res] * rate / (peak * env.world)
                s.log.log(state.images_seen, scalars)
            if cfg.validate_every and (_crossed(cfg.validate_every, before, state.images_seen) or last):
                _validate(s, validator)
            if _crossed(cfg.checkpoint_every, before, state.images_seen) and not last:
                _save(s)
    if start_images < cfg.images or latest_checkpoint(s.run_dir) is None:
        _save(s)
    wall = time.perf_counter() - t0
    weights_hash, rank_hashes = _weights_hashes(s)
    summary = {
        "run": cfg.run, "images_seen": state.images_seen, "steps": state.steps,
        "skipped_steps": state.skipped_steps, "wall_seconds": state.wall_seconds,
        "session_wall_seconds": wall, "session_images": state.images_seen - start_images,
        "images_per_s": (state.images_seen - start_images) / wall if wall > 0 else None,
        "device": str(env.device), "world_size": env.world, "recipe": s.recipe.to_dict(),
        "checkpoint": str(latest_checkpoint(s.run_dir).relative_to(s.run_dir)),
        "weights_sha256": weights_hash, "rank_weights_sha256": rank_hashes,
    }
    if env.is_main:
        atomic_write_json(s.run_dir / "summary.json", summary)
        s.log.close()
    return summary


def _weights_hashes(s: Session) -> tuple[str | None, list[object]]:
    """sha256 of the final (full) UNet weights, and of each rank's replica (DDP: all must agree)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(s.unet, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    sharded = s.env.active and s.cfg.parallel == "fsdp"
    local = None if sharded else tensors_hash(s.unet.state_dict())
    return (tensors_hash(full) if s.env.is_main else None), D.all_gather_object(s.env, local)


def _flops(s: Session, res: int) -> float:
    size = res // int(s.cfg.data.get("downscale", 8))
    c = int(s.cfg.unet["in_channels"])
    with autocast(s.env.device, s.recipe):
        return train_flops_per_image(s.unet, (c, size, size),
                                     (int(s.cfg.data["text_len"]), int(s.cfg.data["text_dim"])), s.env.device)


def _validator(s: Session) -> Any:
    from opencanvas.train.validate import Validator

    return Validator.create(s.ws, s.cfg, s.env.device) if s.env.is_main else None


def _validate(s: Session, validator: Any) -> None:
    ema = {name: D.full_tensor(t) for name, t in s.ema.shadow.items()}  # collective under FSDP
    if s.env.is_main:
        grid = validator.render(ema, phase_resolution(s.cfg.resolutions, s.state.images_seen - 1))
        path = s.run_dir / "samples" / f"grid-{s.state.images_seen:012d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        import numpy as np

        s.log.image("validation/grid", np.asarray(grid), s.state.images_seen)
    D.barrier(s.env)
