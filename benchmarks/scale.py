"""Benchmark: wall time and peak RSS of every whole-catalog data stage at 10^6-10^7 rows (issue 21).

    python benchmarks/scale.py --rows 1000000 [--keep DIR] [--json OUT]
    python benchmarks/scale.py --rows 3000000     # and 10000000: the growth the issue asks to see

Generates an N-line YFCC100M-format file (`ingest_yfcc.write_yfcc`), then runs each stage in its
own subprocess, one after another, on one workspace, and reads that subprocess's peak RSS
(`os.wait4` -> ru_maxrss) and wall time:

    ingest                 catalog.ingest.ingest on the file
    subset-commercial      catalog.subset.make_subset(policy=commercial)
    subset-noncommercial   catalog.subset.make_subset(policy=noncommercial)
    fetch-dry-run          fetch.stage.dry_run on the noncommercial subset (plans it: plan.parquet; no HTTP)
    fetch-shard-rows       fetch.plan.shard_rows of one shard: what each rank / Ray worker reads
    dedup-indexes          writes synthetic shard indexes for the noncommercial rows (setup for the next)
    dedup                  fetch.dedup.reconcile_duplicates over those indexes (1% exact, 2% near duplicates)
    fetch-stats            fetch.stats.fetch_stats over those indexes (tars checked by size)
    attribution            cards' ATTRIBUTION.md + attribution.csv for every `ok` row, through the
                           `opencanvas.cards` functions as they are

Goal (issue 21): peak RSS <= 1.5 GB for every stage at 10M rows, time growing linearly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # ingest_yfcc, when run as a script

SUBSET = "noncommercial"
SHARD_SIZE = 1000
STAGES = ("ingest", "subset-commercial", "subset-noncommercial", "fetch-dry-run", "fetch-shard-rows",
          "dedup-indexes", "dedup", "fetch-stats", "attribution")


# ---- the stages (each runs in a fresh subprocess: `--stage NAME --ws DIR --data FILE`) ----------
def stage_ingest(ws: Any, data: Path) -> dict[str, Any]:
    from opencanvas.catalog.ingest import ingest

    stats = ingest(ws, "yfcc100m", [data])
    return {"ingested": stats.ingested, "quarantined": stats.quarantined}


def _subset(ws: Any, policy: str) -> dict[str, Any]:
    import pyarrow.parquet as pq

    from opencanvas.catalog.subset import make_subset

    return {"rows": pq.read_metadata(make_subset(ws, policy, policy)).num_rows}


def stage_fetch_dry_run(ws: Any, data: Path) -> dict[str, Any]:
    from opencanvas.fetch.stage import dry_run

    report = dry_run(ws, SUBSET, shard_size=SHARD_SIZE)
    return {k: report[k] for k in ("shards", "rows", "hosts")}


def stage_fetch_shard_rows(ws: Any, data: Path) -> dict[str, Any]:
    from opencanvas.fetch.plan import load_plan, shard_rows

    plan = load_plan(ws, SUBSET, SHARD_SIZE)
    shard = plan.shards[len(plan.shards) // 2]
    rows = shard_rows(ws, SUBSET, shard)
    return {"shard": shard.shard, "rows": len(rows), "in_catalog": sum(1 for _, r in rows if r)}


def stage_dedup_indexes(ws: Any, data: Path) -> dict[str, Any]:
    """Index rows as fetch writes them, for every planned shard: random pHashes, some copied (exact
    duplicates: same sha256) or with 1-2 bits flipped (near duplicates), each shard deduplicated within."""
    import pyarrow as pa

    from opencanvas.fetch.dedup import DuplicateIndex
    from opencanvas.fetch.plan import duckdb_connection, keys_digest
    from opencanvas.shards import INDEX_SCHEMA, shard_name, tar_facts
    from opencanvas.storage import atomic_write_parquet

    out = ws.images_dir(SUBSET)
    rng = random.Random(0)
    recent: list[tuple[str, int]] = []  # a window of earlier (sha256, pHash) to copy from
    written = 0
    layout = "80" * 27
    with duckdb_connection(out / ".bench.duckdb.tmp") as con:
        reader = con.sql(f"SELECT DISTINCT key FROM read_parquet('{ws.subset_path(SUBSET)}') ORDER BY key"
                         ).to_arrow_reader(SHARD_SIZE)
        number = 0
        for keys in _rebatch(reader, SHARD_SIZE):
            index, rows = DuplicateIndex(2), []
            for key in keys:
                draw = rng.random()
                if draw < 0.01 and recent:
                    sha, value = rng.choice(recent)
                elif draw < 0.03 and recent:
                    sha, value = f"{rng.getrandbits(256):064x}", rng.choice(recent)[1] ^ (1 << rng.randrange(64))
                else:
                    sha, value = f"{rng.getrandbits(256):064x}", rng.getrandbits(64)
                recent = (recent + [(sha, value)])[-5000:]
                phash = f"{value:016x}-{layout}"
                match = index.add(key, sha, phash)
                rows.append({"key": key, "status": "skipped" if match else "ok",
                             "reason": match.reason if match else "", "sha256": sha, "phash": phash,
                             "width": 512, "height": 512, "original_width": 512, "original_height": 512,
                             "bytes": 0 if match else 50_000, "fetched_at": None})
            tar = out / f"{shard_name(number)}.tar"
            with tarfile.open(tar, "w"):
                pass  # an empty tar: the pass rewrites the changed shards' tars, as it would real ones
            atomic_write_parquet(out / f"{shard_name(number)}.parquet",
                                 pa.Table.from_pylist(rows, schema=INDEX_SCHEMA),
                                 metadata={"keys_sha256": keys_digest(keys), **tar_facts(tar)})
            written += len(rows)
            number += 1
    return {"shards": number, "rows": written}


def _rebatch(reader: Any, size: int) -> Any:
    """Lists of exactly `size` keys (the last one shorter) from Arrow batches of any size."""
    pending: list[str] = []
    for batch in reader:
        pending.extend(batch.column(0).to_pylist())
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


def stage_dedup(ws: Any, data: Path) -> dict[str, Any]:
    from opencanvas.fetch.dedup import reconcile_duplicates
    from opencanvas.fetch.stats import final_counts

    dropped = reconcile_duplicates(ws.images_dir(SUBSET), 2, 10)
    counts, reasons = final_counts(ws.images_dir(SUBSET))
    return {"duplicates_across_shards": dropped, "counts": counts, "reasons": reasons}


def stage_fetch_stats(ws: Any, data: Path) -> dict[str, Any]:
    from opencanvas.fetch.stats import fetch_stats

    report = fetch_stats(ws, SUBSET, verify="size")
    return {"rows": report["rows"], "counts": report["counts"]}


def stage_attribution(ws: Any, data: Path) -> dict[str, Any]:
    """The cards' attribution for every fetched-ok image, through whichever API `opencanvas.cards` has."""
    from opencanvas.cards import attribution, records

    cards_dir = ws.root / "bench-cards"
    if hasattr(records, "UsedImages"):  # the streaming cards (issue 21)
        with records.UsedImages(ws, SUBSET, 0.0, cards_dir / ".spill") as images:
            return attribution.write_attribution(cards_dir, images)
    from opencanvas.catalog.query import catalog_rows

    keys = records.ok_keys(ws, SUBSET)
    return attribution.write_attribution(cards_dir, catalog_rows(ws, keys).to_pylist())


RUNNERS = {"ingest": stage_ingest, "subset-commercial": lambda ws, d: _subset(ws, "commercial"),
           "subset-noncommercial": lambda ws, d: _subset(ws, "noncommercial"),
           "fetch-dry-run": stage_fetch_dry_run, "fetch-shard-rows": stage_fetch_shard_rows,
           "dedup-indexes": stage_dedup_indexes, "dedup": stage_dedup, "fetch-stats": stage_fetch_stats,
           "attribution": stage_attribution}


# ---- the driver ------------------------------------------------------------------------------
def run_stage(name: str, ws_dir: Path, data: Path) -> dict[str, Any]:
    """Run one stage in a subprocess; its wall time, peak RSS (ru_maxrss of that child) and facts."""
    cmd = [sys.executable, __file__, "--stage", name, "--ws", str(ws_dir), "--data", str(data)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    facts: dict[str, Any] = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            facts = json.loads(line[len("RESULT "):])
    return {"stage": name, "seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "exit": proc.returncode, **facts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="lines in the generated YFCC file")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of the stages, in order")
    parser.add_argument("--keep", type=Path, help="keep the workspace and file here (default: a temp dir, removed)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    parser.add_argument("--ws", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        from opencanvas.workspace import Workspace

        facts = RUNNERS[args.stage](Workspace.open(args.ws), args.data)
        print("RESULT " + json.dumps(facts, default=str), flush=True)
        return

    from ingest_yfcc import write_yfcc

    base = args.keep or Path(tempfile.mkdtemp(prefix="oc-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    data = base / f"yfcc-{args.rows}.tsv"
    try:
        if not data.exists():
            start = time.perf_counter()
            write_yfcc(data, args.rows)
            print(f"generated {args.rows:,} lines in {time.perf_counter() - start:.1f} s: {data}", flush=True)
        ws_dir = base / "ws"
        stages = args.stages.split(",")
        if stages[0] == "ingest":  # a fresh workspace; later stages alone reuse a kept one (--keep)
            shutil.rmtree(ws_dir, ignore_errors=True)
        results = []
        for name in stages:
            result = run_stage(name, ws_dir, data)
            results.append(result)
            print(json.dumps(result, default=str), flush=True)
            if result["exit"] != 0:
                break
        summary = {"rows": args.rows, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 1), "stages": results}
        print("\n| stage | wall s | CPU s | peak RSS MB | facts |\n|---|---|---|---|---|")
        for r in results:
            facts = {k: v for k, v in r.items() if k not in ("stage", "seconds", "peak_rss_mb", "cpu_s", "exit")}
            print(f"| {r['stage']} | {r['seconds']} | {r['cpu_s']} | {r['peak_rss_mb']} | {json.dumps(facts)} |")
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
