"""The one training loop: the UNet, the autoencoder and the CLIP all train through it.

Progress is counted in images seen. A step's random draws come from
`seeds.step_generator(seed, micro-batch, images seen)`, and the loop owns everything
else a resume must reproduce: the learning-rate schedule, skipped non-finite steps,
the EMA and the checkpoints. So re-running the same command after a kill resumes from
the newest checkpoint and ends with the same weights, bit for bit on CPU, as a run that
was never interrupted.

What differs between models is a `TrainTask`: how one step's gradients are computed
(data, loss, gradient accumulation, clipping), plus optional hooks (logged extras,
validation grids). The loop does the rest:

- checkpoints by default, every `checkpoint_every` images (default: a twentieth of the
  run) or `checkpoint_minutes` of wall time, whichever comes first; the newest `keep`
  are kept (`checkpoint.py`);
- metrics.jsonl and TensorBoard (`metrics_log.py`);
- a budget in minutes, converted once to images from a measured warm-up
  (`images_for_minutes`) and recorded, so that a re-run is exact.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opencanvas.progress import progress_bar
from opencanvas.training import AUTO_CHECKPOINTS, DEFAULT_CHECKPOINT_MINUTES, DEFAULT_KEEP
from opencanvas.training import distributed as D
from opencanvas.training.checkpoint import (
    Checkpoint,
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    remove_partial_files,
    save_checkpoint,
)
from opencanvas.training.ema import EMA
from opencanvas.training.metrics_log import MetricsLog, has_rows, set_aside

WARMUP_SECONDS = 10.0  # wall time a `minutes` budget measures the step rate over (at most)
WARMUP_SHARE = 0.05  # ... or this share of the budget, whichever is less


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses or gradients."""


class RestartWarning(UserWarning):
    """A run with logs but no checkpoint left starts again from image 0."""


@dataclass(frozen=True)
class LoopSettings:
    """How long to train and when to save: what the loop needs besides the task."""

    name: str  # progress label, e.g. "train demo" or "autoencoder ae"
    images: int  # total training images over all ranks
    batch: int  # global images per optimizer step
    lr: float  # peak learning rate of the task's main optimizer
    warmup_images: int = 0
    lr_schedule: str = "constant"  # or "cosine" (to zero at `images`)
    checkpoint_every: int | None = None  # images; None: a twentieth of the run; 0: only at the end
    checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES  # wall time; 0: no time-based checkpoints
    keep: int = DEFAULT_KEEP  # newest checkpoints kept; 0 keeps all
    log_every: int = 0  # images; 0: every step
    max_bad_steps: int = 5  # consecutive non-finite steps before the run stops

    @property
    def checkpoint_interval(self) -> int:
        """Images between checkpoints (0: none before the end)."""
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return max(1, self.images // self.batch // AUTO_CHECKPOINTS) * self.batch


class TrainTask:
    """One model's part of training. Subclasses set the attributes and implement `gradients`."""

    env: D.DistEnv
    model: nn.Module  # checkpointed as model/, averaged into ema/ (the unwrapped module)
    optimizer: torch.optim.Optimizer  # the model's; the loop sets its learning rate
    ema: EMA | None = None
    # Further trained modules and their optimizers (an autoencoder's discriminator), checkpointed with the model.
    extra: dict[str, tuple[nn.Module, torch.optim.Optimizer]]

    def gradients(self, state: TrainState) -> dict[str, float]:
        """Forward and backward of the step at `state.images_seen`, gradients clipped.

        Returns scalars to log, with at least `loss` and `grad_norm` (the same on every rank).
        """
        raise NotImplementedError

    def after_update(self) -> None:
        """Called after the optimizers stepped (e.g. clamp a parameter)."""

    def data_position(self) -> dict[str, int]:
        """Where the data stream continues (saved in the checkpoint state)."""
        return {}

    def before_step(self, state: TrainState) -> None:
        """Called before each step (collectives every rank must take part in, e.g. FLOP counting)."""

    def log_extras(self, state: TrainState, images_per_s: float) -> dict[str, float]:
        """More scalars for a logged row (rank 0)."""
        return {}

    def after_step(self, state: TrainState, before: int, last: bool, log: MetricsLog | None) -> None:
        """Called after every step on every rank (validation grids)."""


def lr_at(settings: Any, images_seen: int) -> float:
    """Linear warmup over warmup_images, then constant or cosine to zero at `images`.

    `settings` has lr, batch, images, warmup_images and lr_schedule (LoopSettings or the UNet's TrainConfig).
    """
    after = images_seen + settings.batch  # the images this step trains on included
    if settings.warmup_images and after <= settings.warmup_images:
        return settings.lr * after / settings.warmup_images
    if settings.lr_schedule == "cosine":
        span = max(1, settings.images - settings.warmup_images)
        progress = min(1.0, (after - settings.warmup_images) / span)
        return settings.lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    return settings.lr


def crossed(every: int, before: int, after: int) -> bool:
    return every > 0 and after // every > before // every


# ---- resume -------------------------------------------------------------------------------------

def open_checkpoint(run_dir: Path, env: D.DistEnv, parts: tuple[str, ...] = ("model", "ema", "optim", "extra")
                    ) -> Checkpoint | None:
    """The newest intact checkpoint of `run_dir` (None: start from image 0).

    Rank 0 first removes a killed save's temporary files and renames damaged checkpoints aside
    (each named in a warning). Without any checkpoint but with an earlier log, it warns that the
    run starts again and renames the log aside instead of overwriting it.
    """
    if env.is_main:
        remove_partial_files(run_dir)
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            path = latest_checkpoint(run_dir, quarantine=True)
        if path is None and has_rows(run_dir):
            moved = set_aside(run_dir)
            warnings.warn(f"{run_dir} has a training log but no checkpoint left (deleted or damaged): training "
                          f"starts again from image 0; the old log is kept as "
                          f"{', '.join(p.name for p in moved)}", RestartWarning, stacklevel=2)
    D.barrier(env)
    path = latest_checkpoint(run_dir)
    return load_checkpoint(path, parts) if path is not None else None


def restore(task: TrainTask, ckpt: Checkpoint, model: bool = True) -> TrainState:
    """Load a checkpoint into the task (model=False: the caller loaded the weights before wrapping)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if model:
        task.model.load_state_dict(ckpt.model)
    full = StateDictOptions(full_state_dict=True)
    set_optimizer_state_dict(task.model, task.optimizer, ckpt.optimizer, options=full)
    if task.ema is not None:
        if not ckpt.ema:
            raise ValueError(f"{ckpt.path} holds no EMA weights but this run keeps an EMA: resume with the "
                             "settings the run started with")
        for name, t in task.ema.shadow.items():
            D.load_full_into(t, ckpt.ema[name])
    for name, (module, optimizer) in task.extra.items():
        module.load_state_dict(ckpt.extra[name])
        set_optimizer_state_dict(module, optimizer, ckpt.extra_optimizers[name], options=full)
    return ckpt.state


def save(task: TrainTask, state: TrainState, run_dir: Path, config: dict[str, Any], keep: int) -> Path | None:
    """Checkpoint the task (collective under FSDP: call on every rank); rank 0 writes."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    # Full (unsharded, CPU) state dicts: collective under FSDP. Values are tensors for these modules.
    model: dict[str, torch.Tensor] = dict(get_model_state_dict(task.model, options=opts))  # type: ignore[arg-type]
    optim: dict[str, Any] = dict(get_optimizer_state_dict(task.model, task.optimizer, options=opts))
    ema = {name: D.full_tensor(t) for name, t in task.ema.shadow.items()} if task.ema is not None else {}
    extra: dict[str, dict[str, torch.Tensor]] = {
        n: dict(get_model_state_dict(m, options=opts)) for n, (m, _) in task.extra.items()}  # type: ignore[arg-type]
    extra_optim: dict[str, dict[str, Any]] = {
        n: dict(get_optimizer_state_dict(m, o, options=opts)) for n, (m, o) in task.extra.items()}
    state.data = task.data_position()
    path = None
    if task.env.is_main:
        path = save_checkpoint(run_dir, config, state, model, ema, optim, keep=keep, extra=extra,
                               extra_optimizers=extra_optim)
    D.barrier(task.env)
    return path


# ---- one step -----------------------------------------------------------------------------------

def train_step(task: TrainTask, state: TrainState, settings: LoopSettings) -> dict[str, float]:
    """One optimizer step (or a skipped one); advances images seen by the global batch."""
    lr = lr_at(settings, state.images_seen)
    for group in task.optimizer.param_groups:
        group["lr"] = lr
    scalars = task.gradients(state)
    loss, grad_norm = float(scalars["loss"]), float(scalars["grad_norm"])
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    optimizers = [task.optimizer] + [o for _, o in task.extra.values()]
    if finite:
        for optimizer in optimizers:
            optimizer.step()
        task.after_update()
        if task.ema is not None:
            task.ema.update(task.model, state.steps - state.skipped_steps)
        state.bad_streak = 0
    else:
        state.skipped_steps += 1
        state.bad_streak += 1
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    state.steps += 1
    state.images_seen += settings.batch
    if state.bad_streak >= settings.max_bad_steps:
        raise TrainingDiverged(
            f"{state.bad_streak} consecutive steps had a non-finite loss or gradient (last loss {loss}, "
            f"grad norm {grad_norm}) at {state.images_seen} images; the newest checkpoint is untouched. "
            "Lower the learning rate, raise the warmup, or try --no-bf16")
    return {**scalars, "lr": lr, "skipped": 0.0 if finite else 1.0}


# ---- the loop -----------------------------------------------------------------------------------

@dataclass
class LoopResult:
    state: TrainState
    start_images: int  # images seen when this session started
    session_seconds: float
    checkpoint: Path | None  # the newest checkpoint after the session
    last_scalars: dict[str, float] = field(default_factory=dict)


def run(task: TrainTask, settings: LoopSettings, state: TrainState, run_dir: Path, config: dict[str, Any],
        log: MetricsLog | None = None) -> LoopResult:
    """Train from `state` to `settings.images`, checkpointing as it goes and at the end.

    `config` is embedded in every checkpoint. `log` (rank 0): where rows go.
    """
    env = task.env
    start_images, start_wall = state.images_seen, state.wall_seconds
    window_t, window_images = time.perf_counter(), state.images_seen
    t0 = last_save = time.perf_counter()
    interval = settings.checkpoint_interval
    scalars: dict[str, float] = {}
    task.model.train()
    with progress_bar(disable=None if env.is_main else True) as bar:
        bar_task = bar.add_task(settings.name, total=settings.images, completed=state.images_seen, unit="img")
        while state.images_seen < settings.images:
            before = state.images_seen
            task.before_step(state)
            scalars = train_step(task, state, settings)
            bar.update(bar_task, completed=state.images_seen, loss=scalars["loss"])
            now = time.perf_counter()
            state.wall_seconds = start_wall + now - t0
            last = state.images_seen >= settings.images
            if log is not None and (last or not settings.log_every
                                    or crossed(settings.log_every, before, state.images_seen)):
                rate = (state.images_seen - window_images) / max(now - window_t, 1e-9)
                window_t, window_images = now, state.images_seen
                log.log(state.images_seen, {**scalars, "images_per_s": rate, **task.log_extras(state, rate)})
            task.after_step(state, before, last, log)
            timed = settings.checkpoint_minutes > 0 and now - last_save >= settings.checkpoint_minutes * 60
            if env.active and settings.checkpoint_minutes > 0:  # clocks differ: all ranks follow rank 0 to the
                timed = bool(D.broadcast_object(env, timed))   # (collective) save
            if (timed or crossed(interval, before, state.images_seen)) and not last:
                save(task, state, run_dir, config, settings.keep)
                last_save = time.perf_counter()
    newest = latest_checkpoint(run_dir)
    if start_images < settings.images or newest is None:
        newest = save(task, state, run_dir, config, settings.keep) or latest_checkpoint(run_dir)
    task.model.eval()
    return LoopResult(state, start_images, time.perf_counter() - t0, newest, scalars)


@dataclass(frozen=True)
class Budget:
    """How far to train: the least of the given limits (at least one is needed)."""

    images: int | None = None
    steps: int | None = None
    minutes: float | None = None

    def __post_init__(self) -> None:
        if self.images is None and self.steps is None and self.minutes is None:
            raise ValueError("give a training budget: --images N, --steps N and/or --minutes M")

    def to_images(self, batch: int, images_per_s: float | None) -> int | None:
        """The budget in images (None: minutes given but no rate measured yet)."""
        limits = [v for v in (self.images, None if self.steps is None else self.steps * batch) if v is not None]
        if self.minutes is not None:
            if images_per_s is None:
                return None
            limits.append(images_for_minutes(self.minutes, images_per_s, batch))
        return min(limits)


def images_for_minutes(minutes: float, images_per_s: float, batch: int, at_least: int = 0) -> int:
    """A time budget as images: whole steps at the measured rate (at least one step, and `at_least`)."""
    steps = int(minutes * 60 * images_per_s) // batch
    return max(batch, at_least, steps * batch)


def measure_rate(task: TrainTask, settings: LoopSettings, state: TrainState, minutes: float,
                 log: MetricsLog | None = None) -> float:
    """Train a short warm-up (real steps of the run) and return the images per second it reached.

    The first step is not timed (lazy initialisation, compilation). The warm-up lasts
    WARMUP_SECONDS or WARMUP_SHARE of the budget, whichever is less, and at least two steps.
    """
    if settings.lr_schedule != "constant":
        raise ValueError("a budget in minutes needs the constant learning-rate schedule (a cosine ends at a "
                         "number of images): give the number of images instead")
    budget = min(WARMUP_SECONDS, WARMUP_SHARE * minutes * 60)
    task.model.train()
    t0, images0 = 0.0, 0
    for step in range(1 << 20):
        if step == 1:  # the first step is not timed (lazy initialisation, compilation)
            t0, images0 = time.perf_counter(), state.images_seen
        task.before_step(state)
        scalars = train_step(task, state, settings)
        if log is not None:
            log.log(state.images_seen, scalars)
        elapsed = time.perf_counter() - t0
        if step >= 2 and elapsed >= budget:
            break
    rate = (state.images_seen - images0) / max(elapsed, 1e-9)
    shared = D.broadcast_object(task.env, rate)  # rank 0's rate: every rank then agrees on the images
    return float(shared) if isinstance(shared, (int, float)) else rate
