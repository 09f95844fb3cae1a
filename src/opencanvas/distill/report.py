"""Teacher against student, per guidance scale: CLIP score, FD, memorization and wall time per image.

The teacher samples at `TEACHER_STEPS` classifier-free guided steps (two UNet calls each); the
student at every step count it has a phase for (8 / 4 / 2 / 1 where distilled), one call each.
Same prompts and seeds everywhere (common random numbers), the same scorers as `opencanvas eval`.
Writes runs/<student>/distill_report/{report.json, report.md, tradeoff.png}.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from opencanvas.diffusion.distilled import DistilledStepsWarning
from opencanvas.storage import atomic_write_figure, atomic_write_json, atomic_write_text
from opencanvas.workspace import Workspace

TEACHER_STEPS = 25
STUDENT_STEPS = (8, 4, 2, 1)
BOOTSTRAP = 500  # resamples of the paired FD-ratio interval
GOAL_STEPS, GOAL_FD_RATIO, GOAL_CLIP_POINTS, GOAL_SPEEDUP = 4, 1.10, 2.0, 10.0  # issue 15's bar


def student_checkpoints(ws: Workspace, student: str, base_steps: int | None = None) -> dict[int, Path]:
    """Student step count -> the newest checkpoint of the phase distilled for it; with `base_steps`, stage 1's
    guided student too, at the teacher's N steps (where stage 2 starts from)."""
    from opencanvas.training.checkpoint import latest_checkpoint

    out: dict[int, Path] = {}
    phases = ws.run_dir(student) / "phases"
    for phase in sorted(phases.glob("round-*")):
        path = latest_checkpoint(phase)
        if path is not None:
            out[int(phase.name.split("-")[1])] = path
    guided = latest_checkpoint(phases / "guided") if (phases / "guided").is_dir() else None
    if base_steps is not None and guided is not None:
        out[base_steps] = guided
    return out


def _sample_and_score(run: str, pipeline: Any, label: str, steps: int, sampler: str,
                      prompts: Sequence[str], guidance: float, n: int, seed: int, scorers: Any, ref_features: Any,
                      ref_hashes: Any, root: Path) -> tuple[dict[str, Any], Any, Any]:
    """The cell's row, plus its per-image CLIP scores (n,) and features (n, D) for the paired intervals."""
    from opencanvas.sample.evaluate import EvalOptions, generate_for_guidance, score_guidance
    from opencanvas.sample.generate import default_size

    options = EvalOptions(metrics=("clip", "fid", "memorization"), guidance_scales=(guidance,), n=n, steps=steps,
                          sampler=sampler, seed=seed, size=default_size(pipeline), batch_size=min(8, n))
    out = root / label / f"g{guidance:g}"
    t0 = time.perf_counter()
    fresh = not out.exists() or not any(out.glob("*.png"))
    paths = generate_for_guidance(pipeline, prompts, guidance, out, options,
                                  {"model": run, "weights_hash": pipeline.weights_hash})
    seconds = (time.perf_counter() - t0) / n if fresh else None  # a resumed cell has no honest timing
    images = [Image.open(p).convert("RGB") for p in paths]
    texts = [prompts[i % len(prompts)] for i in range(n)]
    row, _ = score_guidance(images, texts, ref_features, ref_hashes, scorers, options)
    row = {"model": label, "steps": steps, "guidance": guidance, "seconds_per_image": seconds, **row}
    return row, scorers.clip.clip_score(images, texts), scorers.features(images)


def latent_seconds(pipeline: Any, prompts: Sequence[str], steps: int, guidance: float, batch: int = 8,
                   batches: int = 2) -> float:
    """Seconds per image of text encoding + the denoising loop alone (no VAE decode, no PNG): the part that
    distillation shortens. One untimed warm-up batch, then `batches` timed ones."""
    from opencanvas.sample.generate import SampleSettings, default_size, default_spacing, sample_latents

    width, height = default_size(pipeline)
    settings = SampleSettings(steps=steps, guidance=guidance, sampler="ddim", spacing=default_spacing(pipeline),
                              width=width, height=height)
    texts = [prompts[i % len(prompts)] for i in range(batch)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DistilledStepsWarning)  # guided-N samples at N: no warning is due
        sample_latents(pipeline, texts, list(range(batch)), settings)
        t0 = time.perf_counter()
        for k in range(batches):
            sample_latents(pipeline, texts, list(range(k * batch, (k + 1) * batch)), settings)
    return (time.perf_counter() - t0) / (batch * batches)


def paired_against_teacher(teacher: tuple[Any, Any], student: tuple[Any, Any], ref_features: Any,
                           resamples: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Student minus teacher on the same prompts and seeds (image i of both had the same prompt and noise).

    CLIP: the mean per-image difference with a normal 95% interval. FD: the ratio student / teacher with a
    paired bootstrap 95% interval (the same resampled images on both sides; the reference set is fixed).
    Bootstrap duplicates bias FD on both sides alike, so the interval is of the ratio, not of either FD.
    """
    import numpy as np

    from opencanvas.sample.metrics import frechet_distance_features

    (t_clip, t_feats), (s_clip, s_feats) = teacher, student
    diff = np.asarray(s_clip, np.float64) - np.asarray(t_clip, np.float64)
    n = len(diff)
    half = 1.96 * float(diff.std(ddof=1)) / np.sqrt(n)
    ratio = frechet_distance_features(ref_features, s_feats) / frechet_distance_features(ref_features, t_feats)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        boot.append(frechet_distance_features(ref_features, s_feats[idx])
                    / frechet_distance_features(ref_features, t_feats[idx]))
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return {"clip_delta": float(diff.mean()), "clip_delta_ci95": [float(diff.mean() - half), float(diff.mean() + half)],
            "fd_ratio": float(ratio), "fd_ratio_ci95": [float(lo), float(hi)]}


def compare(ws: Workspace, student: str, prompts: Sequence[str], reference: str,
            guidance_scales: Sequence[float] = (3.0, 5.0), n: int = 16, seed: int = 0, clip: Any = None,
            device: str = "cpu", all_phases: bool = False) -> dict[str, Any]:
    """The teacher at 25 CFG steps against each distilled student; returns (and writes) the report.

    `all_phases` adds the phases above 8 steps (stage 1's student at N, the first rounds), to show
    where quality is lost."""
    import json

    from opencanvas.sample.evalsets import load_reference
    from opencanvas.sample.evaluate import EvalOptions, build_scorers, caveats
    from opencanvas.sample.metrics import phash_ints
    from opencanvas.train.pipeline import load_pipeline

    record = json.loads((ws.run_dir(student) / "distill.json").read_text())
    teacher = str(record["teacher"])
    root = ws.run_dir(student) / "distill_report"
    models: list[tuple[str, Any, int, str, int]] = [
        ("teacher", load_pipeline(ws, teacher, device=device), TEACHER_STEPS, "ddim", 2)]
    stored = json.loads((ws.run_dir(student) / "distill_settings.json").read_text())
    phases = student_checkpoints(ws, student, int(stored["base_steps"]) if all_phases else None)
    for steps, path in sorted(phases.items(), reverse=True):
        if steps in STUDENT_STEPS or all_phases:
            label = f"guided-{steps}" if path.parent.parent.name == "guided" else f"student-{steps}"
            models.append((label, load_pipeline(ws, student, device=device, checkpoint=str(path)), steps,
                           "ddim", 1))
    scorers = build_scorers(ws, models[0][1].config, ("clip", "fid", "memorization"), None, clip, device)
    ref = load_reference(ws, reference, 2000)
    assert scorers.features is not None  # FD and memorization were asked for
    ref_features = scorers.features(ref.images)
    ref_hashes = phash_ints(ref.images)
    rows = []
    teacher_cells: dict[float, tuple[dict[str, Any], Any, Any]] = {}  # guidance -> (row, CLIP scores, features)
    for label, pipeline, steps, sampler, calls in models:
        for g in guidance_scales:
            row, scores, feats = _sample_and_score(student, pipeline, label, steps, sampler, prompts, g, n, seed,
                                                   scorers, ref_features, ref_hashes, root)
            row["unet_calls"] = steps * calls
            row["latent_seconds_per_image"] = latent_seconds(pipeline, prompts, steps, g)
            # At a larger batch the UNet's arithmetic, not the per-call overhead, sets the time (serving).
            row["latent_seconds_per_image_b32"] = latent_seconds(pipeline, prompts, steps, g, batch=32, batches=1)
            if label == "teacher":
                teacher_cells[g] = (row, scores, feats)
            else:
                t_row, t_scores, t_feats = teacher_cells[g]
                row.update(paired_against_teacher((t_scores, t_feats), (scores, feats), ref_features))
                t_sec, s_sec = t_row["seconds_per_image"], row["seconds_per_image"]
                row["speedup"] = t_sec / s_sec if t_sec and s_sec else None
                for key in ("", "_b32"):
                    row[f"latent_speedup{key}"] = (t_row[f"latent_seconds_per_image{key}"]
                                                   / row[f"latent_seconds_per_image{key}"])
            rows.append(row)
    report = {"student": student, "teacher": teacher, "n": n, "prompts": len(prompts), "reference": reference,
              "fd_metric": scorers.features.fd_name, "rows": rows,
              "distillation": {"images": record["images"], "minutes": record["minutes"]}}
    options = EvalOptions(metrics=("clip", "fid", "memorization"), n=n)
    report["notes"] = scorers.notes + caveats(options, ref_features, report)
    atomic_write_json(root / "report.json", report)
    atomic_write_text(root / "report.md", markdown(report))
    tradeoff_plot(root / "tradeoff.png", report)
    return report


def _interval(value: float | None, ci: list[float] | None, fmt: str) -> str:
    if value is None:
        return "-"
    return f"{value:{fmt}}" + ("" if ci is None else f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]")


def goal_lines(report: dict[str, Any]) -> list[str]:
    """Issue 15's bar at 4 steps, per guidance scale: met, missed, or not decided by the intervals."""
    lines = []
    for r in report["rows"]:
        if r["model"] != f"student-{GOAL_STEPS}":
            continue
        fd_ok = r["fd_ratio"] <= GOAL_FD_RATIO
        clip_ok = r["clip_delta"] >= -GOAL_CLIP_POINTS
        fast = r.get("speedup") is not None and r["speedup"] >= GOAL_SPEEDUP
        sure = r["fd_ratio_ci95"][1] <= GOAL_FD_RATIO and r["clip_delta_ci95"][0] >= -GOAL_CLIP_POINTS
        verdict = "met" if fd_ok and clip_ok and fast else "missed"
        if r.get("speedup") is None:  # a cell resumed from its images has no end-to-end timing
            verdict = f"quality {'met' if fd_ok and clip_ok else 'missed'}, end-to-end speed not timed"
        elif verdict == "met" and not sure:
            verdict = "met on the point estimates, not within the 95% intervals"
        speed = "-" if r.get("speedup") is None else f"{r['speedup']:.1f}x"
        lines.append(f"Goal at {GOAL_STEPS} steps, w={r['guidance']:g} (FD <= {GOAL_FD_RATIO:.2f}x the teacher's, "
                     f"CLIP within {GOAL_CLIP_POINTS:g} points, >= {GOAL_SPEEDUP:g}x faster end to end): {verdict} "
                     f"(FD {r['fd_ratio']:.2f}x, CLIP {r['clip_delta']:+.2f}, {speed} end to end, "
                     f"{r['latent_speedup']:.1f}x in the denoising loop, {r['latent_speedup_b32']:.1f}x at batch 32).")
    return lines


def markdown(report: dict[str, Any]) -> str:
    fd = report["fd_metric"]
    lines = [f"# `{report['student']}` against its teacher `{report['teacher']}`", "",
             f"{report['n']} images per cell, the same prompts and seeds in every cell; {fd}. Distillation cost: "
             f"{report['distillation']['images']:,} images, {report['distillation']['minutes']:.1f} min. Student "
             "columns against the teacher at the same guidance, paired image by image: CLIP difference with a 95% "
             "interval, FD ratio with a paired-bootstrap 95% interval. s / image: end to end (text encoding, "
             "sampling, VAE decode, PNG) at batch 8; denoising: text encoding and the sampling loop alone, at batch 8 "
             "and 32.", "",
             f"| model | steps | UNet calls | guidance | CLIP score | {fd} | memorized (cosine / pHash) | s / image | "
             f"CLIP - teacher | {fd} / teacher | speed-up | denoising s / image | denoising speed-up | "
             "at batch 32 |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        shares = r.get("memorization", {})
        mem = None if "share_cosine_above" not in shares else \
            f"{shares['share_cosine_above']:.2f} / {shares.get('share_phash_within', float('nan')):.2f}"
        sec = "-" if r["seconds_per_image"] is None else f"{r['seconds_per_image']:.3f}"
        speed = "1x" if r["model"] == "teacher" else "-" if r.get("speedup") is None else f"{r['speedup']:.1f}x"
        lines.append(f"| {r['model']} | {r['steps']} | {r['unet_calls']} | {r['guidance']:g} | "
                     f"{r.get('clip_score', float('nan')):.2f} | {r.get(fd, float('nan')):.3f} | "
                     f"{'-' if mem is None else mem} | {sec} | "
                     f"{_interval(r.get('clip_delta'), r.get('clip_delta_ci95'), '+.2f')} | "
                     f"{_interval(r.get('fd_ratio'), r.get('fd_ratio_ci95'), '.2f')} | {speed} | "
                     f"{r['latent_seconds_per_image']:.4f} | {r.get('latent_speedup', 1.0):.1f}x | "
                     f"{r.get('latent_speedup_b32', 1.0):.1f}x |")
    return "\n".join(lines + [""] + goal_lines(report) + [""] + [f"- {n}" for n in report["notes"]]) + "\n"


def tradeoff_plot(path: Path, report: dict[str, Any]) -> Path:
    """FD and CLIP score against UNet calls per image: a line per guidance scale, the teacher a star at 50."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fd = report["fd_metric"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for g in sorted({r["guidance"] for r in report["rows"]}):
        rows = sorted((r for r in report["rows"] if r["guidance"] == g), key=lambda r: r["unet_calls"])
        students = [r for r in rows if r["model"] != "teacher"]
        teacher = next((r for r in rows if r["model"] == "teacher"), None)
        for ax, key in zip(axes, (fd, "clip_score"), strict=True):
            line, = ax.plot([r["unet_calls"] for r in students], [r.get(key, float("nan")) for r in students],
                            marker="o", label=f"student, w={g:g}")
            if teacher is not None and key in teacher:  # a star, and the goal's bound: FD x 1.1, CLIP - 2 points
                ax.plot([teacher["unet_calls"]], [teacher[key]], marker="*", markersize=12, linestyle="none",
                        color=line.get_color(), label=f"teacher, w={g:g}")
                bound = teacher[key] * GOAL_FD_RATIO if key == fd else teacher[key] - GOAL_CLIP_POINTS
                ax.axhline(bound, color=line.get_color(), linestyle=":", linewidth=1)
    ticks = sorted({r["unet_calls"] for r in report["rows"]})
    for ax, key in zip(axes, (fd, "CLIP score"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlabel("UNet calls per image (teacher: 25 CFG steps = 50)")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    fig.suptitle(f"{report['student']} vs teacher {report['teacher']} (n={report['n']} per point; dotted: "
                 "the goal's bound)", fontsize=10)
    fig.tight_layout()
    return atomic_write_figure(fig, path)
