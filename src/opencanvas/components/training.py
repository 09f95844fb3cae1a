"""The components' side of the one training loop (opencanvas.training): budget, resume, losses.

A component trains in `<component dir>/checkpoints/` exactly as a UNet run does in
`runs/<name>/checkpoints/`: the same safetensors checkpoints (the settings embedded), the
same seeds per (seed, images seen), the same metrics.jsonl and TensorBoard log. Its
budget is in images; `steps` and `minutes` are conveniences. A budget in minutes is
converted to images once, from a short measured warm-up, and the rate is recorded in
every checkpoint and the record, so re-running the same command trains exactly as far.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from opencanvas.training import distributed as D
from opencanvas.training.checkpoint import TrainState, checkpoint_dir, latest_checkpoint, read_metadata
from opencanvas.training.loop import (
    DEFAULT_CHECKPOINT_MINUTES,
    DEFAULT_KEEP,
    Budget,
    LoopSettings,
    TrainTask,
    measure_rate,
    open_checkpoint,
    restore,
    run,
)
from opencanvas.training.metrics_log import MetricsLog, read_rows
from opencanvas.training.seeds import step_generator

CHECKPOINT_DIR = "checkpoints"
CPU = D.DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


@dataclass
class Trained:
    state: TrainState
    losses: dict[str, Any]  # loss_summary of the logged losses
    config: dict[str, Any]  # what the checkpoints embed: settings, budget in images, measured rate


def step_seed_generator(seed: int, images_seen: int) -> torch.Generator:
    """The CPU generator of the step at `images_seen` (one process: micro-batch 0)."""
    return step_generator("cpu", seed, 0, images_seen)


def stored_config(out_dir: Path) -> dict[str, Any] | None:
    """The settings embedded in the newest intact checkpoint (None: no checkpoint)."""
    with warnings.catch_warnings():  # a damaged file is reported once, when training opens the checkpoints
        warnings.simplefilter("ignore")
        path = latest_checkpoint(out_dir)
    return json.loads(read_metadata(path)["config"]) if path is not None else None


def check_same_training(out_dir: Path, what: str, stored: dict[str, Any] | None, identity: dict[str, Any]) -> None:
    """Refuse to resume or reuse `out_dir` with settings other than those it was trained with."""
    if stored is None or stored == identity:
        return
    changed = sorted(k for k in set(stored) | set(identity) if stored.get(k) != identity.get(k))
    raise ValueError(f"{out_dir} holds {what} trained with other settings ({', '.join(changed)} differ): re-run "
                     f"with the same options to resume, or choose another --name")


def train_component(task: TrainTask, out_dir: Path, identity: dict[str, Any], budget: Budget, *, label: str,
                    batch: int, lr: float, warmup_steps: int, checkpoint_every: int | None = None,
                    checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES, keep: int = DEFAULT_KEEP) -> Trained:
    """Resume `task` from its newest checkpoint (if any) and train it to the budget."""
    identity = normalized(identity)
    ckpt = open_checkpoint(out_dir, task.env)
    stored = ckpt.config if ckpt is not None else None
    if stored is not None:
        check_same_training(out_dir, label, stored.get("training"), identity)
    state = restore(task, ckpt) if ckpt is not None else TrainState()
    rate = stored.get("measured_images_per_s") if stored else None
    settings = LoopSettings(name=label, images=0, batch=batch, lr=lr, warmup_images=warmup_steps * batch,
                            checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes, keep=keep)
    log = MetricsLog(out_dir, state.images_seen)
    try:
        images = budget.to_images(batch, rate)
        if images is None:  # minutes, first session: measure the rate on the run's first steps
            rate = measure_rate(task, settings, state, budget.minutes or 0.0, log)
            images = max(state.images_seen, budget.to_images(batch, rate) or 0)
        config = {"training": identity, "images": images, "minutes": budget.minutes, "measured_images_per_s": rate}
        result = run(task, replace(settings, images=images), state, out_dir, config, log)
    finally:
        log.close()
    return Trained(result.state, loss_summary([r["loss"] for r in read_rows(out_dir) if r.get("loss") is not None]),
                   config)


def normalized(identity: dict[str, Any]) -> dict[str, Any]:
    """The settings as they read back from JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(identity, sort_keys=True, default=str))


def finished_images(record: dict[str, Any], budget: Budget, batch: int) -> bool:
    """Whether a finished record already covers `budget` (minutes convert at the recorded rate)."""
    target = budget.to_images(batch, record.get("measured_images_per_s"))
    return target is not None and record.get("images_seen", 0) >= target


def loss_summary(losses: list[float], points: int = 50) -> dict[str, Any]:
    """First/last losses (mean over 10% of steps) and a short curve for the record."""
    if not losses:
        return {"first": None, "last": None, "curve": []}
    k = max(1, len(losses) // 10)
    stride = max(1, len(losses) // points)
    return {"first": sum(losses[:k]) / k, "last": sum(losses[-k:]) / k,
            "curve": [round(sum(losses[i:i + stride]) / len(losses[i:i + stride]), 5)
                      for i in range(0, len(losses), stride)]}


__all__ = ["CHECKPOINT_DIR", "CPU", "Budget", "Trained", "check_same_training", "checkpoint_dir", "finished_images",
           "loss_summary", "step_seed_generator", "stored_config", "train_component"]
