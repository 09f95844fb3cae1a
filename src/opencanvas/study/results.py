"""results.parquet: one row per (cell, guidance scale), traced to its run and eval records.

Only what the cells' records fix goes in (no wall time, no dates), so a study killed and resumed
writes the same file, byte for byte on CPU, as one that ran straight through.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from opencanvas.storage import atomic_write_parquet

RESULTS_SCHEMA = pa.schema([
    ("study", pa.string()), ("cell", pa.int32()), ("label", pa.string()), ("status", pa.string()),
    ("reason", pa.string()), ("fraction", pa.float64()), ("captioner", pa.string()), ("preset", pa.string()),
    ("seed", pa.int64()), ("train_images", pa.int64()), ("train_keys", pa.int64()), ("guidance", pa.float64()),
    ("clip_score", pa.float64()), ("clip_score_lo", pa.float64()), ("clip_score_hi", pa.float64()),
    ("clip_score_unconditional", pa.float64()), ("fd", pa.float64()), ("fd_metric", pa.string()),
    ("kid", pa.float64()), ("kid_metric", pa.string()), ("memorization", pa.float64()),
    ("memorization_lo", pa.float64()), ("memorization_hi", pa.float64()), ("conditioning", pa.string()),
    ("run", pa.string()), ("eval_id", pa.string()), ("latents", pa.string()),
])


def bootstrap_mean(replicates: Sequence[Sequence[float]], prompts: int, samples: int, seed: int = 0,
                   level: float = 0.95) -> tuple[float, float] | None:
    """A percentile interval of the mean score, resampling seeds (replicates) and then eval prompts.

    replicates: per seed, the per-image scores (image i was made from prompt i % prompts), so the
    unit resampled is a prompt with all its images, and across seeds a whole replicate.
    """
    if samples <= 0 or not replicates or not len(replicates[0]):
        return None
    rng = np.random.default_rng(seed)
    scores = np.asarray(replicates, np.float64)  # (R, N): R seeds, N images
    prompt_of = np.arange(scores.shape[1]) % max(1, prompts)
    units = np.unique(prompt_of)
    per_prompt = np.stack([scores[:, prompt_of == u].mean(axis=1) for u in units], axis=1)  # (R, U)
    r, u = per_prompt.shape
    picked = rng.integers(0, r, (samples, r))  # (B, R) seeds drawn with replacement
    chosen = rng.integers(0, u, (samples, r, u))  # (B, R, U) prompts drawn with replacement
    means = per_prompt[picked[..., None], chosen].mean(axis=(1, 2))  # (B,)
    tail = (1.0 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def share_interval(share: float | None, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson's 95% interval of a share of n images (memorization): exact enough at n = 32, never outside [0, 1]."""
    if share is None or n <= 0:
        return None
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * float(np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)))
    return max(0.0, centre - half), min(1.0, centre + half)


def result_rows(study: str, records: Sequence[dict[str, Any]], guidance: Sequence[float], prompts: int,
                bootstrap: int, n: int = 0) -> list[dict[str, Any]]:
    """One row per (cell, guidance scale); n: images per guidance scale (for the memorization interval)."""
    rows = []
    for r in records:
        base = {"study": study, "cell": r["cell"], "label": r["label"], "status": r["status"],
                "reason": r.get("reason", ""), "fraction": r["fraction"], "captioner": r["captioner"],
                "preset": r["preset"], "seed": r["seed"], "train_images": r.get("train_images"),
                "train_keys": r.get("train_keys"), "run": r["run"], "eval_id": r.get("eval_id"),
                "latents": r["latents"], "conditioning": r.get("values", {}).get("conditioning"),
                "fd_metric": r.get("fd_metric"), "kid_metric": r.get("kid_metric")}
        evals = {row["guidance"]: row for row in r.get("rows", [])}
        unconditional = next((row.get("clip_score") for row in r.get("rows", []) if row["baseline"]), None)
        for g in guidance:
            row = evals.get(float(g), {})
            interval = bootstrap_mean([row["clip_scores"]], prompts, bootstrap) if row.get("clip_scores") else None
            mem_interval = share_interval(row.get("memorization"), n)
            rows.append({**base, "guidance": float(g), "clip_score": row.get("clip_score"),
                         "clip_score_lo": interval[0] if interval else None,
                         "clip_score_hi": interval[1] if interval else None,
                         "clip_score_unconditional": unconditional, "fd": row.get("fd"), "kid": row.get("kid"),
                         "memorization": row.get("memorization"),
                         "memorization_lo": mem_interval[0] if mem_interval else None,
                         "memorization_hi": mem_interval[1] if mem_interval else None})
    return rows


def write_results(path: Path, rows: list[dict[str, Any]]) -> Path:
    atomic_write_parquet(path, pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA))
    return path
