"""The catalog rows of a subset's keys.

Only finished parts count (`catalog.query.catalog_rows` reads those named by an
input's done-record), so files of an interrupted ingest are never fetched.
"""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

from opencanvas.workspace import Workspace


def subset_rows(ws: Workspace, subset: str) -> dict[str, dict[str, Any] | None]:
    """key -> catalog row (None when the key is missing from the catalog), for every subset key."""
    path = ws.subset_path(subset)
    if not path.exists():
        raise FileNotFoundError(
            f"no subset {subset!r} at {path}: create it first with `opencanvas catalog subset`")
    # Here, not at the top: shard workers import this package and never need DuckDB.
    from opencanvas.catalog.query import catalog_rows

    rows: dict[str, dict[str, Any] | None] = dict.fromkeys(pq.read_table(path, columns=["key"])["key"].to_pylist())
    if rows:
        for row in catalog_rows(ws, rows).to_pylist():
            rows[row["key"]] = row
    return rows
