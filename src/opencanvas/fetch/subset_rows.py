"""The catalog rows of a subset's keys, read with DuckDB straight from the catalog parts.

Only finished parts count (`catalog.query.part_files`: those named by an input's
done-record), so files of an interrupted ingest are never fetched.
"""

from __future__ import annotations

from typing import Any

from opencanvas.workspace import Workspace


def subset_rows(ws: Workspace, subset: str) -> dict[str, dict[str, Any] | None]:
    """key -> catalog row (None when the key is missing from the catalog), for every subset key."""
    import duckdb  # here, not at the top: shard workers import this package and never need it

    path = ws.subset_path(subset)
    if not path.exists():
        raise FileNotFoundError(
            f"no subset {subset!r} at {path}: create it first with `opencanvas catalog subset`")
    from opencanvas.catalog.query import part_files

    parts = [str(p) for p in part_files(ws)]
    con = duckdb.connect()
    try:
        keys = [k for (k,) in con.execute("SELECT DISTINCT key FROM read_parquet(?)", [str(path)]).fetchall()]
        rows: dict[str, dict[str, Any] | None] = dict.fromkeys(keys)
        if parts and keys:
            # A key ingested twice (two parts) keeps the row of the first part, by file name.
            table = con.sql(
                """SELECT * EXCLUDE (filename) FROM read_parquet(?, union_by_name = true, filename = true)
                   WHERE key IN (SELECT key FROM read_parquet(?))
                   QUALIFY row_number() OVER (PARTITION BY key ORDER BY filename) = 1""",
                params=[parts, str(path)]).to_arrow_table()
            for row in table.to_pylist():
                rows[row["key"]] = row
    finally:
        con.close()
    return rows
