"""The UNet's part of the one training loop (opencanvas.training): precomputed latents -> UNet.

One optimizer step consumes `batch` images over all ranks: `accumulation`
micro-batches of `micro_batch` images on each rank. Everything a step does is a
function of (config, weights, optimizer state, images seen), so re-running the
same command after a kill resumes from the newest checkpoint and ends with the
same weights, bit for bit on CPU, as a run that was never interrupted. The loop,
checkpoints, EMA, resume and logs are opencanvas.training's; this module supplies
the UNet's step (`UNetTask`), its logged FLOPs and its validation grids.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from opencanvas.diffusion.conditioning import Conditioning
from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule, lognormal_timesteps
from opencanvas.licenses import refuse_no_derivatives
from opencanvas.storage import atomic_write_json
from opencanvas.train.checkpoint import latest_checkpoint, tensors_hash
from opencanvas.train.config import TrainConfig, config_changes, parse_resolutions, resolve_config
from opencanvas.train.data import (
    LatentStream,
    phase_resolution,
    step_generator,
    stream_conditioning,
    training_inputs,
)
from opencanvas.train.metrics import memory_gb, peak_flops, train_flops_per_image
from opencanvas.train.presets import build_unet, get_preset
from opencanvas.train.recipe import Recipe, apply_recipe, autocast, make_optimizer, resolve_recipe, to_memory_format
from opencanvas.training import distributed as D
from opencanvas.training.checkpoint import TrainState
from opencanvas.training.ema import EMA
from opencanvas.training.loop import (
    Budget,
    LoopSettings,
    TrainingDiverged,
    TrainTask,
    lr_at,
    measure_rate,
    open_checkpoint,
    restore,
    run,
)
from opencanvas.training.metrics_log import MetricsLog
from opencanvas.workspace import Workspace

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

__all__ = ["DiffusionLoss", "TrainingDiverged", "UNetTask", "lr_at", "train"]


class DiffusionLoss(nn.Module):
    """The module data parallelism wraps: its forward is the per-sample loss (B,)."""

    def __init__(self, denoiser: Denoiser, min_snr_gamma: float) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.min_snr_gamma = min_snr_gamma or None

    def forward(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                cond: Conditioning) -> torch.Tensor:
        return self.denoiser.loss(x0, noise, timesteps, cond, min_snr_gamma=self.min_snr_gamma)


def train(ws: Workspace, latents: str, preset: str, run: str, images: int | None = None,
          batch: int | None = None, resolutions: str | None = None, **options: Any) -> dict[str, Any]:
    """Train (or resume) run `run` on latent set `latents`; returns the summary (also summary.json).

    options: any other TrainConfig field (lr, micro_batch, prediction_type, bf16, ...);
    unknown ones raise ValueError.
    """
    env = D.init_distributed(options.get("device") or "auto")
    try:
        task = _setup(ws, latents, preset, run, images, batch, resolutions, options, env)
        return _run(task)
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
    minutes = options.get("minutes")
    if images is not None and minutes is not None:
        raise ValueError("give --images or --minutes, not both")
    if images is None and minutes is None:
        images = stored["images"] if stored else None
        if images is None:
            raise ValueError("--images (or --minutes) is required for a new run (total training images, over all "
                             "ranks)")
    opts = dict(options)
    if batch is not None:
        opts["batch"] = batch
    if opts.get("class_column"):
        opts["class_names"] = _class_vocabulary(ws, first, opts, stored)
    rate = stored.get("measured_images_per_s") if stored else None
    opts["measured_images_per_s"] = rate if minutes is not None else None
    # With --minutes, `images` follows from the recorded rate (or, on a first run, from the warm-up in _run).
    cfg = resolve_config(run=run, latents=latents, preset=preset, latent_meta=first.meta,
                         resolutions=schedule, images=images or 1, options=opts, world=env.world)
    if minutes is not None:
        if cfg.lr_schedule != "constant":
            raise ValueError("--minutes needs --lr-schedule constant (a cosine ends at a number of images): "
                             "give --images instead")
        cfg = dataclasses.replace(cfg, images=Budget(minutes=minutes).to_images(cfg.batch, rate) or cfg.batch)
    recipe = resolve_recipe(env.device, bf16=cfg.bf16, sdpa=cfg.sdpa, low_precision_norms=cfg.low_precision_norms,
                            channels_last=cfg.channels_last, fused_adamw=cfg.fused_adamw, compile=cfg.compile)
    cfg = dataclasses.replace(cfg, device=str(env.device), bf16=recipe.bf16, sdpa=recipe.sdpa,
                              low_precision_norms=recipe.low_precision_norms, channels_last=recipe.channels_last,
                              fused_adamw=recipe.fused_adamw, compile=recipe.compile).validate(env.world)
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


def _class_vocabulary(ws: Workspace, latent_set: Any, options: dict[str, Any],
                      stored: dict[str, Any] | None) -> tuple[str, ...]:
    """The class names of --class-column: a resumed run's stored ones, else built from the latent set's images."""
    from opencanvas.train.classes import DEFAULT_MAX_CLASSES, build_vocabulary, check_class_column, key_values

    column = str(options["class_column"])
    check_class_column(column)
    if stored is not None and stored.get("class_column") == column and stored.get("class_names") is not None:
        return tuple(stored["class_names"])
    values = key_values(ws, latent_set.keys(), column)
    return build_vocabulary(values.values(), column, int(options.get("max_classes") or DEFAULT_MAX_CLASSES))


def _stored_config(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def _setup(ws: Workspace, latents: str, preset: str, run: str, images: int | None, batch: int | None,
           resolutions: str | None, options: dict[str, Any], env: D.DistEnv) -> UNetTask:
    cfg = _resolve(ws, latents, preset, run, images, batch, resolutions, options, env)
    run_dir = ws.run_dir(run)
    if env.is_main:
        atomic_write_json(run_dir / "config.json", cfg.to_dict())
    ckpt = open_checkpoint(run_dir, env)
    unet = build_unet(cfg.unet, cfg.seed)
    if ckpt is not None:  # before the recipe and the wrapping: FSDP shards what is loaded here
        unet.load_state_dict(ckpt.model)
    task = UNetTask(ws, cfg, env, run_dir, unet)
    if ckpt is not None:
        task.state = restore(task, ckpt, model=False)
        task.data_start = dict(task.state.data)
    return task


class UNetTask(TrainTask):
    """The UNet under the recipe and data parallelism, its latent stream, and its validation grids."""

    def __init__(self, ws: Workspace, cfg: TrainConfig, env: D.DistEnv, run_dir: Path, unet: nn.Module) -> None:
        self.ws, self.cfg, self.env, self.run_dir = ws, cfg, env, run_dir
        self.recipe = Recipe(**{k: getattr(cfg, k) for k in Recipe.__dataclass_fields__})
        apply_recipe(unet, self.recipe)
        unet.to(env.device)
        self.model = unet
        self.denoiser = Denoiser(unet, NoiseSchedule(zero_terminal_snr=cfg.zero_terminal_snr),
                                 cfg.prediction_type).to(env.device)
        loss_module = DiffusionLoss(self.denoiser, cfg.min_snr_gamma)
        if self.recipe.compile:
            loss_module.compile()
        # DiffusionLoss, wrapped in DDP when that is the parallelism
        self.step_module = D.wrap_model(loss_module, unet, env, cfg.parallel)
        self.optimizer = make_optimizer(unet.parameters(), self.recipe, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        betas=cfg.adam_betas, eps=cfg.adam_eps)
        self.ema = EMA(unet, cfg.ema_decay)
        self.extra = {}
        self.state = TrainState()
        self.data_start: dict[str, int] = {}
        self.stream: LatentStream | None = None
        self.flops: dict[int, float] = {}
        self.peak = peak_flops(env.device, self.recipe.bf16)
        self.validator: Any = None
        self.stream_conditioning: dict[str, Any] | None = None

    def settings(self) -> LoopSettings:
        cfg = self.cfg
        return LoopSettings(name=f"train {cfg.run}", images=cfg.images, batch=cfg.batch, lr=cfg.lr,
                            warmup_images=cfg.warmup_images, lr_schedule=cfg.lr_schedule,
                            checkpoint_every=cfg.checkpoint_every, checkpoint_minutes=cfg.checkpoint_minutes,
                            keep=cfg.keep, log_every=cfg.log_every, max_bad_steps=cfg.max_bad_steps)

    def _stream(self, images_seen: int) -> LatentStream:
        """The latent stream of the current resolution phase (reopened when the phase changes)."""
        res = phase_resolution(self.cfg.resolutions, images_seen)
        if self.stream is None or self.stream.resolution != res:
            self.stream = LatentStream.open(self.ws, self.cfg.latents, res, self.cfg.micro_batch, self.cfg.seed,
                                            self.env.rank, self.env.world, self.env.device,
                                            position=self.data_start, workers=self.cfg.workers,
                                            holdout=self.cfg.holdout, key_filter=self.cfg.key_filter,
                                            caption_mix=self.cfg.caption_mix, **self._conditioning())
        return self.stream

    def _conditioning(self) -> dict[str, Any]:
        """The stream's conditioning settings (the class map is read from the catalog once)."""
        if self.stream_conditioning is None:
            self.stream_conditioning = stream_conditioning(self.ws, self.cfg.to_dict())
        return self.stream_conditioning

    def _sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Skip the gradient all-reduce on all but the last micro-batch of a step."""
        if not self.env.active or last:
            if self.env.active and self.cfg.parallel == "fsdp":
                cast("FSDPModule", self.model).set_requires_gradient_sync(True)
            return contextlib.nullcontext()
        if self.cfg.parallel == "fsdp":
            cast("FSDPModule", self.model).set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return cast("DistributedDataParallel", self.step_module).no_sync()

    def gradients(self, state: TrainState) -> dict[str, float]:
        cfg, env = self.cfg, self.env
        accumulation = cfg.accumulation(env.world)
        stream = self._stream(state.images_seen)
        loss_sum = torch.zeros((), device=env.device)
        for micro in range(accumulation):
            # Micro-batch g = micro * world + rank reads loader batch (step * accumulation + micro) * world + rank,
            # so seeding by g makes a step the same computation on any number of ranks.
            gen = step_generator(env.device, cfg.seed, micro * env.world + env.rank, state.images_seen)
            inputs = training_inputs(stream.next_batch(), stream, gen, env.device,
                                     num_timesteps=self.denoiser.schedule.num_train_timesteps,
                                     caption_dropout=cfg.caption_dropout, offset_noise=cfg.offset_noise,
                                     use_text_mask=cfg.use_text_mask, slot_dropout=cfg.slot_dropout,
                                     encoder_dropout=cfg.encoder_dropout, image_dropout=cfg.image_dropout)
            if cfg.timestep_sampling == "lognormal":
                inputs["timesteps"] = lognormal_timesteps(self.denoiser, len(cast(torch.Tensor, inputs["x0"])), gen,
                                                          cfg.lognormal_mean, cfg.lognormal_std)
            x0 = to_memory_format(cast(torch.Tensor, inputs["x0"]), self.recipe)
            noise = to_memory_format(cast(torch.Tensor, inputs["noise"]), self.recipe)
            with self._sync(last=micro == accumulation - 1):
                with autocast(env.device, self.recipe):
                    loss = self.step_module(x0, noise, inputs["timesteps"], inputs["cond"]).mean()
                (loss / accumulation).backward()
            loss_sum += loss.detach()
        # Mean loss over ranks; every rank sees the same value, so all skip (or step) together.
        loss_mean = float(D.all_reduce_sum(env, loss_sum)) / (accumulation * env.world)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return {"loss": loss_mean, "grad_norm": float(D.full_tensor(grad_norm))}

    def data_position(self) -> dict[str, int]:
        return self.stream.position() if self.stream else self.data_start

    def before_step(self, state: TrainState) -> None:
        res = phase_resolution(self.cfg.resolutions, state.images_seen)
        if res not in self.flops:  # a forward pass on every rank (collective under FSDP)
            size = res // int(self.cfg.data.get("downscale", 8))
            c = int(self.cfg.unet["in_channels"])
            with autocast(self.env.device, self.recipe):
                self.flops[res] = train_flops_per_image(
                    self.model, (c, size, size), (int(self.cfg.data["text_len"]), int(self.cfg.data["text_dim"])),
                    self.env.device, cond=self._stream(state.images_seen).null_conditioning(self.cfg.use_text_mask))

    def log_extras(self, state: TrainState, images_per_s: float) -> dict[str, float]:
        res = phase_resolution(self.cfg.resolutions, state.images_seen - self.cfg.batch)
        extras = {"memory_gb": memory_gb(self.env.device), "resolution": res,
                  "tflops": self.flops[res] * images_per_s / 1e12}
        if self.peak:
            extras["mfu"] = self.flops[res] * images_per_s / (self.peak * self.env.world)
        return extras

    def after_step(self, state: TrainState, before: int, last: bool, log: MetricsLog | None) -> None:
        every = self.cfg.validate_every
        if every and (last or state.images_seen // every > before // every):
            self._validate(state, log)

    def _validate(self, state: TrainState, log: MetricsLog | None) -> None:
        assert self.ema is not None  # the UNet always keeps one
        ema = {name: D.full_tensor(t) for name, t in self.ema.shadow.items()}  # collective under FSDP
        if self.env.is_main:
            grid = self.validator.render(ema, phase_resolution(self.cfg.resolutions, state.images_seen - 1))
            path = self.run_dir / "samples" / f"grid-{state.images_seen:012d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            grid.save(path)
            import numpy as np

            if log is not None:
                log.image("validation/grid", np.asarray(grid), state.images_seen)
        D.barrier(self.env)


def _run(task: UNetTask) -> dict[str, Any]:
    cfg, env, state = task.cfg, task.env, task.state
    log = MetricsLog(task.run_dir, state.images_seen) if env.is_main else None
    if cfg.validate_every and env.is_main:  # fails early, before any training
        from opencanvas.train.validate import Validator

        task.validator = Validator.create(task.ws, cfg, env.device)
    try:
        if cfg.minutes is not None and cfg.measured_images_per_s is None:
            rate = measure_rate(task, task.settings(), state, cfg.minutes, log)
            images = max(state.images_seen, Budget(minutes=cfg.minutes).to_images(cfg.batch, rate) or 0)
            cfg = task.cfg = dataclasses.replace(cfg, images=images, measured_images_per_s=rate)
            if env.is_main:
                atomic_write_json(task.run_dir / "config.json", cfg.to_dict())
        result = run(task, task.settings(), state, task.run_dir, cfg.to_dict(), log)
    finally:
        if log is not None:
            log.close()
    wall = result.session_seconds
    weights_hash, rank_hashes = _weights_hashes(task)
    newest = latest_checkpoint(task.run_dir)
    summary = {
        "run": cfg.run, "images_seen": state.images_seen, "steps": state.steps,
        "skipped_steps": state.skipped_steps, "wall_seconds": state.wall_seconds,
        "session_wall_seconds": wall, "session_images": state.images_seen - result.start_images,
        "images_per_s": (state.images_seen - result.start_images) / wall if wall > 0 else None,
        "device": str(env.device), "world_size": env.world, "recipe": task.recipe.to_dict(),
        "checkpoint": str(newest.relative_to(task.run_dir)) if newest else None,
        "final_loss": result.last_scalars.get("loss"),
        "metrics": task.ws.relative(task.run_dir / "metrics.jsonl"),
        "tensorboard": task.ws.relative(task.run_dir / "tb"),
        "weights_sha256": weights_hash, "rank_weights_sha256": rank_hashes,
    }
    if env.is_main:
        atomic_write_json(task.run_dir / "summary.json", summary)
    return summary


def _weights_hashes(task: UNetTask) -> tuple[str | None, list[object]]:
    """sha256 of the final (full) UNet weights, and of each rank's replica (DDP: all must agree)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(task.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    sharded = task.env.active and task.cfg.parallel == "fsdp"
    local = None if sharded else tensors_hash(task.model.state_dict())
    full_hash = tensors_hash(cast(dict[str, torch.Tensor], full)) if task.env.is_main else None
    return full_hash, D.all_gather_object(task.env, local)
