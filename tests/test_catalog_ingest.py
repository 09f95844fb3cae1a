"""Ingest bookkeeping: idempotent re-runs, per-file resume (also after SIGKILL), dedupe, nothing lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from opencanvas.catalog.ingest import UnitTask, done_records, ingest, ingest_unit, unit_id
from opencanvas.catalog.key_index import INDEX_NAME, KeyIndex
from opencanvas.catalog.query import catalog_rows, query
from opencanvas.catalog.sources import ADAPTERS
from opencanvas.catalog.stats import catalog_stats
from opencanvas.workspace import Workspace
from tests.test_catalog_sources import openverse_record, write_jsonl, write_yfcc, yfcc_fields, yfcc_mixed


def quarantine_rows(ws: Workspace) -> list[dict]:
    return query(ws, "SELECT * FROM {quarantine} ORDER BY input_file, record_no, raw, reason, detail").to_pylist()


def snapshot(ws: Workspace) -> tuple[list[dict], list[dict]]:
    return catalog_rows(ws).to_pylist(), quarantine_rows(ws)


@pytest.fixture
def yfcc_files(tmp_path: Path) -> list[Path]:
    return [write_yfcc(tmp_path / "a.tsv", yfcc_mixed(0)), write_yfcc(tmp_path / "b.tsv.bz2", yfcc_mixed(100))]


def test_rerun_is_idempotent(ws: Workspace, yfcc_files: list[Path]) -> None:
    first = ingest(ws, "yfcc100m", yfcc_files)
    before = snapshot(ws)
    again = ingest(ws, "yfcc100m", yfcc_files)
    assert (again.resumed, again.read) == (2, 0)
    assert snapshot(ws) == before
    assert first.read == 16 and len(before[0]) == 6
    keys = [r["key"] for r in before[0]]
    assert len(keys) == len(set(keys))


def test_resume_redoes_only_unfinished_files(ws: Workspace, tmp_path: Path, yfcc_files: list[Path]) -> None:
    clean = Workspace.open(tmp_path / "clean")
    ingest(clean, "yfcc100m", yfcc_files)
    # A crash after file a finished and while b was half written: b's parts exist, its done-record not.
    ingest(ws, "yfcc100m", yfcc_files[:1])
    b = ADAPTERS["yfcc100m"].plan([yfcc_files[1]])[0]
    ingest_unit(UnitTask(b, unit_id(b), str(ws.source_dir("yfcc100m")), str(ws.quarantine_dir)))
    assert len(done_records(ws, "yfcc100m")) == 1
    assert catalog_rows(ws).num_rows == 3  # readers ignore parts without a done-record
    stats = ingest(ws, "yfcc100m", yfcc_files)
    assert (stats.resumed, stats.read) == (1, 8)
    assert snapshot(ws) == snapshot(clean)


def test_duplicate_keys_across_and_within_files(ws: Workspace, tmp_path: Path) -> None:
    t = "\t".join
    a = write_yfcc(tmp_path / "a.tsv", [t(yfcc_fields(1)), t(yfcc_fields(2)), t(yfcc_fields(2))])
    b = write_yfcc(tmp_path / "b.tsv", [t(yfcc_fields(2)), t(yfcc_fields(3))])
    stats = ingest(ws, "yfcc100m", [a, b])
    assert (stats.read, stats.ingested, stats.quarantined) == (5, 3, 2)
    assert stats.reasons == {"duplicate": 2}
    assert [r["key"] for r in catalog_rows(ws).to_pylist()] == [f"yfcc100m:{5_000_000 + i}" for i in (1, 2, 3)]
    # A later ingest of an overlapping file adds only what is new.
    c = write_yfcc(tmp_path / "c.tsv", [t(yfcc_fields(3)), t(yfcc_fields(4))])
    later = ingest(ws, "yfcc100m", [c])
    assert (later.ingested, later.quarantined) == (1, 1)
    s = catalog_stats(ws)["sources"]["yfcc100m"]
    assert (s["read"], s["ingested"], s["quarantined"], s["balanced"]) == (7, 4, 3, True)


def test_parallel_workers_match_serial(tmp_path: Path) -> None:
    files = [write_jsonl(tmp_path / f"ov{i}.jsonl", [openverse_record(j % 7 + 10 * (i % 2)) for j in range(20)])
             for i in range(3)]
    serial, parallel = Workspace.open(tmp_path / "s"), Workspace.open(tmp_path / "p")
    ingest(serial, "openverse", files)
    ingest(parallel, "openverse", files, workers=2)
    assert snapshot(serial) == snapshot(parallel)
    assert catalog_stats(parallel)["total"] == {"read": 60, "ingested": 14, "quarantined": 46, "balanced": True}


def test_unknown_source(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown source 'flickr'.*openclipart"):
        ingest(ws, "flickr", [tmp_path])


@pytest.mark.slow
def test_sigkill_then_resume_matches_clean_run(tmp_path: Path) -> None:
    files = [write_jsonl(tmp_path / f"ov{i}.jsonl", [openverse_record(i * 100_000 + j) for j in range(3000)])
             for i in range(6)]
    clean = Workspace.open(tmp_path / "clean")
    ingest(clean, "openverse", files)
    killed = Workspace.open(tmp_path / "killed")
    cmd = [sys.executable, "-m", "opencanvas", "catalog", "ingest", "openverse", *map(str, files),
           "-w", str(killed.root)]
    env = {**os.environ, "OPENCANVAS_PROGRESS": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not done_records(killed, "openverse") and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(done_records(killed, "openverse"))
    assert finished < len(files), "the ingest finished before it could be killed; make the files bigger"
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{finished} already done" in result.stdout.replace("\n", " ")
    assert snapshot(killed) == snapshot(clean)
    assert len(list(killed.source_dir("openverse").glob("part-*.parquet"))) == len(files)
    assert not list(killed.catalog_dir.rglob("*.tmp"))


def test_parts_and_done_records_on_disk(ws: Workspace, yfcc_files: list[Path]) -> None:
    ingest(ws, "yfcc100m", yfcc_files)
    records = done_records(ws, "yfcc100m")
    assert sorted(r["input"] for r in records) == sorted(str(f) for f in yfcc_files)
    for r in records:
        assert r["read"] == r["ingested"] + r["quarantined"] == 8
        for name in r["parts"]:
            assert pq.read_metadata(ws.source_dir("yfcc100m") / name).num_rows == r["ingested"]
        assert sum(pq.read_metadata(ws.quarantine_dir / n).num_rows for n in r["quarantine_parts"]) == r["quarantined"]


def test_duplicate_across_batches_of_one_file(ws: Workspace, tmp_path: Path, monkeypatch) -> None:
    import opencanvas.catalog.records as records

    monkeypatch.setattr(records, "BATCH_ROWS", 2)  # the openverse reader flushes every 2 records
    lines = [openverse_record(i) for i in (1, 2, 3, 1, 4, 2)]
    stats = ingest(ws, "openverse", [write_jsonl(tmp_path / "ov.jsonl", lines)])
    assert (stats.read, stats.ingested, stats.reasons) == (6, 4, {"duplicate": 2})


def test_yfcc_in_many_chunks_and_parts(ws: Workspace, tmp_path: Path, monkeypatch) -> None:
    """Small chunks and parts: line numbers of short lines count across chunks, a key repeated
    in a later part is quarantined (the first one stays), and nothing is lost or doubled."""
    import opencanvas.catalog.ingest as ingest_module
    import opencanvas.catalog.sources.yfcc100m as yfcc

    monkeypatch.setattr(yfcc, "BLOCK_BYTES", 2_000)  # ~3 lines per chunk
    monkeypatch.setattr(ingest_module, "PART_ROWS", 7)
    monkeypatch.setattr(ingest_module, "ROW_GROUP_ROWS", 2)
    t = "\t".join
    lines = [t(yfcc_fields(i)) for i in range(40)]
    lines[11] = t(yfcc_fields(11)[:5])   # 12th line: 5 fields
    lines[30] = t(yfcc_fields(30)[:24])  # 31st line: 24 fields
    lines[35] = t(yfcc_fields(3))        # repeats line 4's key, many parts later
    path = tmp_path / "yfcc100m_dataset"
    path.write_bytes(("\n".join(lines)).encode())  # no newline after the last line
    stats = ingest(ws, "yfcc100m", [path])
    assert (stats.read, stats.ingested, stats.quarantined) == (40, 37, 3)
    assert stats.reasons == {"duplicate": 1, "malformed": 2}
    keys = [r["key"] for r in catalog_rows(ws).to_pylist()]
    assert len(keys) == len(set(keys)) == 37 and "yfcc100m:5000039" in keys
    short = {q["record_no"]: q["raw"] for q in quarantine_rows(ws) if q["reason"] == "malformed"}
    assert short == {12: lines[11], 31: lines[30]}
    record = done_records(ws, "yfcc100m")[0]
    assert len(record["parts"]) >= 4 and record["reasons"] == stats.reasons
    assert not [p.name for p in ws.source_dir("yfcc100m").iterdir() if p.name.endswith(".tmp")]


def test_failed_read_leaves_no_part_or_temp_file(ws: Workspace, tmp_path: Path, monkeypatch) -> None:
    import opencanvas.catalog.ingest as ingest_module
    import opencanvas.catalog.sources.yfcc100m as yfcc

    monkeypatch.setattr(yfcc, "BLOCK_BYTES", 2_000)
    monkeypatch.setattr(ingest_module, "PART_ROWS", 10)
    monkeypatch.setattr(ingest_module, "ROW_GROUP_ROWS", 2)
    real_judge, calls = yfcc._judge, []

    def failing_judge(batch, path):
        calls.append(1)
        if len(calls) == 4:  # ~18 rows read by then: one part done, the next one open
            raise OSError("disk went away")
        return real_judge(batch, path)

    monkeypatch.setattr(yfcc, "_judge", failing_judge)
    path = write_yfcc(tmp_path / "yfcc100m_dataset", ["\t".join(yfcc_fields(i)) for i in range(60)])
    with pytest.raises(Exception, match="disk went away"):
        ingest(ws, "yfcc100m", [path])
    leftovers = [p.name for d in (ws.source_dir("yfcc100m"), ws.quarantine_dir) if d.is_dir() for p in d.iterdir()]
    assert not [n for n in leftovers if n.endswith(".tmp")]
    assert done_records(ws, "yfcc100m") == []
    monkeypatch.setattr(yfcc, "_judge", real_judge)
    assert ingest(ws, "yfcc100m", [path]).ingested == 60  # the same command then finishes it


def test_unfinished_parts_of_other_inputs_do_not_count(ws: Workspace, tmp_path: Path) -> None:
    t = "\t".join
    x = write_yfcc(tmp_path / "x.tsv", [t(yfcc_fields(1))])
    y = write_yfcc(tmp_path / "y.tsv", [t(yfcc_fields(1)), t(yfcc_fields(2))])
    unit = ADAPTERS["yfcc100m"].plan([x])[0]  # x was being ingested when the process died
    ingest_unit(UnitTask(unit, unit_id(unit), str(ws.source_dir("yfcc100m")), str(ws.quarantine_dir)))
    stats = ingest(ws, "yfcc100m", [y])
    assert (stats.ingested, stats.quarantined) == (2, 0)
    assert catalog_rows(ws).num_rows == 2


def test_temp_files_of_a_killed_run_are_removed(ws: Workspace, tmp_path: Path) -> None:
    """A writer killed mid-part leaves `.part-<unit>-NNNNN.parquet.*.tmp`; the next run removes it."""
    path = write_yfcc(tmp_path / "yfcc100m_dataset", ["\t".join(yfcc_fields(i)) for i in range(3)])
    uid = unit_id(ADAPTERS["yfcc100m"].plan([path])[0])
    source_dir = ws.source_dir("yfcc100m")
    source_dir.mkdir(parents=True)
    ws.quarantine_dir.mkdir(parents=True)
    leftovers = [source_dir / f".part-{uid}-00000.parquet.x1y2.tmp",
                 ws.quarantine_dir / f".yfcc100m-{uid}-00000.parquet.z3.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a part")
    (source_dir / f".part-{uid}-00000.duckdb.tmp").mkdir()  # DuckDB's spill folder
    assert ingest(ws, "yfcc100m", [path]).ingested == 3
    assert not [p.name for d in (source_dir, ws.quarantine_dir) for p in d.iterdir() if p.name.endswith(".tmp")]


# ---- issue 21: the cross-input dedupe asks a persistent key index, not a Python set ----------


def _index_keys(ws: Workspace, source: str) -> list[str]:
    with KeyIndex(ws.source_dir(source)) as index:
        return list(index.keys())


def _overlapping_files(tmp_path: Path) -> list[Path]:
    t = "\t".join
    return [write_yfcc(tmp_path / f"{name}.tsv", [t(yfcc_fields(i)) for i in ids])
            for name, ids in (("a", [1, 2, 2]), ("b", [2, 3]), ("c", [3, 4, 1]), ("d", [5]))]


def test_key_index_holds_exactly_the_catalog_keys(ws: Workspace, tmp_path: Path) -> None:
    files = _overlapping_files(tmp_path)
    stats = ingest(ws, "yfcc100m", files)
    assert (stats.read, stats.ingested, stats.reasons) == (9, 5, {"duplicate": 4})
    keys = sorted(catalog_rows(ws)["key"].to_pylist())
    assert keys == [f"yfcc100m:{5_000_000 + i}" for i in range(1, 6)]
    assert _index_keys(ws, "yfcc100m") == keys
    # the first input in plan order keeps a key; the rest are quarantined naming the reason
    dups = query(ws, "SELECT input_file, raw FROM {quarantine} WHERE detail LIKE '%another input%'").to_pylist()
    assert sorted(Path(d["input_file"]).name for d in dups) == ["b.tsv", "c.tsv", "c.tsv"]
    raw = [json.loads(d["raw"]) for d in dups]  # the whole row, as JSON
    assert sorted(r["key"] for r in raw) == ["yfcc100m:5000001", "yfcc100m:5000002", "yfcc100m:5000003"]
    assert all(r["license_id"] == "cc-by-sa" and r["tags"] == ["barn", "new york", "a,b"] for r in raw)


def test_key_index_is_rebuilt_from_done_records(ws: Workspace, tmp_path: Path) -> None:
    """A lone input writes no index; a deleted index is rebuilt; a unit indexed but never finished is dropped."""
    a, b, c, d = _overlapping_files(tmp_path)
    ingest(ws, "yfcc100m", [a])
    source_dir = ws.source_dir("yfcc100m")
    assert not (source_dir / INDEX_NAME).exists()
    later = ingest(ws, "yfcc100m", [b])  # syncs a's keys first
    assert later.reasons == {"duplicate": 1}
    (source_dir / INDEX_NAME).unlink()
    assert ingest(ws, "yfcc100m", [c]).reasons == {"duplicate": 2}
    # a unit indexed by a run killed before its done-record: the next run forgets it, then ingests it
    unit = ADAPTERS["yfcc100m"].plan([d])[0]
    task = UnitTask(unit, unit_id(unit), str(source_dir), str(ws.quarantine_dir))
    result = ingest_unit(task)
    with KeyIndex(source_dir) as index:
        index.add(task.uid, result.parts)
    assert ingest(ws, "yfcc100m", [d]).reasons == {}
    clean = Workspace.open(tmp_path / "clean")
    ingest(clean, "yfcc100m", [a, b, c, d])
    assert snapshot(ws)[0] == snapshot(clean)[0]
    assert _index_keys(ws, "yfcc100m") == sorted(catalog_rows(ws)["key"].to_pylist())


def test_commit_killed_after_indexing_resumes_cleanly(ws: Workspace, tmp_path: Path, monkeypatch) -> None:
    import opencanvas.catalog.ingest as ingest_module

    files = _overlapping_files(tmp_path)
    real = ingest_module.write_done_record
    calls = []

    def dies_on_the_third(*args, **kwargs) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed between indexing unit c and writing its done-record
        real(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "write_done_record", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        ingest(ws, "yfcc100m", files)
    monkeypatch.setattr(ingest_module, "write_done_record", real)
    stats = ingest(ws, "yfcc100m", files)
    assert stats.resumed == 2
    clean = Workspace.open(tmp_path / "clean")
    ingest(clean, "yfcc100m", files)
    assert snapshot(ws) == snapshot(clean)
    assert _index_keys(ws, "yfcc100m") == sorted(catalog_rows(ws)["key"].to_pylist())
