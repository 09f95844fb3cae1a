"""The fetch stage: a subset's keys become WebDataset image shards with a Parquet index each.

Plan (`fetch.plan`): the subset's keys, sorted, cut into `shard_size` chunks by DuckDB and
kept in images/<subset>/plan.parquet. The plan depends only on the subset and the shard
size, so a resumed run (or another rank) sees the same shards, and each shard reads only
its own rows. A shard is finished when its index exists (written last, atomically) and its
tar still has the size and sha256 the index recorded; finished shards are skipped, and an
unfinished or damaged one is redone from scratch, so every key ends up in exactly one index row.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from opencanvas.engines import Engine, map_shards, shard_share
from opencanvas.fetch.decode import DEFAULT_MAX_DECODE_PIXELS, DEFAULT_MAX_PIXELS, DecodeError
from opencanvas.fetch.dedup import DEFAULT_DISTANCE, DuplicateIndex, reconcile_duplicates
from opencanvas.fetch.http import FetchFailure, HttpConfig, PoliteClient, redact_credentials
from opencanvas.fetch.placeholders import PLACEHOLDER_COPIES, placeholder_reason
from opencanvas.fetch.plan import PLAN_FILE, ShardPlan, dry_run_counts, keys_digest, load_plan, shard_rows
from opencanvas.fetch.process import Processed, Unusable, process_image
from opencanvas.fetch.stats import final_counts, reason_kind
from opencanvas.progress import progress_bar
from opencanvas.shards import INDEX_SCHEMA, ShardWriter, index_paths, shard_name, tar_facts, tar_mismatch
from opencanvas.storage import atomic_write_parquet, parquet_metadata, sha256_bytes
from opencanvas.workspace import Workspace


@dataclass(frozen=True)
class FetchOptions:
    max_side: int = 1024                 # 0 keeps the native resolution (as the paper did)
    min_side: int = 256
    max_pixels: int = DEFAULT_MAX_PIXELS                # larger images are downscaled while decoding ...
    max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS  # ... up to this; beyond it they fail (bombs)
    near_dup_distance: int = DEFAULT_DISTANCE  # pHash Hamming bits; < 0 = exact duplicates only
    placeholder_copies: int = PLACEHOLDER_COPIES  # the same bytes behind this many keys: a placeholder; 0 = off
    threads: int = 16                    # concurrent fetches inside one shard
    verify: str = "sha256"               # finished shards' tars checked against their index: "sha256" or "size"
    http: HttpConfig = field(default_factory=HttpConfig)


@dataclass(frozen=True)
class ShardTask:
    root: str
    subset: str
    plan: ShardPlan          # key range and digest; the worker reads the rows itself
    options: FetchOptions

    @property
    def shard(self) -> int:
        return self.plan.shard


@dataclass
class FetchStats:
    subset: str
    shards: int = 0                 # in the whole plan
    shards_done_before: int = 0     # finished by an earlier run (skipped now)
    shards_fetched: int = 0         # by this run (this rank)
    images: int = 0                 # rows written by this run
    counts: dict[str, int] = field(default_factory=dict)   # status -> rows written by this run
    bytes: int = 0
    seconds: float = 0.0
    complete: bool = False          # every shard of the plan has its index
    duplicates_across_shards: int = 0
    final_counts: dict[str, int] = field(default_factory=dict)  # status -> rows over all shards, after dedup
    reasons: dict[str, int] = field(default_factory=dict)  # "status: kind" -> rows (all shards once complete)
    notes: list[str] = field(default_factory=list)   # re-planned, damaged shards fetched again, ...

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 2)}


def fetch(ws: Workspace, subset: str, shard_size: int = 1000, workers: int = 1, max_side: int | None = None,
          min_side: int | None = None, *, options: FetchOptions | None = None, rank: int = 0, world: int = 1,
          engine: Engine = "local", progress: bool | None = None) -> FetchStats:
    """Fetch a subset into `images/<subset>/`; safe to re-run after any interruption.

    `max_side`/`min_side` override `options` (defaults 1024 and 256; `max_side=0` keeps native size).
    """
    opts = options or FetchOptions()
    opts = replace(opts, max_side=opts.max_side if max_side is None else max_side,
                   min_side=opts.min_side if min_side is None else min_side)
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    if opts.verify not in ("sha256", "size"):
        raise ValueError(f"--verify must be 'sha256' or 'size', got {opts.verify!r}")
    if opts.max_side and opts.max_side < opts.min_side:
        raise ValueError(f"--max-side {opts.max_side} < --min-side {opts.min_side}: every image would be "
                         "too small after resizing; raise --max-side or lower --min-side")
    start = time.perf_counter()
    plan = load_plan(ws, subset, shard_size)
    out_dir = ws.images_dir(subset)
    _check_existing(out_dir, plan.shards)
    notes = [plan.note] if plan.note else []
    tasks = [ShardTask(str(ws.root), subset, shard, opts) for shard in plan.shards]
    mine = shard_share(tasks, rank, world)
    todo = [t for t in mine if not _finished(out_dir, t.shard, notes, opts.verify == "sha256")]
    stats = FetchStats(subset, shards=len(plan.shards), shards_done_before=len(mine) - len(todo), notes=notes)
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    with progress_bar(disable=None if progress is None else not progress) as bar:
        task_id = bar.add_task(f"fetch {subset}", total=sum(t.plan.rows for t in todo), unit="img")
        in_process = engine == "local" and workers <= 1
        results: Iterator[dict[str, Any]]
        if in_process:  # the bar can move per image
            results = (fetch_shard(t, on_image=lambda: bar.advance(task_id, 1)) for t in todo)
        else:
            results = map_shards(fetch_shard, todo, workers=workers, engine=engine)
        for result in results:
            stats.shards_fetched += 1
            stats.images += result["rows"]
            stats.bytes += result["bytes"]
            counts.update(result["counts"])
            reasons.update(result["reasons"])
            if not in_process:
                bar.advance(task_id, result["rows"])
    stats.counts, stats.reasons = dict(counts), dict(reasons.most_common())
    stats.complete = all(_index_path(out_dir, s.shard).exists() for s in plan.shards)
    if stats.complete:
        # Needs every shard, so whichever rank finds the job complete does it; two ranks doing it
        # at once is safe: the decisions are deterministic and every write is an atomic replace.
        stats.duplicates_across_shards = reconcile_duplicates(out_dir, opts.near_dup_distance,
                                                              opts.placeholder_copies)
        stats.final_counts, stats.reasons = final_counts(out_dir)
    stats.seconds = time.perf_counter() - start
    return stats


def dry_run(ws: Workspace, subset: str, shard_size: int = 1000, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Plan (writing plan.parquet) and count what `fetch` would do: shards, rows, rows per host. No HTTP."""
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    plan = load_plan(ws, subset, shard_size)
    out_dir = ws.images_dir(subset)
    mine = shard_share(plan.shards, rank, world)
    done = [s for s in mine if _index_path(out_dir, s.shard).exists()]
    report: dict[str, Any] = {"subset": subset, "shards": len(plan.shards), "shard_size": shard_size,
                              "plan": ws.relative(out_dir / PLAN_FILE)}
    if plan.note:
        report["note"] = plan.note
    if world > 1:
        report["rank/world"] = f"{rank}/{world}"
        report["shards_this_rank"] = len(mine)
    report["shards_finished"] = len(done)
    report["rows_to_fetch"] = sum(s.rows for s in mine) - sum(s.rows for s in done)
    report.update(dry_run_counts(ws, subset))
    return report


def _index_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"{shard_name(shard)}.parquet"


def _finished(out_dir: Path, shard: int, notes: list[str], sha256: bool = True) -> bool:
    """True when the shard's index exists and its tar still matches it; a damaged shard is removed to redo."""
    index = _index_path(out_dir, shard)
    if not index.exists():
        return False
    problem = tar_mismatch(index, sha256)
    if problem is None:
        return True
    notes.append(f"{problem}: fetching {shard_name(shard)} again")
    index.unlink(missing_ok=True)  # the index goes first: without it the shard counts as unfinished
    index.with_suffix(".tar").unlink(missing_ok=True)
    return False


def _check_existing(out_dir: Path, plan: list[ShardPlan]) -> None:
    """Finished shards must be the plan's shards, else resuming would drop or duplicate keys."""
    for index in index_paths(out_dir):
        number = int(index.stem.split("-")[1])
        recorded = parquet_metadata(index).get("keys_sha256")
        if number >= len(plan) or recorded != plan[number].keys_sha256:
            raise ValueError(
                f"{index} was written for a different subset or --shard-size than this run's; "
                f"re-run with the original --shard-size, or delete {out_dir} to fetch again")


# ---- one shard (runs in a worker process or a Ray task) --------------------
_CLIENTS: dict[HttpConfig, PoliteClient] = {}


def _client(config: HttpConfig) -> PoliteClient:
    """One client per process and config, so robots.txt, gates and connections are shared by shards."""
    if config not in _CLIENTS:
        _CLIENTS[config] = PoliteClient(config)
    return _CLIENTS[config]


@dataclass
class Outcome:
    key: str
    row: dict[str, Any] | None
    status: str
    reason: str = ""
    image: Processed | None = None
    original_size: tuple[int, int] | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # where and how the bytes came


def fetch_shard(task: ShardTask, on_image: Callable[[], None] | None = None) -> dict[str, Any]:
    """Fetch one shard's keys and write its tar, then its index (the done-marker)."""
    out_dir = Workspace(Path(task.root)).images_dir(task.subset)
    name = shard_name(task.shard)
    tar_path, index_path = out_dir / f"{name}.tar", out_dir / f"{name}.parquet"
    if index_path.exists():
        return {"shard": task.shard, "rows": 0, "bytes": 0, "counts": {}, "reasons": {}}
    for stale in out_dir.glob(f".{name}.*tmp"):  # leftovers of a killed attempt at this shard
        stale.unlink(missing_ok=True)
    rows = shard_rows(Workspace(Path(task.root)), task.subset, task.plan)
    client = _client(task.options.http)
    fetch_one = _fetcher(Path(task.root), client, task.options)
    dups = DuplicateIndex(task.options.near_dup_distance)
    writer = ShardWriter(tar_path)
    index: list[dict[str, Any]] = []
    try:
        for outcome in _ordered_map(fetch_one, rows, task.options.threads):
            index.append(_record(outcome, dups, writer, client.user_agent))
            if on_image:
                on_image()
        writer.close()
    except BaseException:
        writer.abort()
        raise
    table = pa.Table.from_pylist(index, schema=INDEX_SCHEMA)
    atomic_write_parquet(index_path, table, metadata={
        "keys_sha256": keys_digest(k for k, _ in rows), "user_agent": client.user_agent,
        "options": repr(task.options), **tar_facts(tar_path)})
    return {"shard": task.shard, "rows": len(index), "bytes": sum(r["bytes"] for r in index),
            "counts": dict(Counter(r["status"] for r in index)),
            "reasons": dict(Counter(f"{r['status']}: {reason_kind(r['reason'])}" for r in index if r["reason"]))}


def _record(outcome: Outcome, dups: DuplicateIndex, writer: ShardWriter, agent: str) -> dict[str, Any]:
    """The index row of one key; an ok image that duplicates an earlier one becomes 'skipped'."""
    img, size = outcome.image, outcome.original_size
    status, reason = outcome.status, outcome.reason
    now = datetime.now(UTC)
    if img is not None:
        match = dups.add(outcome.key, img.sha256, img.phash)
        if match:
            status, reason = "skipped", match.reason
        else:
            meta = {**_redacted(outcome.row or {}), **outcome.facts,
                    "width": img.width, "height": img.height,
                    "original_width": img.original_width, "original_height": img.original_height,
                    "sha256": img.sha256, "phash": img.phash, "source_format": img.source_format,
                    "reencoded": img.reencoded, "fetched_at": now.isoformat(), "fetcher": agent}
            writer.add(outcome.key, img.data, img.ext, meta)
    return {"key": outcome.key, "status": status, "reason": redact_credentials(reason),
            "sha256": img.sha256 if img else "", "phash": img.phash if img else "",
            "width": img.width if img else None, "height": img.height if img else None,
            "original_width": size[0] if size else None, "original_height": size[1] if size else None,
            "bytes": len(img.data) if img and status == "ok" else 0, "fetched_at": now}


def _fetcher(root: Path, client: PoliteClient, opts: FetchOptions
             ) -> Callable[[tuple[str, dict[str, Any] | None]], Outcome]:
    def fetch_one(item: tuple[str, dict[str, Any] | None]) -> Outcome:
        key, row = item
        if row is None:
            return Outcome(key, None, "failed", "not-in-catalog: key missing from catalog/*/part-*.parquet")
        try:
            data, facts = _source_bytes(root, row, client, opts.http.max_bytes)
        except FetchFailure as e:
            return Outcome(key, row, e.status, e.reason)
        except Exception as e:  # noqa: BLE001 - one bad URL or file must never stop the stage
            return Outcome(key, row, "failed", f"error: {type(e).__name__}: {e}"[:300])
        try:
            image = process_image(data, max_side=opts.max_side, min_side=opts.min_side,
                                  max_pixels=opts.max_pixels, max_decode_pixels=opts.max_decode_pixels)
        except Unusable as e:
            return Outcome(key, row, "skipped", e.reason, facts=facts)
        except DecodeError as e:
            return Outcome(key, row, "failed", e.reason, facts=facts)
        except Exception as e:  # noqa: BLE001 - a bad image must never stop the stage
            return Outcome(key, row, "failed", f"error: {type(e).__name__}: {e}"[:300], facts=facts)
        placeholder = placeholder_reason(facts["source_sha256"], image.phash)
        if placeholder:
            return Outcome(key, row, "skipped", placeholder, facts=facts)
        return Outcome(key, row, "ok", image=image,
                       original_size=(image.original_width, image.original_height), facts=facts)

    return fetch_one


def _source_bytes(root: Path, row: dict[str, Any], client: PoliteClient, max_bytes: int
                  ) -> tuple[bytes, dict[str, Any]]:
    """The source's bytes: `local_path` when it exists (a local mirror), else `download_url`."""
    local, url = row.get("local_path"), row.get("download_url")
    if local:
        path = Path(local) if Path(local).is_absolute() else root / local
        if path.is_file():
            size = path.stat().st_size
            if size > max_bytes:
                raise FetchFailure("failed", f"too-large: file {size} > {max_bytes}")
            data = path.read_bytes()
            return data, {"fetched_from": str(local), "source_sha256": sha256_bytes(data), "source_bytes": size}
        if not url:
            raise FetchFailure("failed", f"missing-file: {local}")
    if not url:
        raise FetchFailure("failed", "no-source: neither local_path nor download_url")
    got = client.fetch(url)
    return got.data, {"fetched_from": redact_credentials(url), "final_url": got.final_url,
                      "content_type": got.content_type,
                      "attempts": got.attempts, "source_sha256": sha256_bytes(got.data),
                      "source_bytes": len(got.data)}


def _redacted(row: dict[str, Any]) -> dict[str, Any]:
    """The catalog row for a shard's JSON, with `user:pass@` removed from every URL in it."""
    return {k: redact_credentials(v) if isinstance(v, str) and "@" in v else v for k, v in row.items()}


def _ordered_map(fn: Callable[[Any], Outcome], items: Iterable[Any], threads: int) -> Iterator[Outcome]:
    """`map` over a thread pool, in input order, with at most 2 x threads items in flight (bounded memory)."""
    if threads <= 1:
        yield from map(fn, items)
        return
    source = iter(items)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fetch") as pool:
        window = deque(pool.submit(fn, item) for item in itertools.islice(source, 2 * threads))
        while window:
            done = window.popleft().result()
            for item in itertools.islice(source, 1):
                window.append(pool.submit(fn, item))
            yield done
