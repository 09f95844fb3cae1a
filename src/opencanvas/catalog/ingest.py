"""`catalog ingest`: run a source adapter over input files into catalog parts.

Unit of work = one input file (a folder for folder-shaped sources). A worker
turns a unit into `catalog/<source>/part-<unit>-NNNNN.parquet` plus
`catalog/quarantine/<source>-<unit>-NNNNN.parquet`, then moves keys repeated
within the unit to `<source>-<unit>-repeated.parquet`; the parent removes keys
already ingested from other units (`-duplicates.parquet`, both with reason
`duplicate`; it asks the source's persistent key index, `key_index.KeyIndex`, and
adds the unit's keys to it) and writes the unit's done-record
`catalog/<source>/_done/<unit>.json` last, atomically. A killed ingest therefore resumes per input file with the
same command: parts (and temp files) of unfinished units are deleted and redone,
finished units are skipped, and every record read ends up exactly once in the
catalog or in quarantine.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opencanvas.catalog.key_index import MEMORY_LIMIT as KEY_INDEX_MEMORY
from opencanvas.catalog.key_index import KeyIndex
from opencanvas.catalog.records import SourceBatch
from opencanvas.catalog.schema import CATALOG_SCHEMA, QUARANTINE_SCHEMA
from opencanvas.catalog.sources import ADAPTERS, InputUnit
from opencanvas.engines import map_shards
from opencanvas.progress import progress_bar
from opencanvas.storage import atomic_path, atomic_write_json, sha256_file
from opencanvas.tombstones import tombstoned_keys, tombstoned_mask
from opencanvas.workspace import Workspace

PART_ROWS = 250_000  # rows per catalog part: ~10-20 MB of Parquet
ROW_GROUP_ROWS = 20_000  # rows buffered before a row group is written (the YFCC reader hands ~40k at a time)
# Dictionary pages and min/max statistics only where they pay: on the repetitive columns and
# the key. Trying both on every text column costs ~20% of the write time for nothing.
CATALOG_PARQUET = {
    "compression": "zstd",
    "use_dictionary": ["source", "category", "license_id", "license_version", "license_url", "license_origin"],
    "write_statistics": ["key", "source", "license_id", "commercial_ok", "derivatives_ok", "share_alike",
                         "attribution_required", "width", "height"],
}
DONE_DIR = "_done"


@dataclass
class IngestStats:
    source: str
    inputs: int = 0          # units planned
    resumed: int = 0         # units already done before this run (skipped)
    read: int = 0            # records read in this run
    ingested: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}


@dataclass(frozen=True)
class UnitTask:
    unit: InputUnit
    uid: str
    source_dir: str
    quarantine_dir: str


@dataclass
class UnitResult:
    uid: str
    read: int = 0
    ingested: int = 0
    quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)
    parts: list[str] = field(default_factory=list)
    quarantine_parts: list[str] = field(default_factory=list)


def unit_id(unit: InputUnit) -> str:
    options = "".join(f"\0{k}={v}" for k, v in unit.options)  # empty for most units: their ids stay as they were
    return hashlib.sha256(f"{unit.source}\0{unit.path}{options}".encode()).hexdigest()[:16]


def _duplicates_to_quarantine(rows: pa.Table, dup: pa.Array, input_file: str, detail: str) -> pa.Table:
    """Quarantine rows for the masked catalog rows, each row as JSON in `raw` (built column-wise by DuckDB)."""
    dups = rows.filter(dup)
    con = duckdb.connect(config={"threads": 1})
    try:
        con.register("dups", dups)
        raw = con.sql("SELECT to_json(d)::VARCHAR AS raw FROM dups d").to_arrow_table()["raw"]
    finally:
        con.close()
    n = dups.num_rows
    return pa.table({"source": dups["source"], "input_file": pa.array([input_file] * n, pa.string()),
                     "record_no": pa.nulls(n, pa.int64()), "raw": raw,
                     "reason": pa.array(["duplicate"] * n, pa.string()),
                     "detail": pa.array([detail] * n, pa.string())}, schema=QUARANTINE_SCHEMA)


class _PartWriter:
    """Streams tables into numbered Parquet parts of about PART_ROWS rows.

    Rows are written as row groups of at least ROW_GROUP_ROWS (the last one may be
    smaller) as they arrive, on one background thread (Arrow releases the GIL): the input keeps being parsed while
    earlier rows are compressed, and when it ends little is left to write. A part
    appears under its name (atomically) once it is complete.
    """

    def __init__(self, directory: Path, prefix: str, schema: pa.Schema, writer: ThreadPoolExecutor,
                 options: dict | None = None) -> None:
        self.directory, self.prefix, self.schema, self.writer = directory, prefix, schema, writer
        self.options = options or {"compression": "zstd"}
        self.buffer: list[pa.Table] = []
        self.buffered = 0                    # rows in `buffer`
        self.rows = 0                        # rows sent to the open part
        self.names: list[str] = []
        self.pending: list[Future[None]] = []
        self._open: tuple[contextlib.ExitStack, pq.ParquetWriter] | None = None  # writer thread only

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.buffer.append(table)
            self.buffered += table.num_rows
        if self.buffered >= ROW_GROUP_ROWS:
            self._write_buffer()
        done = [f for f in self.pending if f.done()]
        for f in done:
            f.result()  # re-raise a failed write here
            self.pending.remove(f)

    def close(self) -> list[str]:
        self._write_buffer()
        if self.rows:
            self._submit(self._finish)
            self.rows = 0
        for f in self.pending:
            f.result()
        return self.names

    def _write_buffer(self) -> None:
        if not self.buffer:
            return
        if self.rows == 0:
            self.names.append(f"{self.prefix}-{len(self.names):05d}.parquet")
        self._submit(self._write, self.names[-1], self.buffer)
        self.rows += self.buffered
        self.buffer, self.buffered = [], 0
        if self.rows >= PART_ROWS:
            self._submit(self._finish)
            self.rows = 0

    def abort(self) -> None:
        """After a failure: wait for queued writes and remove the open part's temp file."""
        for f in self.pending:
            f.exception()
        self.writer.submit(self._discard).result()

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        self.pending.append(self.writer.submit(fn, *args))

    def _write(self, name: str, tables: list[pa.Table]) -> None:
        if self._open is None:
            stack = contextlib.ExitStack()
            tmp = stack.enter_context(atomic_path(self.directory / name))
            self._open = stack, pq.ParquetWriter(tmp, self.schema, **self.options)
        table = pa.concat_tables([t.cast(self.schema) for t in tables])
        self._open[1].write_table(table, row_group_size=table.num_rows)

    def _finish(self) -> None:
        assert self._open is not None, "_finish without an open part"
        stack, writer = self._open
        self._open = None
        with stack:  # on leaving: fsync + rename onto the part's name, or remove the temp file if close failed
            writer.close()

    def _discard(self) -> None:
        if self._open is not None:
            stack, writer = self._open
            self._open = None
            try:
                writer.close()
            finally:
                stack.__exit__(RuntimeError, RuntimeError("ingest failed"), None)  # removes the temp file


def ingest_unit(task: UnitTask, on_batch: Callable[[int], None] | None = None) -> UnitResult:
    """Read one unit with its adapter and write its parts (no done-record: the parent writes it).

    `on_batch(records)` is called after each batch (in-process runs use it for progress).
    """
    unit, result = task.unit, UnitResult(task.uid)
    with ThreadPoolExecutor(1) as writer:
        catalog = _PartWriter(Path(task.source_dir), f"part-{task.uid}", CATALOG_SCHEMA, writer, CATALOG_PARQUET)
        quarantine = _PartWriter(Path(task.quarantine_dir), f"{unit.source}-{task.uid}", QUARANTINE_SCHEMA, writer)
        try:
            _read_unit(unit, catalog, quarantine, result, on_batch,
                       tombstoned_keys(Path(task.source_dir).parent))  # taken-down keys never come back
            result.parts, result.quarantine_parts = catalog.close(), quarantine.close()
        except BaseException:
            for part_writer in (catalog, quarantine):
                with contextlib.suppress(Exception):  # the first error is the one to report
                    part_writer.abort()
            raise
    source_dir = Path(task.source_dir)
    repeated = _repeated_rows(source_dir, result.parts)
    _quarantine_duplicates(source_dir, Path(task.quarantine_dir), task, result, repeated,
                           "key repeated within this input file", "repeated")
    return result


def _read_unit(unit: InputUnit, catalog: _PartWriter, quarantine: _PartWriter, result: UnitResult,
               on_batch: Callable[[int], None] | None, tombstoned: frozenset[str] = frozenset()) -> None:
    batch: SourceBatch
    for batch in ADAPTERS[unit.source].read(unit):
        rows, rejects = batch.catalog, batch.quarantine
        if rows.num_rows + rejects.num_rows != batch.read:
            raise RuntimeError(f"{unit.source} adapter returned {rows.num_rows} rows + {rejects.num_rows} rejects "
                               f"for {batch.read} records read from {unit.path}: an adapter bug")
        gone = tombstoned_mask(rows, tombstoned)
        rejects = pa.concat_tables([rejects, _taken_down(rows.filter(gone), unit.path)])
        rows = rows.filter(pc.invert(gone))
        catalog.add(rows)
        quarantine.add(rejects)
        result.read += batch.read
        result.ingested += rows.num_rows
        result.quarantined += rejects.num_rows
        result.reasons.update(rejects["reason"].to_pylist())
        if on_batch is not None:
            on_batch(batch.read)


def _taken_down(rows: pa.Table, input_file: str) -> pa.Table:
    """Quarantine rows for taken-down keys: the key and reason only, never the record's content."""
    n = rows.num_rows
    return pa.table({"source": rows["source"], "input_file": pa.array([input_file] * n, pa.string()),
                     "record_no": pa.nulls(n, pa.int64()),
                     "raw": pa.array([json.dumps({"key": k}) for k in rows["key"].to_pylist()], pa.string()),
                     "reason": pa.array(["taken-down"] * n, pa.string()),
                     "detail": pa.array(["tombstoned by `opencanvas takedown`"] * n, pa.string())},
                    schema=QUARANTINE_SCHEMA)


def _repeated_rows(source_dir: Path, parts: Sequence[str]) -> dict[str, pa.Array]:
    """Masks, per part, of rows whose key already occurred earlier in `parts` (first one wins).

    DuckDB over the written parts rather than a set in memory: a 100M-line input has
    100M keys (a Python set of them would take ~10 GB); this takes ~0.1 s per 1M rows.
    Part names sort in write order.
    """
    if not parts:
        return {}
    spill = source_dir / f".{Path(parts[0]).stem}.duckdb.tmp"  # 100M keys may not fit in memory
    # Capped like the key index: without a limit DuckDB keeps every key's hash entry in memory
    # (1.4 GB peak RSS for a 10M-line input), with it the DISTINCT spills beside the parts.
    con = duckdb.connect(config={"threads": 2, "temp_directory": str(spill), "memory_limit": KEY_INDEX_MEMORY})
    try:
        scan = [str(source_dir / name) for name in parts]
        if (con.execute("SELECT count(*) = count(DISTINCT key) FROM read_parquet(?)", [scan]).fetchone() or [0])[0]:
            return {}  # the usual case, and half the work of the query below
        found = con.execute("""
            WITH r AS (SELECT key, filename, file_row_number
                       FROM read_parquet(?, filename = true, file_row_number = true)),
                 repeated AS (SELECT key FROM r GROUP BY key HAVING count(*) > 1)
            SELECT filename, file_row_number FROM (
                SELECT filename, file_row_number,
                       row_number() OVER (PARTITION BY key ORDER BY filename, file_row_number) AS n
                FROM r SEMI JOIN repeated USING (key))
            WHERE n > 1""", [scan]).fetchall()
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    return _masks(source_dir, [(Path(filename).name, row) for filename, row in found])


def _masks(source_dir: Path, rows: Sequence[tuple[str, int]]) -> dict[str, pa.Array]:
    """(part name, row number) pairs -> a boolean mask per part naming those rows."""
    masks: dict[str, np.ndarray] = {}
    for name, row in rows:
        if name not in masks:
            masks[name] = np.zeros(pq.read_metadata(source_dir / name).num_rows, dtype=bool)
        masks[name][row] = True
    return {name: pa.array(mask) for name, mask in masks.items()}


def _quarantine_duplicates(source_dir: Path, quarantine_dir: Path, task: UnitTask, result: UnitResult,
                           drop: dict[str, pa.Array], detail: str, suffix: str) -> None:
    """Move the rows masked in `drop` (part name -> bool mask) from their parts to a quarantine part.

    One part at a time, streamed into the quarantine file: memory is bounded by a part, not by
    how many keys repeat (a re-ingested 10^8-line file repeats all of them).
    """
    if not drop:
        return
    name = f"{task.unit.source}-{task.uid}-{suffix}.parquet"
    moved = 0
    with atomic_path(quarantine_dir / name) as tmp, pq.ParquetWriter(tmp, QUARANTINE_SCHEMA,
                                                                     compression="zstd") as writer:
        for part, mask in drop.items():
            rows = pq.read_table(source_dir / part)
            dups = _duplicates_to_quarantine(rows, mask, task.unit.path, detail)
            writer.write_table(dups)
            moved += dups.num_rows
            with atomic_path(source_dir / part) as part_tmp:
                pq.write_table(rows.filter(pc.invert(mask)), part_tmp, **CATALOG_PARQUET)
            del rows, dups
    result.quarantine_parts.append(name)
    result.ingested -= moved
    result.quarantined += moved
    result.reasons["duplicate"] += moved


def _done_path(ws: Workspace, source: str, uid: str) -> Path:
    return ws.source_dir(source) / DONE_DIR / f"{uid}.json"


def done_records(ws: Workspace, source: str) -> list[dict]:
    """The done-records of a source's finished input units."""
    folder = ws.source_dir(source) / DONE_DIR
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _remove_unfinished(ws: Workspace, source: str, uid: str) -> None:
    """Parts of a unit without a done-record, and the temp files a killed writer left (`.<part>.*.tmp`)."""
    source_dir, quarantine_dir = ws.source_dir(source), ws.quarantine_dir
    stale = [*source_dir.glob(f"part-{uid}-*.parquet"), *source_dir.glob(f".part-{uid}-*.tmp"),
             *quarantine_dir.glob(f"{source}-{uid}-*.parquet"), *quarantine_dir.glob(f".{source}-{uid}-*.tmp")]
    for p in stale:
        shutil.rmtree(p) if p.is_dir() else p.unlink()  # a directory: DuckDB's spill folder


def _commit(ws: Workspace, task: UnitTask, result: UnitResult, index: KeyIndex | None) -> None:
    """Drop keys other units already hold, index the rest, then write the done-record (last, atomically)."""
    if index is not None:
        source_dir = ws.source_dir(task.unit.source)
        drop = _masks(source_dir, index.taken(result.parts))  # rare: only those parts are read and rewritten
        _quarantine_duplicates(source_dir, ws.quarantine_dir, task, result, drop,
                               "key already ingested from another input", "duplicates")
        index.add(task.uid, result.parts)  # a kill before the done-record is undone by the next `sync`
    write_done_record(ws, task.unit.source, task.uid, str(task.unit.path), result.parts, read=result.read,
                      ingested=result.ingested, quarantined=result.quarantined, reasons=dict(result.reasons),
                      quarantine_parts=result.quarantine_parts)


def write_done_record(ws: Workspace, source: str, uid: str, input_path: str, parts: Sequence[str], *, read: int,
                      ingested: int, quarantined: int = 0, reasons: dict[str, int] | None = None,
                      quarantine_parts: Sequence[str] = ()) -> None:
    """Mark an input unit finished: its parts (with content hashes) become part of the catalog.

    Written last and atomically; readers (`query.part_files`) see only parts named here.
    """
    source_dir = ws.source_dir(source)
    atomic_write_json(_done_path(ws, source, uid), {
        "input": input_path, "unit": uid, "read": read, "ingested": ingested,
        "quarantined": quarantined, "reasons": reasons or {},
        "parts": {name: sha256_file(source_dir / name) for name in parts},
        "quarantine_parts": list(quarantine_parts),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })


def ingest(ws: Workspace, source: str, paths: Sequence[Path | str], *, workers: int = 1,
           options: dict[str, str] | None = None) -> IngestStats:
    """Ingest `paths` with the `source` adapter; resumable and idempotent per input unit.

    `options` go to the adapter's reader (e.g. {"split": "nano"} for GPIC).
    """
    if source not in ADAPTERS:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(ADAPTERS)}")
    start = time.perf_counter()
    units = list(dict.fromkeys(ADAPTERS[source].plan([Path(p) for p in paths])))  # raises InputFormatError
    if options:
        units = [replace(u, options=tuple(sorted(options.items()))) for u in units]
    if (check_options := ADAPTERS[source].check_options) is not None:
        for unit in units:
            check_options(unit)  # raises InputFormatError
    stats = IngestStats(source, inputs=len(units))
    source_dir = ws.source_dir(source)
    finished = done_records(ws, source)
    done = {r["unit"] for r in finished}
    tasks = []
    for unit in units:
        uid = unit_id(unit)
        if uid in done:
            stats.resumed += 1
            continue
        _remove_unfinished(ws, source, uid)
        tasks.append(UnitTask(unit, uid, str(source_dir), str(ws.quarantine_dir)))
    source_dir.mkdir(parents=True, exist_ok=True)
    ws.quarantine_dir.mkdir(parents=True, exist_ok=True)
    # Cross-input dedupe through the key index; not needed for a lone input into an empty source
    # (the next ingest that needs the index adds that input's keys when it syncs).
    with contextlib.ExitStack() as stack:
        index: KeyIndex | None = None
        if tasks and (finished or len(tasks) > 1):
            index = stack.enter_context(KeyIndex(source_dir))
            index.sync({r["unit"]: r["parts"] for r in finished})
        _run_tasks(ws, source, tasks, index, workers, stats)
    stats.seconds = time.perf_counter() - start
    return stats


def _run_tasks(ws: Workspace, source: str, tasks: list[UnitTask], index: KeyIndex | None, workers: int,
               stats: IngestStats) -> None:
    reasons: Counter = Counter()
    # Results are committed in plan order, so which input keeps a duplicated key is deterministic.
    pending: dict[str, UnitResult] = {}
    order = [t.uid for t in tasks]
    by_uid = {t.uid: t for t in tasks}
    with progress_bar() as bar:
        job = bar.add_task(f"ingest {source}", total=len(tasks), unit="file")
        results: Iterator[UnitResult]
        if workers <= 1:  # in-process: also count records as they are read (one file may be 100M lines)
            records = bar.add_task("records", total=None, unit="rec")
            results = (ingest_unit(t, lambda n: bar.advance(records, n)) for t in tasks)
        else:
            results = map_shards(ingest_unit, tasks, workers=workers)
        for result in results:
            pending[result.uid] = result
            while order and order[0] in pending:
                uid = order.pop(0)
                res = pending.pop(uid)
                _commit(ws, by_uid[uid], res, index)
                stats.read += res.read
                stats.ingested += res.ingested
                stats.quarantined += res.quarantined
                reasons.update(res.reasons)
                bar.update(job, advance=1, description=f"ingest {source} ({stats.read:,} records)")
    stats.reasons = dict(sorted(reasons.items()))
