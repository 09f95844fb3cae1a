"""Facts for the cards, each read from a workspace record (and naming it).

A number in a card that cannot be traced to a record is a bug, so every
figure here is computed from a file in the workspace, and `Sources` names
that file (relative to the workspace) for the card's footnotes.

Everything that walks images runs in DuckDB over the Parquet files (catalog
parts, subset, shard indexes, caption parts), with a memory limit and a spill
directory, so writing the cards of a 25M-image run holds no per-image state
in Python (issue 21).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from opencanvas.catalog.query import part_files
from opencanvas.catalog.schema import CATALOG_SCHEMA
from opencanvas.shards import INDEX_SCHEMA, index_paths
from opencanvas.storage import parquet_metadata
from opencanvas.workspace import Workspace

USED_COLUMNS = ("key, source, title, creator, creator_url, landing_url, license_id, license_version, license_url, "
                "license_origin")
MEMORY_LIMIT = "512MB"   # DuckDB buffers; sorts and aggregates spill beyond it
# splits.key_fraction in SQL: the first 8 bytes of sha256(key), big-endian, over 2^64.
KEY_FRACTION_SQL = "(('0x' || substr(sha256(key), 1, 16))::UBIGINT / 18446744073709551616.0)"


@dataclass
class Sources:
    """Workspace files a card was generated from (relative paths)."""

    paths: set[str] = field(default_factory=set)

    def add(self, ws: Workspace, path: Path) -> Path:
        self.paths.add(ws.relative(path))
        return path


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text()) if Path(path).exists() else {}


def _scan(paths: list[Path]) -> str:
    return "read_parquet([" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "])"


class UsedImages:
    """The images a run used (fetched ok in its subset) joined with their catalog rows, as DuckDB views.

    Views: `subset` (the subset file), `idx` (shard index rows); table `used` (the credit columns of
    every fetched-ok image, plus `heldout`: key-hash fraction below the run's holdout, never trained on).
    Use as a context manager: the spill directory is removed on exit.
    """

    def __init__(self, ws: Workspace, subset: str, holdout: float, spill_dir: Path) -> None:
        self.spill_dir = spill_dir
        shutil.rmtree(spill_dir, ignore_errors=True)   # a killed earlier run's database
        spill_dir.mkdir(parents=True, exist_ok=True)
        # A database file in the spill folder: `used` is computed once (join + key hashes) and kept on
        # disk, not recomputed by each of the cards' queries nor held in memory.
        self.con = con = duckdb.connect(str(spill_dir / "cards.duckdb"))
        con.execute("SET threads TO 2")
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        con.execute("SET temp_directory = '" + str(spill_dir).replace("'", "''") + "'")
        con.execute("SET preserve_insertion_order = false")
        subset_path = ws.subset_path(subset)
        con.execute(f"CREATE VIEW subset AS SELECT * FROM {_scan([subset_path])}")
        indexes, parts = index_paths(ws.images_dir(subset)), part_files(ws)
        if indexes:
            con.execute(f"CREATE VIEW idx AS SELECT * FROM {_scan(indexes)}")
        else:
            con.register("idx", INDEX_SCHEMA.empty_table())
        if parts:
            con.execute(f"CREATE VIEW catalog AS SELECT * FROM {_scan(parts)}")
        else:
            con.register("catalog", CATALOG_SCHEMA.empty_table())
        con.execute(f"""CREATE OR REPLACE TABLE used AS
            SELECT {USED_COLUMNS},
                   coalesce(attribution_required, license_id NOT IN ('cc0', 'pdm')) AS attribution_required,
                   {KEY_FRACTION_SQL} < {float(holdout)!r} AS heldout
            FROM catalog c SEMI JOIN (SELECT key FROM idx WHERE status = 'ok') ok USING (key)""")

    def __enter__(self) -> UsedImages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.con.close()
        shutil.rmtree(self.spill_dir, ignore_errors=True)

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """A small result (counts, top-N): aggregate in SQL, never fetch per-image rows with this."""
        return self.con.execute(sql, params or []).fetchall()

    def batches(self, sql: str, rows_per_batch: int = 5_000) -> pa.RecordBatchReader:
        """A large result as a stream of Arrow batches (per-image lists such as attribution.csv)."""
        return self.con.sql(sql).to_arrow_reader(rows_per_batch)


def subset_facts(ws: Workspace, subset: str, images: UsedImages, src: Sources) -> dict[str, Any]:
    path = ws.subset_path(subset)
    src.add(ws, path)
    meta = parquet_metadata(path)
    by_license = dict(images.rows("SELECT license_id, count(*) FROM subset GROUP BY 1 ORDER BY 1"))
    return {"name": subset, "count": sum(by_license.values()), "by_license": by_license,
            "policy": meta.get("policy", ""), "policy_text": meta.get("policy_text", ""),
            "catalog_hash": meta.get("catalog_hash", ""), "fraction": meta.get("fraction", ""),
            "seed": meta.get("seed", ""), "max_rows": meta.get("max_rows", ""), "selection": meta.get("selection", "")}


def key_filter_facts(ws: Workspace, key_filter: str | None, src: Sources) -> dict[str, Any] | None:
    """The data fraction a run trained on through a key filter (a study cell), from the key file's metadata."""
    if not key_filter:
        return None
    path = ws.root / key_filter
    if not path.exists():
        return {"path": key_filter, "missing": True}
    src.add(ws, path)
    meta = parquet_metadata(path)
    return {"path": key_filter, "fraction": meta.get("fraction", ""), "seed": meta.get("seed", ""),
            "formula": meta.get("formula", "")}


def fetch_facts(ws: Workspace, subset: str, images: UsedImages, src: Sources) -> dict[str, Any]:
    """Fetch outcome by status and reason family (duplicate-of, opted out, ...)."""
    paths = index_paths(ws.images_dir(subset))
    for p in paths:
        src.add(ws, p)
    if not paths:
        return {"shards": 0, "by_status": {}, "by_reason": {}}
    by_status = dict(images.rows("SELECT status, count(*) FROM idx GROUP BY 1 ORDER BY 1"))
    # Reasons carry details after ':' (sizes, keys): group by the family before it.
    by_reason = {f"{s}: {r}": n for s, r, n in images.rows(
        "SELECT status, split_part(reason, ':', 1), count(*) FROM idx WHERE status <> 'ok' "
        "GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2")}
    total_bytes = images.rows("SELECT coalesce(sum(bytes), 0) FROM idx WHERE status = 'ok'")[0][0]
    return {"shards": len(paths), "by_status": by_status, "by_reason": by_reason, "bytes": int(total_bytes)}


def split_facts(images: UsedImages, holdout: float) -> dict[str, Any]:
    """Fetched-ok images, held out (evaluation references only) and trained on."""
    used, heldout = images.rows("SELECT count(*), count(*) FILTER (WHERE heldout) FROM used")[0]
    return {"fetched_ok": int(used), "heldout": int(heldout), "trained": int(used - heldout),
            "holdout_fraction": holdout}


def trained_license_facts(images: UsedImages) -> dict[str, Any]:
    """Licenses of the images actually trained on, where each license came from, and the old PD dedication."""
    by_license = dict(images.rows("SELECT license_id, count(*) FROM used WHERE NOT heldout GROUP BY 1 ORDER BY 1"))
    collection = dict(images.rows("SELECT license_id, count(*) FROM used WHERE NOT heldout AND "
                                  "license_origin = 'collection' GROUP BY 1 ORDER BY 1"))
    collection_by_source = dict(images.rows("SELECT source, count(*) FROM used WHERE NOT heldout AND "
                                            "license_origin = 'collection' GROUP BY 1 ORDER BY 1"))
    old_pd = images.rows("SELECT count(*) FROM used WHERE NOT heldout AND license_id = 'pdm' AND "
                         "lower(license_url) LIKE '%web.resource.org/cc/publicdomain%'")[0][0]
    sources = [s for (s,) in images.rows("SELECT DISTINCT source FROM used ORDER BY 1")]
    return {"by_license": by_license, "collection_origin": collection,
            "collection_origin_by_source": collection_by_source, "old_public_domain_dedication": int(old_pd),
            "sources": sources}


def caption_facts(ws: Workspace, captioner: str, images: UsedImages, src: Sources) -> dict[str, Any]:
    """Caption counts over the used images, aggregated in DuckDB."""
    parts = sorted(ws.captions_dir(captioner).glob("part-*.parquet"))
    for p in parts:
        src.add(ws, p)
    if not parts:
        return {"captioner": captioner, "count": 0}
    rel = f"(SELECT * FROM {_scan(parts)} SEMI JOIN used USING (key))"
    count, flagged, words = images.rows(
        f"SELECT count(*), count(*) FILTER (WHERE coalesce(flagged, '') <> ''), "
        f"coalesce(sum(len(string_split_regex(trim(coalesce(caption, '')), '\\s+')) "
        f"- CASE WHEN trim(coalesce(caption, '')) = '' THEN 1 ELSE 0 END), 0) FROM {rel}")[0]
    distinct = images.rows(f"SELECT count(*) FROM (SELECT caption FROM {rel} GROUP BY caption)")[0][0]
    model_ids = [v for (v,) in images.rows(f"SELECT DISTINCT coalesce(model_id, '') FROM {rel} ORDER BY 1")]
    revisions = [v for (v,) in images.rows(f"SELECT DISTINCT coalesce(model_revision, '') FROM {rel} ORDER BY 1")]
    return {
        "captioner": captioner, "count": int(count), "flagged": int(flagged), "model_id": model_ids,
        "model_revision": revisions, "mean_words": round(words / count, 2) if count else 0.0,
        "distinct_captions": int(distinct),
    }
