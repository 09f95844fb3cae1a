"""The tombstone table: keys taken down, with reason and date, never the content.

`catalog/tombstones.parquet`. Foundation, because the catalog's ingest reads it (a tombstoned key
is never ingested again) and the takedown, a later stage, writes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opencanvas.storage import atomic_write_parquet

TOMBSTONES_FILE = "tombstones.parquet"
TOMBSTONE_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("reason", pa.string()),
    pa.field("takedown_id", pa.string()),
    pa.field("removed_at", pa.timestamp("us", tz="UTC")),
])


def tombstones_path(catalog_dir: Path) -> Path:
    return Path(catalog_dir) / TOMBSTONES_FILE


def read_tombstones(catalog_dir: Path) -> pa.Table:
    path = tombstones_path(catalog_dir)
    return pq.read_table(path).cast(TOMBSTONE_SCHEMA) if path.exists() else TOMBSTONE_SCHEMA.empty_table()


def tombstoned_keys(catalog_dir: Path) -> frozenset[str]:
    return frozenset(read_tombstones(catalog_dir).column("key").to_pylist())


def tombstoned_mask(rows: pa.Table, keys: frozenset[str]) -> pa.Array:
    """True for the rows whose key was taken down."""
    if not keys or rows.num_rows == 0:
        return pa.array([False] * rows.num_rows, pa.bool_())
    return pc.is_in(rows.column("key"), pa.array(sorted(keys), pa.string()))


def without_tombstoned(rows: pa.Table, keys: frozenset[str]) -> pa.Table:
    """`rows` less those whose key was taken down."""
    return rows.filter(pc.invert(tombstoned_mask(rows, keys)))


def add_tombstones(catalog_dir: Path, keys: Iterable[str], reason: str, takedown_id: str) -> int:
    """Add keys not yet tombstoned (re-running a takedown adds nothing); returns how many were new."""
    table = read_tombstones(catalog_dir)
    have = set(table.column("key").to_pylist())
    new = sorted(set(keys) - have)
    if new:
        now = datetime.now(UTC)
        rows = pa.Table.from_pylist([{"key": k, "reason": reason, "takedown_id": takedown_id, "removed_at": now}
                                     for k in new], schema=TOMBSTONE_SCHEMA)
        atomic_write_parquet(tombstones_path(catalog_dir), pa.concat_tables([table, rows]))
    return len(new)
