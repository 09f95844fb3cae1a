"""Facts for the cards, each read from a workspace record (and naming it).

A number in a card that cannot be traced to a record is a bug, so every
figure here is computed from a file in the workspace, and `Fact.source` names
that file (relative to the workspace) for the card's footnotes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opencanvas.captions import read_captions
from opencanvas.shards import index_paths
from opencanvas.storage import parquet_metadata
from opencanvas.workspace import Workspace


@dataclass
class Sources:
    """Workspace files a card was generated from (relative paths)."""

    paths: set[str] = field(default_factory=set)

    def add(self, ws: Workspace, path: Path) -> Path:
        self.paths.add(ws.relative(path))
        return path


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def subset_facts(ws: Workspace, subset: str, src: Sources) -> dict[str, Any]:
    path = ws.subset_path(subset)
    if not path.exists():
        raise FileNotFoundError(f"subset {subset!r} not found at {path}: run `opencanvas catalog subset` first")
    src.add(ws, path)
    table = pq.read_table(path, columns=["license_id"])
    meta = parquet_metadata(path)
    by_license = {c["values"]: c["counts"] for c in pc.value_counts(table.column("license_id")).to_pylist()}
    return {"name": subset, "count": table.num_rows, "by_license": by_license,
            "policy": meta.get("policy", ""), "policy_text": meta.get("policy_text", ""),
            "catalog_hash": meta.get("catalog_hash", "")}


def fetch_facts(ws: Workspace, subset: str, src: Sources) -> dict[str, Any]:
    """Fetch outcome by status and reason family (duplicate-of, opted out, ...)."""
    paths = index_paths(ws.images_dir(subset))
    for p in paths:
        src.add(ws, p)
    if not paths:
        return {"shards": 0, "by_status": {}, "by_reason": {}}
    con = duckdb.connect()
    con.read_parquet([str(p) for p in paths]).create_view("rel")
    by_status = dict(con.sql("select status, count(*) from rel group by 1").fetchall())
    # Reasons carry details after ':' (sizes, keys): group by the family before it.
    by_reason = {f"{s}: {r}": n for s, r, n in con.sql(
        "select status, split_part(reason, ':', 1), count(*) from rel where status <> 'ok' "
        "group by 1, 2 order by 3 desc").fetchall()}
    total_bytes = con.sql("select coalesce(sum(bytes), 0) from rel where status = 'ok'").fetchall()[0][0]
    return {"shards": len(paths), "by_status": by_status, "by_reason": by_reason, "bytes": int(total_bytes)}


def ok_keys(ws: Workspace, subset: str) -> list[str]:
    paths = index_paths(ws.images_dir(subset))
    if not paths:
        return []
    con = duckdb.connect()
    con.read_parquet([str(p) for p in paths]).create_view("rel")
    return [k for (k,) in con.sql("select key from rel where status = 'ok' order by key").fetchall()]


def caption_facts(ws: Workspace, captioner: str, keys: list[str] | None, src: Sources) -> dict[str, Any]:
    parts = sorted(ws.captions_dir(captioner).glob("part-*.parquet"))
    for p in parts:
        src.add(ws, p)
    if not parts:
        return {"captioner": captioner, "count": 0}
    table = read_captions(ws, captioner, keys)
    captions = table.column("caption").to_pylist()
    words = [len((c or "").split()) for c in captions]
    flagged = pc.fill_null(pc.not_equal(table.column("flagged"), ""), False)
    return {
        "captioner": captioner,
        "count": table.num_rows,
        "flagged": int(pc.sum(flagged).as_py() or 0),
        "model_id": sorted({v or "" for v in pc.unique(table.column("model_id")).to_pylist()}),
        "model_revision": sorted({v or "" for v in pc.unique(table.column("model_revision")).to_pylist()}),
        "mean_words": round(sum(words) / len(words), 2) if words else 0.0,
        "distinct_captions": len(set(captions)),
    }
