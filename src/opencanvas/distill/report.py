"""Teacher against student, per guidance scale: CLIP score, FD, memorization and wall time per image.

The teacher samples at `TEACHER_STEPS` classifier-free guided steps (two UNet calls each); the
student at every step count it has a phase for (8 / 4 / 2 / 1 where distilled), one call each.
Same prompts and seeds everywhere (common random numbers), the same scorers as `opencanvas eval`.
Writes runs/<student>/distill_report/{report.json, report.md, tradeoff.png}.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from opencanvas.storage import atomic_write_json, atomic_write_text
from opencanvas.workspace import Workspace

TEACHER_STEPS = 25
STUDENT_STEPS = (8, 4, 2, 1)


def student_checkpoints(ws: Workspace, student: str) -> dict[int, Path]:
    """Student step count -> the newest checkpoint of the phase distilled for it."""
    from opencanvas.training.checkpoint import latest_checkpoint

    out: dict[int, Path] = {}
    for phase in sorted((ws.run_dir(student) / "phases").glob("round-*")):
        path = latest_checkpoint(phase)
        if path is not None:
            out[int(phase.name.split("-")[1])] = path
    return out


def _sample_and_score(run: str, pipeline: Any, label: str, steps: int, sampler: str,
                      prompts: Sequence[str], guidance: float, n: int, seed: int, scorers: Any, ref_features: Any,
                      ref_hashes: Any, root: Path) -> dict[str, Any]:
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
    return {"model": label, "steps": steps, "guidance": guidance, "seconds_per_image": seconds, **row}


def compare(ws: Workspace, student: str, prompts: Sequence[str], reference: str,
            guidance_scales: Sequence[float] = (3.0, 5.0), n: int = 16, seed: int = 0, clip: Any = None,
            device: str = "cpu") -> dict[str, Any]:
    """The teacher at 25 CFG steps against each distilled student; returns (and writes) the report."""
    import json

    from opencanvas.sample.evalsets import load_reference
    from opencanvas.sample.evaluate import build_scorers
    from opencanvas.sample.metrics import phash_ints
    from opencanvas.train.pipeline import load_pipeline

    record = json.loads((ws.run_dir(student) / "distill.json").read_text())
    teacher = str(record["teacher"])
    root = ws.run_dir(student) / "distill_report"
    models: list[tuple[str, Any, int, str, int]] = [
        ("teacher", load_pipeline(ws, teacher, device=device), TEACHER_STEPS, "ddim", 2)]
    for steps, path in sorted(student_checkpoints(ws, student).items(), reverse=True):
        if steps in STUDENT_STEPS:
            models.append((f"student-{steps}", load_pipeline(ws, student, device=device, checkpoint=str(path)), steps,
                           "ddim", 1))
    scorers = build_scorers(ws, models[0][1].config, ("clip", "fid", "memorization"), None, clip, device)
    ref = load_reference(ws, reference, 2000)
    assert scorers.features is not None  # FD and memorization were asked for
    ref_features = scorers.features(ref.images)
    ref_hashes = phash_ints(ref.images)
    rows = []
    for label, pipeline, steps, sampler, calls in models:
        for g in guidance_scales:
            row = _sample_and_score(student, pipeline, label, steps, sampler, prompts, g, n, seed, scorers,
                                    ref_features, ref_hashes, root)
            rows.append({**row, "unet_calls": steps * calls})
    report = {"student": student, "teacher": teacher, "n": n, "prompts": len(prompts), "reference": reference,
              "fd_metric": scorers.features.fd_name, "notes": scorers.notes, "rows": rows,
              "distillation": {"images": record["images"], "minutes": record["minutes"]}}
    atomic_write_json(root / "report.json", report)
    atomic_write_text(root / "report.md", markdown(report))
    tradeoff_plot(root / "tradeoff.png", report)
    return report


def markdown(report: dict[str, Any]) -> str:
    fd = report["fd_metric"]
    lines = [f"# `{report['student']}` against its teacher `{report['teacher']}`", "",
             f"{report['n']} images per cell, the same prompts and seeds in every cell; {fd}. Distillation cost: "
             f"{report['distillation']['images']:,} images, {report['distillation']['minutes']:.1f} min.", "",
             f"| model | steps | UNet calls | guidance | CLIP score | {fd} | memorized (cosine) | s / image |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        mem = r.get("memorization", {}).get("share_cosine_above")
        sec = "-" if r["seconds_per_image"] is None else f"{r['seconds_per_image']:.3f}"
        lines.append(f"| {r['model']} | {r['steps']} | {r['unet_calls']} | {r['guidance']:g} | "
                     f"{r.get('clip_score', float('nan')):.2f} | {r.get(fd, float('nan')):.3f} | "
                     f"{'-' if mem is None else f'{mem:.2f}'} | {sec} |")
    return "\n".join(lines + [""] + [f"- {n}" for n in report["notes"]]) + "\n"


def tradeoff_plot(path: Path, report: dict[str, Any]) -> Path:
    """FD and CLIP score against UNet calls per image, one line per guidance scale (teacher: the right end)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fd = report["fd_metric"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for g in sorted({r["guidance"] for r in report["rows"]}):
        rows = sorted((r for r in report["rows"] if r["guidance"] == g), key=lambda r: r["unet_calls"])
        calls = [r["unet_calls"] for r in rows]
        for ax, key in zip(axes, (fd, "clip_score"), strict=True):
            ax.plot(calls, [r.get(key, float("nan")) for r in rows], marker="o", label=f"w={g:g}")
    for ax, key in zip(axes, (fd, "CLIP score"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("UNet calls per image (teacher: 25 CFG steps = 50)")
        ax.set_ylabel(key)
        ax.legend()
    fig.suptitle(f"{report['student']} (1-8 steps) vs teacher {report['teacher']}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
