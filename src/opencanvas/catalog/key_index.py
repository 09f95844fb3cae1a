"""The persistent key index of a source: which keys its finished input units hold.

`catalog/<source>/_keys.duckdb` has one row per (key, unit) and the list of units it
covers. Ingest's cross-input dedupe asks it which of a new unit's keys are taken,
then adds that unit's keys, in one transaction, before the unit's done-record is
written. A Python set of every key would need ~100 bytes a key (10 GB at 10^8);
DuckDB keeps the keys on disk and spills its joins there.

The done-records stay the truth: `sync` drops units that have no done-record (an
ingest killed between the two writes) and adds finished units the index lacks (a
workspace from before the index, or a deleted index file).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import duckdb

INDEX_NAME = "_keys.duckdb"
MEMORY_LIMIT = "512MB"  # beyond this DuckDB spills to disk beside the index


class KeyIndex:
    """Open with `with KeyIndex(source_dir) as index:`; one writer at a time (DuckDB locks the file)."""

    def __init__(self, source_dir: Path) -> None:
        self.source_dir = Path(source_dir)
        self.spill = self.source_dir / f".{INDEX_NAME}.tmp"
        self.con = duckdb.connect(str(self.source_dir / INDEX_NAME), config={
            "threads": 2, "memory_limit": MEMORY_LIMIT, "temp_directory": str(self.spill),
            "preserve_insertion_order": False})
        self.con.execute("CREATE TABLE IF NOT EXISTS keys (key VARCHAR NOT NULL, unit VARCHAR NOT NULL)")
        self.con.execute("CREATE TABLE IF NOT EXISTS units (unit VARCHAR PRIMARY KEY)")

    def __enter__(self) -> KeyIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.spill, ignore_errors=True)

    def units(self) -> set[str]:
        return {unit for (unit,) in self.con.execute("SELECT unit FROM units").fetchall()}

    def sync(self, finished: dict[str, Sequence[str]]) -> None:
        """Hold exactly the keys of `finished` (unit id -> its part names in `source_dir`)."""
        indexed = self.units()
        for unit in sorted(indexed - finished.keys()):
            self._remove(unit)
        for unit in sorted(finished.keys() - indexed):
            self.add(unit, finished[unit])

    def taken(self, parts: Sequence[str]) -> list[tuple[str, int]]:
        """(part name, row number) of the rows of `parts` whose key the index already holds."""
        if not parts:
            return []
        found = self.con.execute("""
            SELECT filename, file_row_number
            FROM read_parquet(?, filename = true, file_row_number = true) p
            SEMI JOIN keys k USING (key)""", [self._paths(parts)]).fetchall()
        return [(Path(filename).name, row) for filename, row in found]

    def add(self, unit: str, parts: Sequence[str]) -> None:
        """Record `unit`'s keys (read from its parts), replacing any it had: one transaction."""
        self.con.execute("BEGIN TRANSACTION")
        try:
            self.con.execute("DELETE FROM keys WHERE unit = ?", [unit])
            self.con.execute("DELETE FROM units WHERE unit = ?", [unit])
            if parts:
                self.con.execute("INSERT INTO keys SELECT key, ? FROM read_parquet(?)", [unit, self._paths(parts)])
            self.con.execute("INSERT INTO units VALUES (?)", [unit])
            self.con.execute("COMMIT")
        except BaseException:
            self.con.execute("ROLLBACK")
            raise

    def keys(self) -> Iterable[str]:
        """Every indexed key, in key order (for tests and checks)."""
        return (key for (key,) in self.con.execute("SELECT key FROM keys ORDER BY key").fetchall())

    def _remove(self, unit: str) -> None:
        self.con.execute("BEGIN TRANSACTION")
        self.con.execute("DELETE FROM keys WHERE unit = ?", [unit])
        self.con.execute("DELETE FROM units WHERE unit = ?", [unit])
        self.con.execute("COMMIT")

    def _paths(self, parts: Sequence[str]) -> list[str]:
        return [str(self.source_dir / name) for name in parts]
