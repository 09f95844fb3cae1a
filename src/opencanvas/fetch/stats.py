"""`opencanvas fetch stats`: what a fetch produced, by status and reason, with a resolution histogram."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from opencanvas.fetch.plan import duckdb_connection
from opencanvas.shards import index_paths, tar_mismatch
from opencanvas.storage import atomic_write_figure, atomic_write_json
from opencanvas.workspace import Workspace


def _one(con: Any, sql: str) -> tuple[Any, ...]:
    """The single row of an aggregate query (DuckDB returns None only for an empty result)."""
    row = con.execute(sql).fetchone()
    assert row is not None, sql
    return tuple(row)

def reason_kind(reason: str) -> str:
    """'too-small: 120x80 < 256' -> 'too-small' (reasons are 'kind: detail')."""
    return reason.split(":", 1)[0].strip() if reason else ""


def _kind_sql(column: str = "reason") -> str:
    """SQL for `reason_kind`: the text before the first ':'."""
    return f"trim(split_part(coalesce({column}, ''), ':', 1))"


def final_counts(images_dir: Path) -> tuple[dict[str, int], dict[str, int]]:
    """(status -> rows, "status: reason kind" -> rows) over every finished shard, by DuckDB (no rows in Python)."""
    paths = index_paths(images_dir)
    if not paths:
        return {}, {}
    with duckdb_connection(Path(images_dir) / ".counts.duckdb.tmp") as con:
        grouped = con.execute(f"SELECT status, {_kind_sql()} AS kind, count(*) FROM read_parquet($paths) GROUP BY ALL",
                              {"paths": [str(p) for p in paths]}).fetchall()
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for status, kind, n in grouped:
        counts[status] += n
        if kind:
            reasons[f"{status}: {kind}"] += n
    return dict(sorted(counts.items())), dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


def fetch_stats(ws: Workspace, subset: str, plot: bool = True, verify: str = "sha256") -> dict[str, Any]:
    """Counts by status and reason kind, bytes, resolutions; writes stats.json (+ a histogram PNG).

    Aggregated by DuckDB over the shard indexes, so memory does not grow with the subset.
    """
    images_dir = ws.images_dir(subset)
    shards = index_paths(images_dir)
    if not shards:
        raise FileNotFoundError(f"no finished shards under {images_dir}: run `opencanvas fetch --subset {subset}`")
    with duckdb_connection(images_dir / ".stats.duckdb.tmp") as con:
        con.execute("CREATE TEMP TABLE idx AS SELECT status, reason, bytes, width, height, original_width, "
                    "original_height FROM read_parquet($paths)", {"paths": [str(p) for p in shards]})
        rows, total_bytes = _one(con, "SELECT count(*), coalesce(sum(bytes), 0) FROM idx")
        counts = dict(con.execute("SELECT status, count(*) FROM idx GROUP BY status ORDER BY status").fetchall())
        by_reason: dict[str, dict[str, int]] = {}
        for status, kind, n in con.execute(f"""
                SELECT status, {_kind_sql()} AS kind, count(*) AS n FROM idx WHERE status <> 'ok'
                GROUP BY ALL ORDER BY n DESC, kind""").fetchall():
            by_reason.setdefault(status, {})[kind] = n
        examples = dict(con.execute(f"""
            SELECT {_kind_sql()} AS kind, min(reason) FROM idx WHERE coalesce(reason, '') <> ''
            GROUP BY kind ORDER BY kind""").fetchall())
        ok = "FROM idx WHERE status = 'ok'"
        resized = _one(con, f"SELECT count(*) {ok} AND (width <> original_width OR height <> original_height)")[0]
        resolution: dict[str, Any] = {}
        if counts.get("ok"):
            for name in ("width", "height", "original_width", "original_height"):
                lo, med, hi = _one(con, f"SELECT min({name}), quantile_cont({name}, 0.5), max({name}) {ok}")
                resolution[name] = {"min": int(lo), "median": float(med), "max": int(hi)}
        sides = {kind: con.execute(f"SELECT {expr} AS side, count(*) {ok} GROUP BY side").fetchall()
                 for kind, expr in (("original", "greatest(original_width, original_height)"),
                                    ("stored", "greatest(width, height)"))}
    report: dict[str, Any] = {
        "subset": subset,
        "shards": len(shards),
        "rows": int(rows),
        "counts": counts,
        "reasons": by_reason,
        "reason_examples": examples,
        "bytes": int(total_bytes),
        "resized": int(resized),
        "resolution": resolution,
    }
    damaged = {p.with_suffix(".tar").name: why for p in shards if (why := tar_mismatch(p, verify == "sha256"))}
    if damaged:  # `fetch` fetches these again; until then later stages cannot read them
        report["damaged_shards"] = damaged
    out_dir = images_dir / "stats"
    if plot and counts.get("ok"):
        report["histogram"] = ws.relative(_plot(sides, counts["ok"], out_dir / "resolution.png"))
    atomic_write_json(out_dir / "stats.json", report)
    return report


def _plot(sides: dict[str, list[tuple[int, int]]], images: int, path: Path) -> Path:
    """Histogram of long sides, original and stored, from (side, count) pairs (a few thousand at most)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = {k: (np.array([s for s, _ in v], dtype=np.float64), np.array([n for _, n in v])) for k, v in sides.items()}
    low = max(1.0, min(float(v.min()) for v, _ in values.values()))
    high = max(float(v.max()) for v, _ in values.values()) + 1
    bins = np.geomspace(low, high, 30).tolist()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for label, (side, weight) in values.items():
        ax.hist(side, bins=bins, weights=weight, alpha=0.6, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("long side (px)")
    ax.set_ylabel("images")
    ax.set_title(f"{images} fetched images")
    ax.legend()
    fig.tight_layout()
    return atomic_write_figure(fig, path)
