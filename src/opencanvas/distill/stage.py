"""`opencanvas distill`: a teacher run -> a guidance-conditioned, few-step student run.

Phases, each a run of the shared training loop in runs/<student>/phases/<phase>/ (counted in
images, checkpointed atomically, EMA, resumable bit for bit):

1. `guided`: the teacher's architecture plus a guidance embedding (diffusers' time_cond_proj_dim),
   initialised from the teacher's EMA weights, learns the teacher's CFG output for w ~ U(range);
2. `round-K` for K = N/2, N/4, ..., target: progressive distillation, each round initialised from
   the previous phase's EMA weights, which are also its teacher.

The last phase's final checkpoint is copied into runs/<student>/checkpoints/, so the student is a
run like any other (`sample`, `eval`, `card`, `export`); its config carries `distilled`.
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.diffusion.distilled import GUIDANCE_EMBED_DIM, GuidedStudent, teacher_sigmas
from opencanvas.diffusion.guidance import CFGDenoiser
from opencanvas.distill.settings import DistillSettings, check_teacher
from opencanvas.distill.task import DistillTask
from opencanvas.storage import atomic_write_json
from opencanvas.training import distributed as D
from opencanvas.training.checkpoint import latest_checkpoint, load_checkpoint
from opencanvas.training.loop import LoopSettings, open_checkpoint, restore, run
from opencanvas.training.metrics_log import MetricsLog
from opencanvas.workspace import Workspace


def phases(settings: DistillSettings) -> list[tuple[str, int | None]]:
    """(phase name, student steps; None for stage 1) in order."""
    return [("guided", None)] + [(f"round-{k}", k) for k in settings.rounds]


def teacher_checkpoint(ws: Workspace, teacher: str) -> Path:
    run_dir = ws.run_dir(teacher)
    path = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    if path is None:
        raise FileNotFoundError(f"teacher run {teacher!r} has no checkpoint under {run_dir}: train it first "
                                "(opencanvas train --run ...)")
    return path


def student_config(teacher_config: dict[str, Any], settings: DistillSettings, steps: int, phase: str
                   ) -> dict[str, Any]:
    """The teacher's run config with the guidance embedding and the distillation record."""
    config = copy.deepcopy(teacher_config)
    config["unet"] = {**config["unet"], "time_cond_proj_dim": GUIDANCE_EMBED_DIM}
    config["run"] = settings.student
    config["distilled"] = {
        "teacher": settings.teacher, "phase": phase, "base_steps": settings.base_steps, "steps": steps,
        "rounds": settings.rounds, "images_per_round": settings.images_per_round,
        "guidance_range": list(settings.guidance_range), "settings": settings.to_dict(),
    }
    return config


def _student(config: dict[str, Any], weights: dict[str, torch.Tensor], device: torch.device) -> Denoiser:
    """A student UNet from `weights`; a teacher's weights leave the guidance projection at zero, so the
    student starts out computing exactly the teacher's function."""
    from opencanvas.train.presets import build_unet

    unet = build_unet(config["unet"], int(config.get("seed", 0)))
    missing, unexpected = unet.load_state_dict(weights, strict=False)
    if unexpected or any("cond_proj" not in name for name in missing):
        raise ValueError(f"the weights do not fit the student UNet (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}): the teacher's checkpoint does not match its config")
    for name in missing:
        torch.nn.init.zeros_(unet.get_parameter(name))
    schedule = NoiseSchedule(zero_terminal_snr=bool(config.get("zero_terminal_snr", False)))
    return Denoiser(unet.to(device), schedule, config.get("prediction_type", "epsilon")).to(device)


def _frozen(denoiser: Denoiser) -> Denoiser:
    denoiser.unet.eval().requires_grad_(False)
    return denoiser


def _phase_done(phase_dir: Path, images: int) -> Path | None:
    path = latest_checkpoint(phase_dir) if phase_dir.is_dir() else None
    if path is not None and load_checkpoint(path, parts=()).state.images_seen >= images:
        return path
    return None


def distill(ws: Workspace, settings: DistillSettings, device: str = "auto") -> dict[str, Any]:
    """Run (or resume) every phase; returns the summary (also runs/<student>/distill.json)."""
    settings.validate()
    if settings.student == settings.teacher:
        raise ValueError("--name must differ from --run: the student is a new run")
    teacher_path = teacher_checkpoint(ws, settings.teacher)
    teacher_ckpt = load_checkpoint(teacher_path, parts=("ema",))
    check_teacher(teacher_ckpt.config, settings.teacher)
    run_dir = ws.run_dir(settings.student)
    stored = run_dir / "distill_settings.json"
    if stored.exists():
        import json

        old = {"micro_batch": None, **json.loads(stored.read_text())}  # a student distilled before micro_batch
        if old != settings.to_dict():
            changed = ", ".join(k for k in old if old[k] != settings.to_dict().get(k))
            raise ValueError(f"student {settings.student!r} exists with other settings ({changed}): re-run with the "
                             "stored settings to resume, or pick a new --name")
    env = D.init_distributed(device)
    try:
        settings.check_world(env.world)
        if env.is_main:
            atomic_write_json(stored, settings.to_dict())
        return _distill(ws, settings, teacher_ckpt.config, teacher_ckpt.ema, run_dir, env)
    finally:
        D.shutdown(env)


def _distill(ws: Workspace, settings: DistillSettings, teacher_config: dict[str, Any],
             teacher_weights: dict[str, torch.Tensor], run_dir: Path, env: D.DistEnv) -> dict[str, Any]:
    device = env.device
    resolution = int(teacher_config["resolutions"][-1][0])
    grid_source = _frozen(_student(student_config(teacher_config, settings, settings.base_steps, "teacher"),
                                   teacher_weights, device))
    previous: dict[str, torch.Tensor] = teacher_weights
    rows: list[dict[str, Any]] = []
    final: Path | None = None
    for phase, steps in phases(settings):
        config = student_config(teacher_config, settings, steps or settings.base_steps, phase)
        phase_dir = run_dir / "phases" / phase
        done = _phase_done(phase_dir, settings.images_per_round)
        if done is None:
            done, seconds = _train_phase(ws, settings, config, phase, steps, previous, teacher_config,
                                         teacher_weights, grid_source, resolution, phase_dir, env)
        else:
            seconds = 0.0
        ckpt = load_checkpoint(done, parts=("ema",))
        previous, final = ckpt.ema, done
        rows.append({"phase": phase, "steps": steps, "images": ckpt.state.images_seen,
                     "minutes": ckpt.state.wall_seconds / 60, "session_seconds": seconds})
    assert final is not None
    if env.is_main:
        target = run_dir / "checkpoints" / final.name
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(final, tmp)
        os.replace(tmp, target)  # atomic: a kill leaves the old state or the whole checkpoint
        atomic_write_json(run_dir / "config.json", load_checkpoint(final, parts=()).config)
    summary = {"student": settings.student, "teacher": settings.teacher, "phases": rows,
               "images": sum(r["images"] for r in rows), "minutes": sum(r["minutes"] for r in rows),
               "checkpoint": ws.relative(run_dir / "checkpoints" / final.name)}
    if env.is_main:
        atomic_write_json(run_dir / "distill.json", summary)
    D.barrier(env)
    return summary


def _train_phase(ws: Workspace, settings: DistillSettings, config: dict[str, Any], phase: str, steps: int | None,
                 init: dict[str, torch.Tensor], teacher_config: dict[str, Any],
                 teacher_weights: dict[str, torch.Tensor], grid_source: Denoiser, resolution: int, phase_dir: Path,
                 env: D.DistEnv) -> tuple[Path, float]:
    from opencanvas.train.data import LatentStream, stream_conditioning
    from opencanvas.train.pipeline import load_denoiser

    t0 = time.perf_counter()
    ckpt = open_checkpoint(phase_dir, env)
    student = _student(config, init, env.device)
    if steps is None:  # stage 1: the original teacher under classifier-free guidance (w set per sample)
        teacher: torch.nn.Module = CFGDenoiser(_frozen(load_denoiser(teacher_config, teacher_weights, env.device)),
                                               1.0)
        grid = None
    else:  # a round: the previous phase's student, two of its steps on the 2K-step grid
        teacher = GuidedStudent(_frozen(_student(config, init, env.device)))
        grid = teacher_sigmas(grid_source, settings.base_steps)[::settings.base_steps // (2 * steps)].to(env.device)
    micro = settings.micro(env.world)
    position = dict(ckpt.state.data) if ckpt is not None else None
    # A teacher on two text encoders or text+image: the stream builds the same conditioning it trained on.
    stream = LatentStream.open(ws, str(teacher_config["latents"]), resolution, micro, settings.seed, env.rank,
                               env.world, env.device, position=position,
                               **stream_conditioning(ws, teacher_config))
    task = DistillTask(env=env, student=student, teacher=teacher, stream=stream, settings=settings,
                       phase_steps=steps, grid=grid, use_text_mask=bool(teacher_config.get("use_text_mask", False)))
    if ckpt is not None:
        task.state = restore(task, ckpt)
    loop = LoopSettings(name=f"distill {settings.student} {phase}", images=settings.images_per_round,
                        batch=settings.batch, lr=settings.lr, checkpoint_every=settings.checkpoint_every,
                        keep=settings.keep)
    log = MetricsLog(phase_dir, task.state.images_seen) if env.is_main else None
    try:
        result = run(task, loop, task.state, phase_dir, config, log)
    finally:
        if log is not None:
            log.close()
    assert result.checkpoint is not None
    return result.checkpoint, time.perf_counter() - t0
