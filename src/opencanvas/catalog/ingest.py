"""`catalog ingest`: run a source adapter over input files into catalog parts.

Unit of work = one input file (a folder for folder-shaped sources). A worker
turns a unit into `catalog/<source>/part-<unit>-NNNNN.parquet` plus
`catalog/quarantine/<source>-<unit>-NNNNN.parquet`; the parent then removes
keys already ingested from other units (quarantined as `duplicate`) and writes
the unit's done-record `catalog/<source>/_done/<unit>.json` last, atomically.
A killed ingest therefore resumes per input file with the same command: parts
of unfinished units are deleted and redone, finished units are skipped, and
every record read ends up exactly once in the catalog or in quarantine.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opencanvas.catalog.records import SourceBatch
from opencanvas.catalog.schema import CATALOG_SCHEMA, QUARANTINE_SCHEMA
from opencanvas.catalog.sources import ADAPTERS, InputUnit
from opencanvas.engines import map_shards
from opencanvas.progress import progress_bar
from opencanvas.storage import atomic_write_json, atomic_write_parquet, sha256_file
from opencanvas.workspace import Workspace

PART_ROWS = 250_000  # rows per catalog part: ~10-20 MB of Parquet, small enough to overlap writes
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
    return hashlib.sha256(f"{unit.source}\0{unit.path}".encode()).hexdigest()[:16]


def _duplicates_to_quarantine(rows: pa.Table, dup: pa.Array, input_file: str, detail: str) -> pa.Table:
    dups = rows.filter(dup)
    return pa.Table.from_pylist([
        {"source": r["source"], "input_file": input_file, "record_no": None,
         "raw": json.dumps(r, ensure_ascii=False, default=str), "reason": "duplicate", "detail": detail}
        for r in dups.to_pylist()], schema=QUARANTINE_SCHEMA)


class _PartWriter:
    """Buffers tables and writes numbered Parquet parts of about PART_ROWS rows.

    Writes run on one background thread (Arrow releases the GIL), so a big input
    keeps being parsed while the previous part is compressed and written.
    """

    def __init__(self, directory: Path, prefix: str, schema: pa.Schema, writer: ThreadPoolExecutor) -> None:
        self.directory, self.prefix, self.schema, self.writer = directory, prefix, schema, writer
        self.buffer: list[pa.Table] = []
        self.rows = 0
        self.names: list[str] = []
        self.pending: list[Future[None]] = []

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.buffer.append(table)
            self.rows += table.num_rows
        if self.rows >= PART_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            name = f"{self.prefix}-{len(self.names):05d}.parquet"
            table = pa.concat_tables(self.buffer).cast(self.schema)
            self.pending.append(self.writer.submit(atomic_write_parquet, self.directory / name, table))
            self.names.append(name)
            self.buffer, self.rows = [], 0
        done = [f for f in self.pending if f.done()]
        for f in done:
            f.result()  # re-raise a failed write here
            self.pending.remove(f)

    def close(self) -> list[str]:
        self.flush()
        for f in self.pending:
            f.result()
        return self.names


def ingest_unit(task: UnitTask, on_batch: Callable[[int], None] | None = None) -> UnitResult:
    """Read one unit with its adapter and write its parts (no done-record: the parent writes it).

    `on_batch(records)` is called after each batch (in-process runs use it for progress).
    """
    unit, result = task.unit, UnitResult(task.uid)
    with ThreadPoolExecutor(1) as writer:
        catalog = _PartWriter(Path(task.source_dir), f"part-{task.uid}", CATALOG_SCHEMA, writer)
        quarantine = _PartWriter(Path(task.quarantine_dir), f"{unit.source}-{task.uid}", QUARANTINE_SCHEMA, writer)
        _read_unit(unit, catalog, quarantine, result, on_batch)
        result.parts, result.quarantine_parts = catalog.close(), quarantine.close()
    return result


def _read_unit(unit: InputUnit, catalog: _PartWriter, quarantine: _PartWriter, result: UnitResult,
               on_batch: Callable[[int], None] | None) -> None:
    seen: set[str] = set()
    batch: SourceBatch
    for batch in ADAPTERS[unit.source].read(unit):
        rows, rejects = batch.catalog, batch.quarantine
        keys = rows["key"].to_pylist()
        batch_keys = set(keys)
        if len(batch_keys) == len(keys) and seen.isdisjoint(batch_keys):
            seen |= batch_keys
        else:  # rare: a key repeats inside this input
            dup = []
            for k in keys:
                dup.append(k in seen)
                seen.add(k)
            dup_mask = pa.array(dup, pa.bool_())
            rejects = pa.concat_tables([rejects, _duplicates_to_quarantine(
                rows, dup_mask, unit.path, "key repeated within this input file")])
            rows = rows.filter(pc.invert(dup_mask))
        if rows.num_rows + rejects.num_rows != batch.read:
            raise RuntimeError(f"{unit.source} adapter returned {rows.num_rows} rows + {rejects.num_rows} rejects "
                               f"for {batch.read} records read from {unit.path}: an adapter bug")
        catalog.add(rows)
        quarantine.add(rejects)
        result.read += batch.read
        result.ingested += rows.num_rows
        result.quarantined += rejects.num_rows
        result.reasons.update(rejects["reason"].to_pylist())
        if on_batch is not None:
            on_batch(batch.read)


def _done_path(ws: Workspace, source: str, uid: str) -> Path:
    return ws.source_dir(source) / DONE_DIR / f"{uid}.json"


def done_records(ws: Workspace, source: str) -> list[dict]:
    """The done-records of a source's finished input units."""
    folder = ws.source_dir(source) / DONE_DIR
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _remove_unfinished(ws: Workspace, source: str, uid: str) -> None:
    stale = [*ws.source_dir(source).glob(f"part-{uid}-*.parquet"), *ws.quarantine_dir.glob(f"{source}-{uid}-*.parquet")]
    for p in stale:
        p.unlink()


def _commit(ws: Workspace, task: UnitTask, result: UnitResult, seen: set[str] | None) -> None:
    """Drop keys other units already hold, then write the done-record (last, atomically)."""
    source_dir = ws.source_dir(task.unit.source)
    if seen is not None:
        dup_tables = []
        for name in result.parts:
            keys = pq.read_table(source_dir / name, columns=["key"])["key"].to_pylist()
            dup_mask = pa.array([k in seen for k in keys])
            if pc.any(dup_mask).as_py():  # rare: only then is the whole part read and rewritten
                rows = pq.read_table(source_dir / name)
                dup_tables.append(_duplicates_to_quarantine(rows, dup_mask, task.unit.path,
                                                            "key already ingested from another input"))
                atomic_write_parquet(source_dir / name, rows.filter(pc.invert(dup_mask)))
            seen.update(keys)
        if dup_tables:
            dups = pa.concat_tables(dup_tables)
            name = f"{task.unit.source}-{task.uid}-duplicates.parquet"
            atomic_write_parquet(ws.quarantine_dir / name, dups)
            result.quarantine_parts.append(name)
            result.ingested -= dups.num_rows
            result.quarantined += dups.num_rows
            result.reasons["duplicate"] += dups.num_rows
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
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def ingest(ws: Workspace, source: str, paths: Sequence[Path | str], *, workers: int = 1) -> IngestStats:
    """Ingest `paths` with the `source` adapter; resumable and idempotent per input unit."""
    if source not in ADAPTERS:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(ADAPTERS)}")
    start = time.perf_counter()
    units = list(dict.fromkeys(ADAPTERS[source].plan([Path(p) for p in paths])))  # raises InputFormatError
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
    # Keys of finished parts, for cross-input dedupe; not needed for a lone input into an empty source.
    done_parts = [source_dir / name for r in finished for name in r["parts"]]
    seen: set[str] | None = None
    if done_parts or len(tasks) > 1:
        seen = set()
        for p in done_parts:
            seen.update(pq.read_table(p, columns=["key"])["key"].to_pylist())
    reasons: Counter = Counter()
    # Results are committed in plan order, so which input keeps a duplicated key is deterministic.
    pending: dict[str, UnitResult] = {}
    order = [t.uid for t in tasks]
    by_uid = {t.uid: t for t in tasks}
    with progress_bar() as bar:
        job = bar.add_task(f"ingest {source}", total=len(tasks), unit="file")
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
                _commit(ws, by_uid[uid], res, seen)
                stats.read += res.read
                stats.ingested += res.ingested
                stats.quarantined += res.quarantined
                reasons.update(res.reasons)
                bar.update(job, advance=1, description=f"ingest {source} ({stats.read:,} records)")
    stats.reasons = dict(sorted(reasons.items()))
    stats.seconds = time.perf_counter() - start
    return stats
