"""DuckDB over the catalog's Parquet parts.

Only parts named in a done-record count: a part without one belongs to an
unfinished ingest and may be replaced when that ingest resumes.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from opencanvas.catalog.ingest import DONE_DIR, done_records
from opencanvas.catalog.schema import CATALOG_SCHEMA, QUARANTINE_SCHEMA
from opencanvas.storage import atomic_path
from opencanvas.workspace import QUARANTINE, Workspace

COPY_MEMORY_LIMIT = "512MB"  # a copy spills its sort beyond this, so a 10^8-row subset fits a small machine
COPY_BATCH_ROWS = 1 << 17


def catalog_sources(ws: Workspace) -> list[str]:
    """Sources with at least one finished input (catalog/stats/ and quarantine/ are not sources)."""
    if not ws.catalog_dir.is_dir():
        return []
    return sorted(d.name for d in ws.catalog_dir.iterdir()
                  if d.name != QUARANTINE and (d / DONE_DIR).is_dir())


def part_files(ws: Workspace, source: str | None = None) -> list[Path]:
    """Finished catalog parts (of one source, or all)."""
    sources = [source] if source else catalog_sources(ws)
    return sorted(ws.source_dir(s) / name for s in sources for r in done_records(ws, s) for name in r["parts"])


def quarantine_files(ws: Workspace, source: str | None = None) -> list[Path]:
    sources = [source] if source else catalog_sources(ws)
    return sorted(ws.quarantine_dir / name for s in sources for r in done_records(ws, s)
                  for name in r["quarantine_parts"])


def _scan(paths: list[Path]) -> str:
    return "read_parquet([" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "])"


def _with_parts(ws: Workspace, con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """`sql` with `{catalog}` / `{quarantine}` replaced by the finished parts (or empty tables)."""
    catalog, quarantine = part_files(ws), quarantine_files(ws)
    con.register("empty_catalog", CATALOG_SCHEMA.empty_table())
    con.register("empty_quarantine", QUARANTINE_SCHEMA.empty_table())
    return sql.format(catalog=_scan(catalog) if catalog else "empty_catalog",
                      quarantine=_scan(quarantine) if quarantine else "empty_quarantine")


def query(ws: Workspace, sql: str, params: dict | None = None,
          tables: dict[str, pa.Table] | None = None) -> pa.Table:
    """Run `sql`, in which `{catalog}` and `{quarantine}` stand for the finished parts.

    `tables` are Arrow tables made visible to the query under their names.
    With no parts yet, the placeholders are empty tables of the right schema.
    """
    con = duckdb.connect()
    try:
        con.execute("SET threads TO 2")
        for name, table in (tables or {}).items():
            con.register(name, table)
        return con.sql(_with_parts(ws, con, sql), params=params or None).to_arrow_table()
    finally:
        con.close()


def copy_to_parquet(ws: Workspace, sql: str, path: Path, schema: pa.Schema, params: dict | None = None,
                    metadata: dict[str, str] | None = None) -> int:
    """Write the rows of `sql` (placeholders as in `query`) to the Parquet file `path`; returns their count.

    The rows stream from DuckDB to the file in record batches (DuckDB sorts on disk if it must), so
    memory does not grow with the catalog. The file has exactly `schema`, with `metadata` as its
    key-value metadata (`storage.parquet_metadata` reads it). Atomic: a failed or empty result
    leaves no file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # DuckDB creates its spill folder there only if it spills
    spill = path.parent / f".{path.name}.duckdb.tmp"
    con = duckdb.connect(config={"threads": 2, "memory_limit": COPY_MEMORY_LIMIT, "temp_directory": str(spill)})
    schema = schema.with_metadata({k.encode(): v.encode() for k, v in (metadata or {}).items()})
    rows = 0
    try:
        reader = con.sql(_with_parts(ws, con, sql), params=params or None).to_arrow_reader(COPY_BATCH_ROWS)
        with atomic_path(path) as tmp:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                for batch in reader:
                    writer.write_table(pa.Table.from_batches([batch]).cast(schema))
                    rows += batch.num_rows
            if rows == 0:
                raise EmptyResult(f"{sql!r} selects no rows")
        return rows
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


class EmptyResult(ValueError):
    """`copy_to_parquet` found no rows; nothing was written."""


def catalog_rows(ws: Workspace, keys: Iterable[str] | None = None) -> pa.Table:
    """Catalog rows (CATALOG_SCHEMA), all or those with the given keys, ordered by key."""
    if keys is None:
        table = query(ws, "SELECT * FROM {catalog} ORDER BY key")
    else:
        wanted = pa.table({"key": pa.array(list(keys), pa.string())})
        table = query(ws, "SELECT c.* FROM {catalog} c SEMI JOIN wanted USING (key) ORDER BY key",
                      tables={"wanted": wanted})
    return table.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)
