"""Remove keys from every record the toolkit wrote: Parquet tables, image shards, latent parts.

Each rewrite is atomic and leaves nothing to undo if it is killed: a file still holding a key is
rewritten again on the next run, one already rewritten is found clean and kept. Only files the
toolkit's own stages wrote are touched (by the names the stages give them).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opencanvas.shards import ShardWriter, iter_shard
from opencanvas.storage import atomic_write_parquet
from opencanvas.workspace import Workspace


def _key_mask(table: pa.Table, keys: frozenset[str], column: str = "key") -> pa.Array:
    return pc.is_in(table.column(column), pa.array(sorted(keys), pa.string()))


def keys_in(path: Path, keys: frozenset[str]) -> int:
    """How many rows of the Parquet file at `path` have one of `keys` (reads the key column only)."""
    col = pq.read_table(path, columns=["key"])
    return int(pc.sum(_key_mask(col, keys)).as_py() or 0)


def filter_parquet(path: Path, keys: frozenset[str]) -> int:
    """Rewrite `path` without rows of `keys` (schema and key-value metadata kept); returns rows removed."""
    if not keys_in(path, keys):
        return 0
    table = pq.read_table(path)
    mask = _key_mask(table, keys)
    atomic_write_parquet(path, table.filter(pc.invert(mask)))
    return int(pc.sum(mask).as_py() or 0)


def _taken_down_rows(keys: list[str], source: str, input_file: str, tid: str) -> pa.Table:
    from opencanvas.catalog.schema import QUARANTINE_SCHEMA

    n = len(keys)
    return pa.table({"source": [source] * n, "input_file": [input_file] * n, "record_no": pa.nulls(n, pa.int64()),
                     "raw": [json.dumps({"key": k}) for k in keys], "reason": ["taken-down"] * n,
                     "detail": [f"removed by takedown {tid}; content not kept"] * n}, schema=QUARANTINE_SCHEMA)


def remove_from_catalog(ws: Workspace, keys: frozenset[str], tid: str) -> int:
    """Move `keys` out of the catalog parts of every input unit, keeping each source balanced.

    Per unit: a quarantine part `<source>-<unit>-takedown-<tid>.parquet` names the removed keys
    (reason `taken-down`, never the content), then the parts are rewritten, then the unit's
    done-record gets the new part hashes (so the catalog hash changes) and counts, last. A kill
    anywhere is finished by the next run.
    """
    from opencanvas.catalog.ingest import DONE_DIR
    from opencanvas.catalog.query import catalog_sources
    from opencanvas.storage import atomic_write_json, sha256_file

    removed = 0
    for source in catalog_sources(ws):
        source_dir = ws.source_dir(source)
        for done_path in sorted((source_dir / DONE_DIR).glob("*.json")):
            record = json.loads(done_path.read_text())
            qname = f"{source}-{record['unit']}-takedown-{tid}.parquet"
            qpath = ws.quarantine_dir / qname
            have = pq.read_table(qpath).column("raw").to_pylist() if qpath.exists() else []
            have_keys = [json.loads(raw)["key"] for raw in have]
            found = [k for name in record["parts"]
                     for k in pq.read_table(source_dir / name, columns=["key"]).column("key").to_pylist()
                     if k in keys]
            if not found and (not have_keys or qname in record.get("quarantine_parts", [])):
                continue
            union = sorted(set(have_keys) | set(found))
            atomic_write_parquet(qpath, _taken_down_rows(union, source, record.get("input", ""), tid))
            for name in record["parts"]:
                filter_parquet(source_dir / name, keys)
            new = len(union) - (len(have_keys) if qname in record.get("quarantine_parts", []) else 0)
            reasons = record.get("reasons", {})
            record |= {"parts": {name: sha256_file(source_dir / name) for name in record["parts"]},
                       "quarantine_parts": sorted(set(record.get("quarantine_parts", [])) | {qname}),
                       "ingested": record.get("ingested", 0) - new, "quarantined": record.get("quarantined", 0) + new,
                       "reasons": reasons | {"taken-down": reasons.get("taken-down", 0) + new}}
            atomic_write_json(done_path, record)
            removed += new
    return removed


def scrub_quarantine(path: Path, keys: frozenset[str], tid: str) -> int:
    """Replace quarantined records of `keys` (e.g. duplicates, which hold the whole row) by the key alone.

    Rows stay, so the source's read = ingested + quarantined still holds."""
    table = pq.read_table(path)
    raw, reason = table.column("raw").to_pylist(), table.column("reason").to_pylist()
    hits = {i: k for i, text in enumerate(raw) for k in keys
            if reason[i] != "taken-down" and text and f'"{k}"' in text}
    if not hits:
        return 0
    for i, k in hits.items():
        raw[i], reason[i] = json.dumps({"key": k}), "taken-down"
    detail = [f"removed by takedown {tid}; content not kept" if i in hits else d
              for i, d in enumerate(table.column("detail").to_pylist())]
    for name, values in (("raw", raw), ("reason", reason), ("detail", detail)):
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name),
                                 pa.array(values, pa.string()))
    atomic_write_parquet(path, table)
    return len(hits)


def filter_shard(index_path: Path, keys: frozenset[str]) -> int:
    """Rewrite one image shard (tar, then its index: the done-marker) without `keys`; returns images removed."""
    if not keys_in(index_path, keys):
        return 0
    tar = index_path.with_suffix(".tar")
    if tar.exists():
        writer = ShardWriter(tar)
        try:
            for image in iter_shard(tar):
                if image.key not in keys:
                    writer.add(image.key, image.data, image.ext, image.meta)
        except BaseException:
            writer.abort()
            raise
        writer.close()
    return filter_parquet(index_path, keys)


def _swap_dir(part: Path, staged: Path) -> None:
    """Put `staged` where `part` is. Killed in between, `_recover` finishes the move on the next run."""
    old = part.with_name(part.name + ".removed")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(part, old)
    os.replace(staged, part)
    shutil.rmtree(old)


def _recover(part: Path) -> None:
    staged, old = part.with_name(part.name + ".takedown"), part.with_name(part.name + ".removed")
    if not part.exists() and old.exists():
        os.replace(staged if (staged / "done.json").exists() else old, part)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)


def filter_latent_part(part: Path, keys: frozenset[str]) -> int:
    """Rebuild one resolution's latent part (encode.store layout) without `keys`; returns latents removed."""
    from opencanvas.encode.store import DONE_FILE, BucketLatents, parse_bucket, write_latent_part

    _recover(part)
    done_path = part / DONE_FILE
    if not done_path.exists():
        return 0
    done = json.loads(done_path.read_text())
    names = list(done.get("buckets", {}))
    if not any(keys_in(part / f"{n}.keys.parquet", keys) for n in names):
        return 0
    buckets, removed = {}, 0
    for name in names:
        table = pq.read_table(part / f"{name}.keys.parquet")
        keep = np.flatnonzero(~_key_mask(table, keys).to_numpy(zero_copy_only=False))
        removed += table.num_rows - len(keep)
        buckets[parse_bucket(name)] = BucketLatents(
            [table.column("key")[int(i)].as_py() for i in keep], [int(table.column("text_row")[int(i)].as_py())
                                                                   for i in keep],
            np.load(part / f"{name}.mean.npy", mmap_mode="r")[keep], np.load(part / f"{name}.std.npy",
                                                                             mmap_mode="r")[keep])
    staged = part.with_name(part.name + ".takedown")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    write_latent_part(staged, buckets, {k: v for k, v in done.items() if k not in ("buckets", "count")})
    _swap_dir(part, staged)
    return removed


def blank_text_part(part: Path, keys: frozenset[str]) -> int:
    """Zero the caption embeddings of `keys` in one text part and blank their key and captions.

    Rows stay (latent parts point at them by row number); the key column is blanked last, so a
    killed run finds the key again and redoes the (idempotent) zeroing.
    """
    from opencanvas.encode.store import DONE_FILE, save_npy_atomic

    keys_path = part / "keys.parquet"
    if not (part / DONE_FILE).exists() or not keys_in(keys_path, keys):
        return 0
    table = pq.read_table(keys_path)
    rows = np.flatnonzero(_key_mask(table, keys).to_numpy(zero_copy_only=False))
    for name, blank in (("text.npy", 0), ("mask.npy", False)):
        array = np.load(part / name)
        array[rows] = blank
        save_npy_atomic(part / name, array)
    gone = pa.array(np.isin(np.arange(table.num_rows), rows))
    slots = len(table.column("captions")[0].as_py() or []) if table.num_rows else 0
    table = table.set_column(table.schema.get_field_index("key"), table.schema.field("key"),
                             pc.if_else(gone, pa.scalar(""), table.column("key")))
    table = table.set_column(table.schema.get_field_index("captions"), table.schema.field("captions"),
                             pc.if_else(gone, pa.scalar([""] * slots, table.schema.field("captions").type),
                                        table.column("captions")))
    atomic_write_parquet(keys_path, table)
    return len(rows)


def remove_everywhere(ws: Workspace, keys: Iterable[str], tid: str) -> dict[str, int]:
    """Remove `keys` from catalog parts, quarantine, subsets, image shards, captions and latents."""
    from opencanvas.catalog.query import quarantine_files

    doomed = frozenset(keys)
    counts = {"catalog": 0, "quarantine": 0, "subsets": 0, "images": 0, "captions": 0, "latents": 0,
              "latent_texts": 0}
    counts["quarantine"] = sum(scrub_quarantine(p, doomed, tid) for p in quarantine_files(ws) if p.exists())
    counts["catalog"] = remove_from_catalog(ws, doomed, tid)
    counts["subsets"] = sum(filter_parquet(p, doomed) for p in sorted((ws.root / "subsets").glob("*.parquet")))
    counts["images"] = sum(filter_shard(p, doomed) for p in sorted((ws.root / "images").glob("*/shard-*.parquet")))
    counts["captions"] = sum(filter_parquet(p, doomed)
                             for p in sorted((ws.root / "captions").glob("*/part-*.parquet")))
    latents = ws.root / "latents"
    parts = {p.parent for p in latents.glob("*/res-*/shard-*/*") if p.parent.name.startswith("shard-")}
    parts |= {p.with_name(p.name.removesuffix(".removed")) for p in latents.glob("*/res-*/shard-*.removed")}
    counts["latents"] = sum(filter_latent_part(p, doomed) for p in sorted(parts)
                            if not p.name.endswith((".takedown", ".removed")))
    counts["latent_texts"] = sum(blank_text_part(p, doomed) for p in sorted(latents.glob("*/text/shard-*")))
    return counts
