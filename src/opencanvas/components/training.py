"""The training loop both components share: budget, warmup, checkpoints, resume.

A run lives in `<component dir>/checkpoint/`: `model-<step>.safetensors` (the
resolved config in its metadata), `optimizer-<step>.pt`, `extra-<step>.pt` (the
state dicts of any further modules/optimizers, e.g. a discriminator) and
`state.json`, written in that order, each atomically; `state.json` names the step whose files
are complete, so a run killed at any moment resumes from the last complete
step with the same command. Batches and noise are drawn from generators seeded
by (seed, step), so a resumed run sees the batches the interrupted one would have.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from opencanvas.progress import progress_bar
from opencanvas.storage import atomic_write_bytes, atomic_write_json

CHECKPOINT_DIR = "checkpoint"


@dataclass
class TrainState:
    step: int = 0
    images_seen: int = 0
    seconds: float = 0.0                               # training wall time over all sessions
    losses: list[float] = field(default_factory=list)  # one per step


def budget_met(steps_done: int, seconds_done: float, steps: int | None, minutes: float | None) -> bool:
    """Training stops at whichever budget is reached first."""
    return (steps is not None and steps_done >= steps) or (minutes is not None and seconds_done >= minutes * 60)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of one step: batches and noise depend on (seed, step) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def save_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: TrainState, config: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save

    ckpt = out_dir / CHECKPOINT_DIR
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write_bytes(ckpt / f"model-{state.step:08d}.safetensors",
                       save(tensors, metadata={"config": json.dumps(config, sort_keys=True)}))
    buf = io.BytesIO()
    torch.save(optimizer.state_dict(), buf)
    atomic_write_bytes(ckpt / f"optimizer-{state.step:08d}.pt", buf.getvalue())
    if extra:
        buf = io.BytesIO()
        torch.save({name: obj.state_dict() for name, obj in extra.items()}, buf)
        atomic_write_bytes(ckpt / f"extra-{state.step:08d}.pt", buf.getvalue())
    atomic_write_json(ckpt / "state.json", {"config": config, **asdict(state)})  # the commit point
    for old in ckpt.glob("*-*.*"):  # earlier steps' files
        if old.stem.rsplit("-", 1)[-1] != f"{state.step:08d}":
            old.unlink(missing_ok=True)


def load_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    config: dict[str, Any], extra: dict[str, Any] | None = None) -> TrainState:
    """Restore the last complete step (a fresh state when there is none)."""
    from safetensors.torch import load_file

    ckpt = out_dir / CHECKPOINT_DIR
    if not (ckpt / "state.json").exists():
        return TrainState()
    saved = json.loads((ckpt / "state.json").read_text())
    if saved["config"] != json.loads(json.dumps(config, sort_keys=True, default=str)):
        changed = sorted(k for k in set(saved["config"]) | set(config)
                         if saved["config"].get(k) != config.get(k))
        raise ValueError(
            f"{out_dir} holds an unfinished run with other settings ({', '.join(changed)} differ): "
            f"re-run with the same options to resume, or choose another --name")
    state = TrainState(saved["step"], saved["images_seen"], saved["seconds"], saved["losses"])
    model.load_state_dict(load_file(ckpt / f"model-{state.step:08d}.safetensors"))
    optimizer.load_state_dict(torch.load(ckpt / f"optimizer-{state.step:08d}.pt", weights_only=True))
    if extra:
        saved_extra = torch.load(ckpt / f"extra-{state.step:08d}.pt", weights_only=True)
        for name, obj in extra.items():
            obj.load_state_dict(saved_extra[name])
    return state


def run_training(step_fn: Callable[[int, torch.Generator], float], model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, out_dir: Path, config: dict[str, Any], *,
                 steps: int | None, minutes: float | None, batch_size: int, seed: int,
                 learning_rate: float, warmup_steps: int = 100, checkpoint_seconds: float = 60.0,
                 description: str = "train", extra: dict[str, Any] | None = None) -> TrainState:
    """Call `step_fn(step, generator) -> loss` until `steps` or `minutes` (whichever comes first).
    `extra`: further objects with state_dict/load_state_dict (a discriminator and its optimizer)
    checkpointed with the model."""
    if steps is None and minutes is None:
        raise ValueError("give a training budget: --steps N and/or --minutes M")
    config = json.loads(json.dumps(config, sort_keys=True, default=str))
    state = load_checkpoint(out_dir, model, optimizer, config, extra)

    def done() -> bool:
        return budget_met(state.step, state.seconds, steps, minutes)

    model.train()
    last_save = time.monotonic()
    with progress_bar() as bar:
        task = bar.add_task(description, total=steps or None, completed=state.step, unit="step")
        while not done():
            for group in optimizer.param_groups:  # linear warmup (constant after)
                group["lr"] = learning_rate * min(1.0, (state.step + 1) / warmup_steps)
            started = time.monotonic()
            loss = step_fn(state.step, step_generator(seed, state.step))
            if not torch.isfinite(torch.tensor(loss)):
                raise FloatingPointError(f"loss is {loss} at step {state.step}: lower --learning-rate")
            state.step += 1
            state.images_seen += batch_size
            state.seconds += time.monotonic() - started
            state.losses.append(float(loss))
            bar.update(task, advance=1, description=f"{description} loss {loss:.4f}")
            if time.monotonic() - last_save >= checkpoint_seconds and not done():
                save_checkpoint(out_dir, model, optimizer, state, config, extra)
                last_save = time.monotonic()
    save_checkpoint(out_dir, model, optimizer, state, config, extra)
    model.eval()
    return state


def loss_summary(losses: list[float], points: int = 50) -> dict[str, Any]:
    """First/last losses (mean over 10% of steps) and a short curve for the record."""
    if not losses:
        return {"first": None, "last": None, "curve": []}
    k = max(1, len(losses) // 10)
    stride = max(1, len(losses) // points)
    return {"first": sum(losses[:k]) / k, "last": sum(losses[-k:]) / k,
            "curve": [round(sum(losses[i:i + stride]) / len(losses[i:i + stride]), 5)
                      for i in range(0, len(losses), stride)]}
