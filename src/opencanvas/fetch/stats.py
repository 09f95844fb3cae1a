"""`opencanvas fetch stats`: what a fetch produced, by status and reason, with a resolution histogram."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from opencanvas.shards import index_paths, read_index, tar_mismatch
from opencanvas.storage import atomic_write_json
from opencanvas.workspace import Workspace


def reason_kind(reason: str) -> str:
    """'too-small: 120x80 < 256' -> 'too-small' (reasons are 'kind: detail')."""
    return reason.split(":", 1)[0].strip() if reason else ""


def final_counts(images_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(status -> rows, "status: reason kind" -> rows) over every finished shard, by DuckDB (no rows in Python)."""
    import duckdb

    paths = [str(p) for p in index_paths(images_dir)]
    if not paths:
        return {}, {}
    con = duckdb.connect(config={"threads": 2, "memory_limit": "512MB"})
    try:
        grouped = con.execute("""
            SELECT status, trim(split_part(coalesce(reason, ''), ':', 1)) AS kind, count(*)
            FROM read_parquet($paths) GROUP BY ALL""", {"paths": paths}).fetchall()
    finally:
        con.close()
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for status, kind, n in grouped:
        counts[status] += n
        if kind:
            reasons[f"{status}: {kind}"] += n
    return dict(sorted(counts.items())), dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


def fetch_stats(ws: Workspace, subset: str, plot: bool = True, verify: str = "sha256") -> dict[str, Any]:
    """Counts by status and reason kind, bytes, resolutions; writes stats.json (+ a histogram PNG)."""
    images_dir = ws.images_dir(subset)
    shards = index_paths(images_dir)
    if not shards:
        raise FileNotFoundError(f"no finished shards under {images_dir}: run `opencanvas fetch --subset {subset}`")
    rows = read_index(images_dir).to_pylist()
    ok = [r for r in rows if r["status"] == "ok"]
    by_reason: dict[str, Counter[str]] = {}
    for r in rows:
        if r["status"] != "ok":
            by_reason.setdefault(r["status"], Counter())[reason_kind(r["reason"])] += 1
    examples: dict[str, str] = {}
    for r in rows:
        if r["reason"]:
            examples.setdefault(reason_kind(r["reason"]), r["reason"])
    report: dict[str, Any] = {
        "subset": subset,
        "shards": len(shards),
        "rows": len(rows),
        "counts": dict(Counter(r["status"] for r in rows)),
        "reasons": {status: dict(c.most_common()) for status, c in by_reason.items()},
        "reason_examples": examples,
        "bytes": sum(r["bytes"] or 0 for r in rows),
        "resized": sum(1 for r in ok if (r["width"], r["height"]) != (r["original_width"], r["original_height"])),
        "resolution": _summary(ok),
    }
    damaged = {p.with_suffix(".tar").name: why for p in shards if (why := tar_mismatch(p, verify == "sha256"))}
    if damaged:  # `fetch` fetches these again; until then later stages cannot read them
        report["damaged_shards"] = damaged
    out_dir = images_dir / "stats"
    if plot and ok:
        report["histogram"] = ws.relative(_plot(ok, out_dir / "resolution.png"))
    atomic_write_json(out_dir / "stats.json", report)
    return report


def _summary(ok: list[dict[str, Any]]) -> dict[str, Any]:
    if not ok:
        return {}
    summary = {}
    for name in ("width", "height", "original_width", "original_height"):
        v = np.array([r[name] for r in ok], dtype=np.int64)
        summary[name] = {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max())}
    return summary


def _plot(ok: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original = np.array([max(r["original_width"], r["original_height"]) for r in ok])
    stored = np.array([max(r["width"], r["height"]) for r in ok])
    bins = np.geomspace(max(1, min(original.min(), stored.min())), max(original.max(), stored.max()) + 1, 30)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(original, bins=bins, alpha=0.6, label="original")
    ax.hist(stored, bins=bins, alpha=0.6, label="stored")
    ax.set_xscale("log")
    ax.set_xlabel("long side (px)")
    ax.set_ylabel("images")
    ax.set_title(f"{len(ok)} fetched images")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
