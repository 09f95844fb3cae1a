"""Issue 14's conditioning comparison, read off a finished (or partly finished) `conditioning` study.

`opencanvas study run benchmarks/conditioning_compare.toml` trains and evaluates the five cells at equal
compute; this script adds what the study report does not have, from the same images (nothing is sampled
again):

- the CLIP-score difference of each cell to the one-caption cell, with a paired bootstrap interval: every
  cell drew image i from prompt i and seed i, so the difference per prompt cancels the prompt's difficulty;
- intervals for FD-CLIP: the generated images resampled with replacement against the fixed reference
  features (the spread of FD over this eval set; FD at n = 48 is biased upward, and more so on a resample
  with repeats, so the interval sits above the point), and for the paired difference to the one-caption cell;
- memorization two ways, each a share of n with its Wilson interval: nearest training image above 0.95 cosine
  in the eval CLIP's features (saturates with a tiny CLIP), and within pHash distance 4 (near copies);
- a plot (CLIP score, FD-CLIP, difference to one caption) for docs/.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/conditioning_compare.py -w WS \
        --plot docs/conditioning-compare.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from opencanvas.components.loading import load_clip_evaluator
from opencanvas.sample.evalsets import load_reference
from opencanvas.sample.evaluate import guidance_dir
from opencanvas.sample.features import ClipFeatures
from opencanvas.sample.metrics import frechet_distance_features
from opencanvas.study.results import share_interval
from opencanvas.workspace import Workspace


def paired_interval(a: np.ndarray, b: np.ndarray, samples: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b and its 95% percentile interval, resampling the pairs (prompt i, seed i)."""
    rng = np.random.default_rng(seed)
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    means = diff[rng.integers(0, len(diff), (samples, len(diff)))].mean(axis=1)
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fd_intervals(gen: np.ndarray, base: np.ndarray, ref: np.ndarray, samples: int, seed: int = 0
                 ) -> tuple[tuple[float, float], tuple[float, float, float]]:
    """The percentile interval of FD over resampled images, and of FD - the baseline cell's FD with the same
    resampled indices (image i of every cell came from prompt i and seed i, so the upward bias of a resample
    with repeats hits both sides alike and mostly cancels in the difference)."""
    rng = np.random.default_rng(seed)
    values, diffs = [], []
    for _ in range(samples):
        idx = rng.integers(0, len(gen), len(gen))
        value = frechet_distance_features(gen[idx], ref)
        values.append(value)
        diffs.append(value - frechet_distance_features(base[idx], ref))
    point = frechet_distance_features(gen, ref) - frechet_distance_features(base, ref)
    return ((float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))),
            (point, float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))))


def cell_rows(ws: Workspace, study: dict[str, Any], records: list[dict[str, Any]], features: ClipFeatures,
              ref: np.ndarray, samples: int) -> list[dict[str, Any]]:
    n = int(study["eval"]["n"])
    base = {row["guidance"]: row for row in records[0]["rows"]}  # the first cell is the one-caption baseline
    base_features = {float(row["guidance"]): _features(ws, records[0], row["guidance"], n, features)
                     for row in records[0]["rows"]}
    out = []
    for rec in records:
        if rec["status"] != "ok":
            out.append({"cell": rec["label"], "status": rec["status"], "reason": rec["reason"]})
            continue
        report = json.loads((ws.run_dir(rec["run"]) / "eval" / rec["eval_id"] / "report.json").read_text())
        detail = {float(r["guidance"]): r for r in report["rows"]}
        for row in rec["rows"]:
            g = float(row["guidance"])
            fd_ci, fd_diff = fd_intervals(_features(ws, rec, g, n, features), base_features[g], ref, samples)
            mem = detail[g].get("memorization") or {}
            scores = np.asarray(row.get("clip_scores") or [np.nan], np.float64)
            diff = paired_interval(scores, base[g]["clip_scores"], samples) if row.get("clip_scores") else None
            out.append({
                "cell": rec["values"]["conditioning"], "guidance": g, "baseline": row["baseline"],
                "clip": row["clip_score"], "clip_ci": _bootstrap_mean(scores, samples),
                "diff": diff, "fd": row["fd"], "fd_ci": fd_ci, "fd_diff": fd_diff,
                "mem_cos": row["memorization"], "mem_cos_ci": share_interval(row["memorization"], n),
                "mem_phash": mem.get("share_phash_within"),
                "mem_phash_ci": share_interval(mem.get("share_phash_within"), n),
                "nn_cosine": mem.get("mean_cosine"), "min_phash": mem.get("min_phash_distance"),
                "seconds": rec["seconds"], "images": rec["train_images"],
                "images_per_s": (rec.get("compute") or {}).get("images_per_s")})
    return out


def _features(ws: Workspace, record: dict[str, Any], guidance: float, n: int, features: ClipFeatures) -> np.ndarray:
    root = guidance_dir(ws.run_dir(record["run"]) / "eval" / record["eval_id"], float(guidance))
    return features([Image.open(root / f"{i:05d}.png").convert("RGB") for i in range(n)])


def _bootstrap_mean(scores: np.ndarray, samples: int, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = scores[rng.integers(0, len(scores), (samples, len(scores)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _ci(values: tuple[float, ...] | None, digits: int = 2) -> str:
    return "–" if values is None else "[" + ", ".join(f"{v:.{digits}f}" for v in values[-2:]) + "]"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| conditioning | guidance | CLIP score [95%] | Δ vs one caption [paired 95%] | FD-CLIP [95%] | "
             "Δ FD vs one caption [paired 95%] | memorization: cosine ≥ 0.95 [95%] | memorization: pHash ≤ 4 [95%] | "
             "mean NN cosine |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "guidance" not in r:
            lines.append(f"| {r['cell']} | – | {r['status']}: {r['reason']} | | | | | | |")
            continue
        g = "uncond." if r["baseline"] else f"{r['guidance']:g}"
        diff = "–" if r["diff"] is None or r["cell"] == "caption" else f"{r['diff'][0]:+.2f} {_ci(r['diff'])}"
        fd_diff = "–" if r["cell"] == "caption" else f"{r['fd_diff'][0]:+.4f} {_ci(r['fd_diff'], 4)}"
        lines.append(f"| {r['cell']} | {g} | {r['clip']:.2f} {_ci(r['clip_ci'])} | {diff} | {r['fd']:.4f} "
                     f"{_ci(r['fd_ci'], 4)} | {fd_diff} | {r['mem_cos']:.2f} {_ci(r['mem_cos_ci'])} | "
                     f"{r['mem_phash']:.2f} {_ci(r['mem_phash_ci'])} | {r['nn_cosine']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "guidance" in r]
    cells = list(dict.fromkeys(r["cell"] for r in rows))
    scales = sorted({r["guidance"] for r in rows})
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    width = 0.8 / len(cells)
    panels = (("clip", "clip_ci", "CLIP score (eval CLIP)"), ("fd", "fd_ci", "FD-CLIP (lower is better)"),
              ("diff", "diff", "CLIP score − one caption (paired)"),
              ("fd_diff", "fd_diff", "FD-CLIP − one caption (paired)"))
    for ax, (key, ci, label) in zip(axes, panels, strict=True):
        for ci_index, cell in enumerate(cells):
            xs, ys, lo, hi = [], [], [], []
            for gi, g in enumerate(scales):
                r = next((x for x in rows if x["cell"] == cell and x["guidance"] == g), None)
                if r is None or r[key] is None or key in ("diff", "fd_diff") and cell == cells[0]:
                    continue  # the baseline's difference to itself is zero
                value = r[key][0] if key in ("diff", "fd_diff") else r[key]
                xs.append(gi + ci_index * width)
                ys.append(value)
                lo.append(value - r[ci][-2])
                hi.append(r[ci][-1] - value)
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, color=f"C{ci_index}", label=cell)
        ax.set_xticks([gi + width * (len(cells) - 1) / 2 for gi in range(len(scales))],
                      ["uncond." if g == 0 else f"g = {g:g}" for g in scales])
        ax.set_title(label, fontsize=9)
        if key == "clip":
            low = min(r["clip_ci"][0] for r in rows)
            ax.set_ylim(low - 2, None)
        if key in ("diff", "fd_diff"):
            ax.axhline(0, color="black", linewidth=0.8)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-w", "--workspace", type=Path, required=True)
    parser.add_argument("--study", default="conditioning")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = parser.parse_args()
    ws = Workspace.open(args.workspace)
    root = ws.root / "studies" / args.study
    study = json.loads((root / "study.json").read_text())
    records = [json.loads(p.read_text()) for p in sorted((root / "cells").glob("*.json"))]
    if not records:
        raise SystemExit(f"error: no finished cell under {root}/cells: run `opencanvas study run` first")
    evaluator = load_clip_evaluator(ws, study["eval"]["clip"] or study["study"]["text_encoder"])
    features = ClipFeatures(evaluator)
    subset = study["eval"]["reference"] or study["study"]["subset"]
    reference = load_reference(ws, subset, study["eval"]["max_reference"])
    ref = features(reference.images)
    rows = cell_rows(ws, study, records, features, ref, args.bootstrap)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot, f"study {args.study}: {records[0]['train_images']} training images per cell, "
             f"n = {study['eval']['n']} per guidance, 95% intervals")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
