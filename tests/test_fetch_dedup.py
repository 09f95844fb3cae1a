"""Duplicate detection: exact, near (pHash + colour layout), deterministic first-match rule."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from opencanvas.fetch.decode import load_rgb
from opencanvas.fetch.dedup import DuplicateIndex, duplicate_matches, hash_thumbnail, perceptual_hash
from opencanvas.fetch.plan import duckdb_connection
from opencanvas.fetch.testing import noise_image
from opencanvas.shards import INDEX_SCHEMA


def phash(img: Image.Image) -> str:
    return perceptual_hash(hash_thumbnail(img))


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return load_rgb(buf.getvalue())


def drawing(fill: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(img).polygon([(40, 200), (128, 30), (216, 200)], fill=fill, outline="black")
    return img


def test_reencoded_and_resized_copies_are_near_duplicates() -> None:
    img = load_rgb(noise_image(1, (640, 480)))
    index = DuplicateIndex(2)
    assert index.add("a", "sha-a", phash(img)) is None
    for i, copy in enumerate([jpeg(img, 40), img.resize((320, 240), Image.Resampling.LANCZOS)]):
        match = index.add(f"copy{i}", f"sha-copy{i}", phash(copy))
        assert match is not None and match.key == "a" and not match.exact and match.distance <= 2


def test_colour_variants_of_one_drawing_are_kept() -> None:
    red, blue = phash(drawing((220, 30, 30))), phash(drawing((30, 60, 220)))
    assert red.split("-")[0] == blue.split("-")[0]  # pHash alone cannot tell them apart
    index = DuplicateIndex(4)
    index.add("red", "sha-red", red)
    assert index.add("blue", "sha-blue", blue) is None
    assert index.add("red-again", "sha-red2", phash(jpeg(drawing((220, 30, 30)), 60))).key == "red"


def test_exact_beats_near_and_the_earliest_match_wins() -> None:
    index = DuplicateIndex(2)
    h = phash(load_rgb(noise_image(2)))
    assert index.add("k1", "s1", h) is None
    assert index.add("k2", "s2", h).reason == "near-duplicate-of: k1 (phash distance 0)"
    assert index.add("k3", "s2", h).reason == "duplicate-of: k2"  # same bytes as k2
    assert DuplicateIndex(-1).add("x", "s", h) is None


def test_multi_index_search_agrees_with_brute_force() -> None:
    rng = random.Random(0)
    base = [rng.getrandbits(64) for _ in range(40)]
    hashes = []
    for _ in range(400):  # many near neighbours: flip 0-5 bits of a base hash
        value = rng.choice(base)
        for bit in rng.sample(range(64), rng.randint(0, 5)):
            value ^= 1 << bit
        hashes.append(f"{value:016x}")
    for d in (0, 2, 4):
        index = DuplicateIndex(d)
        for i, h in enumerate(hashes):
            got = index.add(f"k{i:04d}", f"s{i}", h)
            earlier = [j for j in range(i) if (int(h, 16) ^ int(hashes[j], 16)).bit_count() <= d]
            assert (got.key if got else None) == (f"k{earlier[0]:04d}" if earlier else None)


# ---- the cross-shard pass in DuckDB against the in-memory rule it replaced --------------------
def oracle_changes(rows: list[dict], max_distance: int) -> dict[str, tuple[str, str, str]]:
    """The Python pass `reconcile_duplicates` ran before DuckDB: DuplicateIndex over all rows in key order."""
    index = DuplicateIndex(max_distance)
    changes = {}
    for row in sorted((r for r in rows if r["sha256"]), key=lambda r: r["key"]):
        match = index.add(row["key"], row["sha256"], row["phash"])
        if match and match.reason != row["reason"]:
            changes[row["key"]] = (row["shard"], row["status"], match.reason)
    return changes


def synthetic_shards(seed: int, n: int, shard_size: int, max_distance: int) -> list[list[dict]]:
    """Index rows with exact copies, near neighbours (pHash bits and layout cells perturbed around the
    tolerance), empty and layout-less hashes, each shard already deduplicated within itself as fetch does."""
    rng = random.Random(seed)
    bases = [(rng.getrandbits(64), bytes(rng.randrange(40, 216) for _ in range(27))) for _ in range(n // 8)]
    shas = [f"sha{i}" for i in range(n)]
    rows = []
    for i in range(n):
        value, layout = rng.choice(bases)
        for bit in rng.sample(range(64), rng.choice([0, 1, 2, 3, 5])):
            value ^= 1 << bit
        layout = bytes(max(0, min(255, b + rng.choice([0, 0, 0, 5, -9, 16, -17]))) for b in layout)
        phash = f"{value:016x}-{layout.hex()}"
        kind = rng.random()
        if kind < 0.05:
            phash = ""                      # no perceptual hash: exact matches only
        elif kind < 0.1:
            phash = f"{value:016x}"          # an older index: pHash without a layout
        sha = rng.choice(shas[:max(1, i)]) if rng.random() < 0.15 else shas[i]  # same bytes as another row
        status = "ok" if rng.random() < 0.9 else "failed"
        rows.append({"key": f"k{rng.getrandbits(40):012x}", "status": status, "reason": "" if status == "ok" else
                     "http-404", "sha256": sha if status == "ok" else "", "phash": phash if status == "ok" else ""})
    rows.sort(key=lambda r: r["key"])
    shards = [rows[i:i + shard_size] for i in range(0, n, shard_size)]
    for number, shard in enumerate(shards):
        index = DuplicateIndex(max_distance)
        for r in shard:
            r["shard"] = f"shard-{number:05d}"
            if r["sha256"]:
                match = index.add(r["key"], r["sha256"], r["phash"])
                if match:
                    r.update(status="skipped", reason=match.reason)
    return shards


@pytest.mark.parametrize("max_distance", [-1, 0, 2, 4])
def test_duckdb_band_join_equals_the_python_rule(tmp_path: Path, max_distance: int) -> None:
    shards = synthetic_shards(max_distance + 10, 1200, 150, max_distance)
    paths = []
    for shard in shards:
        path = tmp_path / f"{shard[0]['shard']}.parquet"
        table = pa.Table.from_pylist([{c: r.get(c) for c in INDEX_SCHEMA.names} for r in shard], schema=INDEX_SCHEMA)
        pq.write_table(table, path)
        paths.append(path)
    want = oracle_changes([r for s in shards for r in s], max_distance)
    assert len(want) > 50  # the data exercises the cross-shard pass
    with duckdb_connection(tmp_path / "spill") as con:
        got = {key: (shard, status, reason) for shard, key, status, reason in
               duplicate_matches(con, paths, max_distance).fetchall()}
    assert got == want
