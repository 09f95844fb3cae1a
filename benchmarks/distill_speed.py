"""Teacher (25 classifier-free guided DDIM steps) against its distilled student: seconds per image, side by side.

On a shared machine one timing per model is at the mercy of the neighbours' load, so the models take turns
(teacher, student, teacher, ...) for `--repeats` rounds and the medians are compared. Each timing is one batch:
the denoising loop alone (text encoding + sampling) and end to end (+ VAE decode to PIL images).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/distill_speed.py -w /tmp/distill-ws \\
        --student clipart-distilled --batch 8 --batch 32
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from opencanvas.distill.report import TEACHER_STEPS
from opencanvas.sample.evaluate import resolve_prompts
from opencanvas.sample.generate import SampleSettings, default_size, default_spacing, sample_latents
from opencanvas.train.pipeline import load_pipeline
from opencanvas.workspace import Workspace


def one_batch(pipeline: object, prompts: list[str], settings: SampleSettings) -> tuple[float, float]:
    """(denoising seconds, end-to-end seconds) of one batch."""
    t0 = time.perf_counter()
    latents = sample_latents(pipeline, prompts, list(range(len(prompts))), settings)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    pipeline.decode(latents)  # type: ignore[attr-defined]
    return t1 - t0, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--workspace", type=Path, required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--batch", type=int, action="append", help="batch sizes (default 8)")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    ws = Workspace.open(args.workspace)
    record = json.loads((ws.run_dir(args.student) / "distill.json").read_text())
    student = load_pipeline(ws, args.student)
    teacher = load_pipeline(ws, str(record["teacher"]))
    steps = int(student.config["distilled"]["steps"])
    prompts, _ = resolve_prompts(ws, "heldout", teacher.config)
    width, height = default_size(teacher)
    models = {"teacher": (teacher, TEACHER_STEPS), f"student-{steps}": (student, steps)}
    out: dict[str, dict[str, float]] = {}
    for batch in args.batch or [8]:
        texts = [prompts[i % len(prompts)] for i in range(batch)]
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
        for r in range(args.repeats + 1):  # round 0 warms up
            for name, (pipeline, n_steps) in models.items():
                settings = SampleSettings(steps=n_steps, guidance=args.guidance, sampler="ddim",
                                          spacing=default_spacing(pipeline), width=width, height=height)
                t = one_batch(pipeline, texts, settings)
                if r:
                    times[name].append(t)
        med = {name: (statistics.median(d for d, _ in ts) / batch, statistics.median(e for _, e in ts) / batch)
               for name, ts in times.items()}
        t_d, t_e = med["teacher"]
        s_d, s_e = med[f"student-{steps}"]
        out[f"batch {batch}"] = {"teacher_denoise_s": t_d, "teacher_end_to_end_s": t_e, "student_denoise_s": s_d,
                                 "student_end_to_end_s": s_e, "denoise_speedup": t_d / s_d,
                                 "end_to_end_speedup": t_e / s_e}
        print(f"batch {batch}: teacher {t_d:.4f} / {t_e:.4f} s per image, student-{steps} {s_d:.4f} / {s_e:.4f} "
              f"(denoising / end to end): {t_d / s_d:.1f}x / {t_e / s_e:.1f}x (median of {args.repeats})")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
