"""The caption stage on real shards with the offline captioners: coverage, resume, sharing, guards."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from opencanvas.caption.stage import caption
from opencanvas.captions import CAPTION_SCHEMA, read_captions
from opencanvas.shards import INDEX_SCHEMA, ShardWriter, shard_name
from opencanvas.storage import atomic_write_parquet, parquet_metadata
from opencanvas.workspace import Workspace
from tests.factories import catalog_row, make_image_subset


def _mark_failed(ws: Workspace, subset: str, shard: int, key: str) -> None:
    """Rewrite one index row as a failed download (the fetch stage keeps those rows)."""
    path = ws.images_dir(subset) / f"{shard_name(shard)}.parquet"
    rows = pq.read_table(path).to_pylist()
    for r in rows:
        if r["key"] == key:
            r.update(status="failed", reason="http: 404")
    atomic_write_parquet(path, pa.Table.from_pylist(rows, schema=INDEX_SCHEMA))


def test_metadata_captions_every_ok_image_once(ws: Workspace) -> None:
    keys = make_image_subset(ws, n=20, shard_size=8)
    _mark_failed(ws, "shapes", 1, keys[9])
    stats = caption(ws, "shapes", "metadata", batch_size=3)
    assert (stats.shards_done, stats.shards_skipped, stats.images) == (3, 0, 19)
    parts = sorted(p.name for p in ws.captions_dir("metadata").glob("part-*.parquet"))
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    table = read_captions(ws, "metadata")
    assert table.schema.equals(CAPTION_SCHEMA)
    got = dict(zip(table.column("key").to_pylist(), table.column("caption").to_pylist()))
    assert sorted(got) == sorted(k for k in keys if k != keys[9])  # failed image: no caption
    assert got[keys[0]] == "a red circle" and got[keys[5]] == "a green square"
    assert set(table.column("captioner").to_pylist()) == {"metadata"}
    meta = parquet_metadata(ws.captions_dir("metadata") / "part-00001.parquet")
    assert meta["subset"] == "shapes" and json.loads(meta["settings"])["captioner"] == "metadata"
    assert json.loads(meta["flagged"]) == {} and float(meta["seconds"]) >= 0
    only = read_captions(ws, "metadata", keys=[keys[1], keys[2], "synthetic:nope"])
    assert sorted(only.column("key").to_pylist()) == [keys[1], keys[2]]


def test_rerun_skips_finished_shards_and_redoes_only_missing(ws: Workspace) -> None:
    make_image_subset(ws, n=24, shard_size=8)
    caption(ws, "shapes", "metadata")
    out = ws.captions_dir("metadata")
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    (out / "part-00001.parquet").unlink()  # as if killed while captioning shard 1
    stats = caption(ws, "shapes", "metadata")
    assert (stats.shards_skipped, stats.shards_done, stats.images) == (2, 1, 8)
    after = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    assert after["part-00000.parquet"] == before["part-00000.parquet"]  # untouched
    assert read_captions(ws, "metadata").num_rows == 24
    assert caption(ws, "shapes", "metadata").shards_done == 0


def test_rank_world_split_shards_without_overlap(ws: Workspace) -> None:
    keys = make_image_subset(ws, n=40, shard_size=8)
    done = [caption(ws, "shapes", "metadata", rank=r, world=2).shards_done for r in (0, 1)]
    assert done == [3, 2]
    table = read_captions(ws, "metadata")
    assert sorted(table.column("key").to_pylist()) == sorted(keys)


def test_guards_against_mixing_settings_and_subsets(ws: Workspace) -> None:
    make_image_subset(ws, n=8, shard_size=4)
    make_image_subset(ws, name="other", n=8, shard_size=4, seed=1)
    caption(ws, "shapes", "metadata")
    with pytest.raises(ValueError, match="subset 'shapes'.*--name"):
        caption(ws, "other", "metadata")
    assert caption(ws, "other", "metadata", name="metadata-other").images == 8
    with pytest.raises(ValueError, match="uses no model"):
        caption(ws, "shapes", "metadata", model="x")
    with pytest.raises(ValueError, match="no prompt"):
        caption(ws, "shapes", "commoncatalog", prompt="a picture of")
    with pytest.raises(ValueError, match="unknown captioner"):
        caption(ws, "shapes", "gpt")
    with pytest.raises(ValueError, match="not allowed"):
        caption(ws, "shapes", "metadata", name="stats")
    with pytest.raises(FileNotFoundError, match="opencanvas fetch"):
        caption(ws, "nothing-fetched", "metadata")


def test_commoncatalog_flags_missing_shipped_captions(ws: Workspace) -> None:
    """Images without a shipped BLIP-2 caption keep a row, flagged, never dropped."""
    writer = ShardWriter(ws.images_dir("cc") / "shard-00000.tar")
    index = []
    for i, shipped in enumerate(["a photo of a lighthouse", None, "a dog dog dog dog"]):
        row = catalog_row(f"cc{i}", f"title {i}")
        row["extra"] = json.dumps({"blip2_caption": shipped} if shipped else {})
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, format="PNG")
        writer.add(row["key"], buf.getvalue(), "png", row)
        index.append({"key": row["key"], "status": "ok", "reason": ""})
    writer.close()
    atomic_write_parquet(ws.images_dir("cc") / "shard-00000.parquet", pa.Table.from_pylist(index).cast(
        pa.schema([f for f in INDEX_SCHEMA if f.name in ("key", "status", "reason")])))
    stats = caption(ws, "cc", "commoncatalog")
    assert stats.flagged == {"missing": 1, "repetitive": 1}
    rows = read_captions(ws, "commoncatalog").to_pylist()
    assert [(r["caption"], r["flagged"]) for r in rows] == [
        ("a photo of a lighthouse", ""), ("", "missing"), ("a dog dog dog dog", "repetitive")]
    assert rows[0]["model_id"] == "Salesforce/blip2-opt-2.7b"
