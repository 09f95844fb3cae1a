"""DuckDB over the catalog's Parquet parts.

Only parts named in a done-record count: a part without one belongs to an
unfinished ingest and may be replaced when that ingest resumes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import duckdb
import pyarrow as pa

from opencanvas.catalog.ingest import DONE_DIR, done_records
from opencanvas.catalog.schema import CATALOG_SCHEMA, QUARANTINE_SCHEMA
from opencanvas.workspace import QUARANTINE, Workspace


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


def query(ws: Workspace, sql: str, params: dict | None = None,
          tables: dict[str, pa.Table] | None = None) -> pa.Table:
    """Run `sql`, in which `{catalog}` and `{quarantine}` stand for the finished parts.

    `tables` are Arrow tables made visible to the query under their names.
    With no parts yet, the placeholders are empty tables of the right schema.
    """
    con = duckdb.connect()
    try:
        con.execute("SET threads TO 2")
        catalog, quarantine = part_files(ws), quarantine_files(ws)
        con.register("empty_catalog", CATALOG_SCHEMA.empty_table())
        con.register("empty_quarantine", QUARANTINE_SCHEMA.empty_table())
        for name, table in (tables or {}).items():
            con.register(name, table)
        return con.sql(sql.format(catalog=_scan(catalog) if catalog else "empty_catalog",
                                  quarantine=_scan(quarantine) if quarantine else "empty_quarantine"),
                       params=params or None).to_arrow_table()
    finally:
        con.close()


def catalog_rows(ws: Workspace, keys: Iterable[str] | None = None) -> pa.Table:
    """Catalog rows (CATALOG_SCHEMA), all or those with the given keys, ordered by key."""
    if keys is None:
        table = query(ws, "SELECT * FROM {catalog} ORDER BY key")
    else:
        wanted = pa.table({"key": pa.array(list(keys), pa.string())})
        table = query(ws, "SELECT c.* FROM {catalog} c SEMI JOIN wanted USING (key) ORDER BY key",
                      tables={"wanted": wanted})
    return table.select(CATALOG_SCHEMA.names).cast(CATALOG_SCHEMA)
