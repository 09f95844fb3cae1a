"""Guided distillation on a small teacher: distillation cost, then teacher vs student side by side.

Builds a workspace with synthetic latents (random records; no fetched images needed), tiny random
autoencoder / text encoder / CLIP, trains a tiny-preset teacher with caption dropout, distils it
(`opencanvas distill`: stage 1 + halving rounds 32 -> target), and runs the comparison of
`opencanvas.distill.report` (teacher at 25 CFG steps = 50 UNet calls vs the student at 8/4/2/1
steps). The UNet is small and the data random, so CLIP score and FD here check the plumbing, not
quality; the wall time per image (UNet calls dominate) is the figure that carries over.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/distill.py --out /tmp/distill_bench
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from tests.factories import draw_shape  # the test shapes, as a reference folder

from opencanvas.distill.report import compare, markdown
from opencanvas.distill.settings import DistillSettings
from opencanvas.distill.stage import distill
from opencanvas.encode.synthetic import write_random_latents
from opencanvas.sample.tiny import tiny_text_model, tiny_tokenizer, tiny_vae, write_tiny_clip
from opencanvas.train import loop
from opencanvas.workspace import Workspace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/distill_bench"))
    ap.add_argument("--teacher-images", type=int, default=512)
    ap.add_argument("--images-per-round", type=int, default=128)
    ap.add_argument("--target-steps", type=int, default=1)
    ap.add_argument("--n", type=int, default=16, help="images per comparison cell")
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    ws = Workspace.open(args.out)
    write_random_latents(ws, "lat", 64, resolution=32, downscale=2, text_len=8, text_dim=32, shard_size=32)
    tiny_vae(1).save_pretrained(ws.autoencoder_dir("synthetic"))
    tiny_text_model(2).save_pretrained(ws.clip_dir("synthetic"))
    tiny_tokenizer().save_pretrained(ws.clip_dir("synthetic"))
    t0 = time.perf_counter()
    loop.train(ws, "lat", "tiny", "teacher", images=args.teacher_images, batch=16)
    teacher_s = time.perf_counter() - t0
    settings = DistillSettings(teacher="teacher", student="student", base_steps=32, target_steps=args.target_steps,
                               images_per_round=args.images_per_round, batch=16)
    t0 = time.perf_counter()
    summary = distill(ws, settings, device="cpu")
    distill_s = time.perf_counter() - t0
    reference = ws.root / "reference"
    reference.mkdir()
    rng = np.random.default_rng(0)
    for i, (color, shape) in enumerate((c, s) for c in ("red", "blue", "green", "yellow")
                                       for s in ("circle", "square", "triangle")):
        draw_shape(color, shape, 32, rng).save(reference / f"{i:03d}.png")
    prompts = [f"a {c} {s}" for c in ("red", "blue", "green", "yellow") for s in ("circle", "square", "triangle")]
    report = compare(ws, "student", prompts, str(reference), (3.0, 5.0), n=args.n,
                     clip=str(write_tiny_clip(ws.root / "clip")))
    out = {"teacher_train_seconds": teacher_s, "distill_seconds": distill_s, "distill": summary, "report": report}
    (args.out / "bench.json").write_text(json.dumps(out, indent=2, default=str))
    print(markdown(report))
    print(json.dumps({"teacher_train_seconds": round(teacher_s, 1), "distill_seconds": round(distill_s, 1),
                      "phases": summary["phases"]}, indent=1))


if __name__ == "__main__":
    main()
