"""The fetch plan: a subset's keys, in key order, cut into shards, computed by DuckDB without materialising rows.

    images/<subset>/plan.parquet   one row per shard: first and last key, rows, keys_sha256
                                   (metadata: the subset file's sha256 and the shard size)

The plan depends only on the subset and the shard size, so every rank and every
Ray worker sees the same shards. It is written once; a plan whose subset digest
or shard size disagrees with this run's is made again (and the caller is told),
never mixed. A shard's rows are read by key range (`shard_rows`): memory grows
with the shard, not with the subset.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from opencanvas.storage import atomic_write_parquet, parquet_metadata, sha256_bytes, sha256_file
from opencanvas.workspace import Workspace

PLAN_FILE = "plan.parquet"
PLAN_SCHEMA = pa.schema([
    ("shard", pa.int64()),
    ("first_key", pa.string()),
    ("last_key", pa.string()),
    ("rows", pa.int64()),
    ("keys_sha256", pa.string()),   # sha256 of the shard's keys joined by "\n" (as in each shard's index)
])
DUCKDB_MEMORY = "512MB"  # DuckDB spills to disk beyond this, so planning 10^8 keys fits a small machine
NOT_IN_CATALOG = "(not in catalog)"
LOCAL_FILES = "(local file)"


def keys_digest(keys: Iterable[str]) -> str:
    """sha256 of the keys joined by newlines: the plan's and each shard index's `keys_sha256`."""
    return sha256_bytes("\n".join(keys).encode())


@dataclass(frozen=True)
class ShardPlan:
    shard: int
    first_key: str
    last_key: str
    rows: int
    keys_sha256: str


@dataclass(frozen=True)
class Plan:
    shards: list[ShardPlan]
    subset_sha256: str
    shard_size: int
    note: str = ""   # why the plan was made again, when it was

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)


def missing_subset_message(ws: Workspace, subset: str) -> str:
    """'no subset X ...', naming the subsets that exist, so a typo is one look away from its fix."""
    existing = sorted(p.stem for p in ws.subset_path("x").parent.glob("*.parquet")) if (
        ws.subset_path("x").parent.is_dir()) else []
    have = f"; subsets here: {', '.join(existing)}" if existing else "; this workspace has no subsets yet"
    return (f"no subset {subset!r} at {ws.relative(ws.subset_path(subset))}{have}. "
            f"Create it with `opencanvas catalog subset`")


def subset_path(ws: Workspace, subset: str) -> Path:
    path = ws.subset_path(subset)
    if not path.exists():
        raise FileNotFoundError(missing_subset_message(ws, subset))
    return path


@contextmanager
def duckdb_connection(spill_dir: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection with bounded memory that spills into `spill_dir` (removed afterwards)."""
    spill_dir.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"threads": 2, "memory_limit": DUCKDB_MEMORY, "temp_directory": str(spill_dir),
                                 "preserve_insertion_order": False})
    try:
        yield con
    finally:
        con.close()
        shutil.rmtree(spill_dir, ignore_errors=True)


def load_plan(ws: Workspace, subset: str, shard_size: int) -> Plan:
    """The subset's plan: read from plan.parquet when it matches the subset and shard size, else made and written."""
    path = subset_path(ws, subset)
    digest = sha256_file(path)
    plan_path = ws.images_dir(subset) / PLAN_FILE
    note = ""
    if plan_path.exists():
        meta = parquet_metadata(plan_path)
        if meta.get("subset_sha256") == digest and meta.get("shard_size") == str(shard_size):
            return Plan([ShardPlan(**r) for r in pq.read_table(plan_path).to_pylist()], digest, shard_size)
        if meta.get("subset_sha256") != digest:
            note = (f"subset {subset!r} changed since {ws.relative(plan_path)} was written "
                    f"(sha256 {meta.get('subset_sha256', '?')[:12]} -> {digest[:12]}): planned again")
        else:
            note = f"--shard-size {shard_size} differs from the plan's {meta.get('shard_size')}: planned again"
    table = _plan_table(path, shard_size, ws.images_dir(subset) / ".plan.duckdb.tmp")
    atomic_write_parquet(plan_path, table, metadata={"subset_sha256": digest, "shard_size": str(shard_size)})
    return Plan([ShardPlan(**r) for r in table.to_pylist()], digest, shard_size, note)


def _plan_table(subset_file: Path, shard_size: int, spill: Path) -> pa.Table:
    # One sort of the distinct keys; each shard's digest is the same string keys_digest() hashes.
    with duckdb_connection(spill) as con:
        table = con.sql("""
            WITH k AS (SELECT key, (row_number() OVER (ORDER BY key) - 1) // $size AS shard
                       FROM (SELECT DISTINCT key FROM read_parquet($subset) WHERE key IS NOT NULL))
            SELECT shard, min(key) AS first_key, max(key) AS last_key, count(*) AS rows,
                   sha256(string_agg(key, chr(10) ORDER BY key)) AS keys_sha256
            FROM k GROUP BY shard ORDER BY shard""",
                        params={"size": shard_size, "subset": str(subset_file)}).to_arrow_table()
    return pa.table(table).cast(PLAN_SCHEMA) if len(table) else PLAN_SCHEMA.empty_table()


def shard_rows(ws: Workspace, subset: str, shard: ShardPlan) -> list[tuple[str, dict[str, Any] | None]]:
    """(key, catalog row or None when missing from the catalog) for the shard's keys, in key order.

    Only finished catalog parts count (`catalog.query.part_files`), so files of an interrupted
    ingest are never fetched. Raises ValueError when the keys are not the planned ones.
    """
    # Here, not at the top: the catalog stage imports DuckDB-heavy modules a shard worker rarely needs.
    from opencanvas.catalog.query import part_files
    from opencanvas.catalog.schema import CATALOG_SCHEMA

    parts = [str(p) for p in part_files(ws)]
    spill = ws.images_dir(subset) / f".shard-{shard.shard:05d}.duckdb.tmp"
    params = {"subset": str(subset_path(ws, subset)), "lo": shard.first_key, "hi": shard.last_key}
    with duckdb_connection(spill) as con:
        keys = [k for (k,) in con.execute(
            "SELECT DISTINCT key FROM read_parquet($subset) WHERE key BETWEEN $lo AND $hi ORDER BY key",
            params).fetchall()]
        rows: dict[str, dict[str, Any]] = {}
        if parts and keys:
            con.register("wanted", pa.table({"key": pa.array(keys, pa.string())}))
            found = con.sql("""
                SELECT c.* FROM read_parquet($parts, union_by_name = true) c SEMI JOIN wanted USING (key)
                WHERE c.key BETWEEN $lo AND $hi
                QUALIFY row_number() OVER (PARTITION BY c.key) = 1""",
                            params={"parts": parts, "lo": shard.first_key, "hi": shard.last_key}).to_arrow_table()
            table = pa.table(found)
            table = table.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)
            rows = {r["key"]: r for r in table.to_pylist()}
    if len(keys) != shard.rows or keys_digest(keys) != shard.keys_sha256:
        raise ValueError(f"subset {subset!r} changed after shard {shard.shard} was planned: "
                         f"re-run `opencanvas fetch --subset {subset}` to plan it again")
    return [(k, rows.get(k)) for k in keys]


def dry_run_counts(ws: Workspace, subset: str, top_hosts: int = 20) -> dict[str, Any]:
    """What a fetch would do: rows, shards (of the plan), and rows per host, by DuckDB, with no HTTP."""
    from opencanvas.catalog.query import part_files

    parts = [str(p) for p in part_files(ws)]
    path = subset_path(ws, subset)
    spill = ws.images_dir(subset) / ".dry-run.duckdb.tmp"
    with duckdb_connection(spill) as con:
        if parts:
            catalog = "(SELECT key, download_url, local_path FROM read_parquet($parts, union_by_name = true))"
        else:
            catalog = "(SELECT NULL::VARCHAR AS key, NULL::VARCHAR AS download_url, NULL::VARCHAR AS local_path)"
        # A local mirror is used before the URL, as the fetcher does (`stage._source_bytes`).
        hosts = con.execute(f"""
            WITH s AS (SELECT DISTINCT key FROM read_parquet($subset)),
                 c AS (SELECT * FROM {catalog} SEMI JOIN s USING (key))
            SELECT CASE WHEN c.key IS NULL THEN '{NOT_IN_CATALOG}'
                        WHEN coalesce(c.local_path, '') <> '' THEN '{LOCAL_FILES}'
                        ELSE coalesce(nullif(lower(regexp_extract(c.download_url,
                             '^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^/?#@]*@)?(\\[[^]]*\\]|[^/?#:]*)', 1)), ''), '(no url)')
                   END AS host, count(*) AS n
            FROM s LEFT JOIN c USING (key) GROUP BY host ORDER BY n DESC, host""",
            {"subset": str(path), **({"parts": parts} if parts else {})}).fetchall()
    total = sum(n for _, n in hosts)
    shown = dict(hosts[:top_hosts])
    if len(hosts) > top_hosts:
        shown[f"({len(hosts) - top_hosts} more hosts)"] = sum(n for _, n in hosts[top_hosts:])
    return {"rows": total, "hosts": len(hosts), "rows_per_host": shown}
