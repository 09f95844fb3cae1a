"""The fetcher on the real Open Clip Art Library (local PNGs), including its huge files."""

from __future__ import annotations

from pathlib import Path

from opencanvas.fetch.decode import load_rgb
from opencanvas.fetch.dedup import DuplicateIndex
from opencanvas.fetch.stage import FetchOptions, fetch
from opencanvas.fetch.stats import fetch_stats, reason_kind
from opencanvas.fetch.testing import write_catalog_subset
from opencanvas.shards import iter_shard, read_index
from opencanvas.workspace import Workspace
from tests.factories import catalog_row

# 20990 x 29700 (623 MP: beyond PIL's own bomb limit: refused) and 10524 x 16000 (168 MP: downscaled).
HUGE = ("signs_and_symbols/stop_sign_miguel_s_nchez_.png", "food/fruit/apple_mateya_01.png")


def test_open_clip_art_pngs_with_pixel_cap(ws: Workspace, clipart_root: Path) -> None:
    pngs = sorted((clipart_root / "png").rglob("*.png"))
    chosen = pngs[:: max(1, len(pngs) // 50)][:50] + [clipart_root / "png" / h for h in HUGE]
    rows = []
    for i, path in enumerate(chosen):
        row = catalog_row(f"{i:04d}", path.stem.replace("_", " "))
        row["source"], row["key"], row["local_path"] = "openclipart", f"openclipart:{i:04d}", str(path)
        rows.append(row)
    write_catalog_subset(ws, "clipart", rows, source="openclipart")
    stats = fetch(ws, "clipart", shard_size=20, options=FetchOptions(threads=2))

    index = {r["key"]: r for r in read_index(ws.images_dir("clipart")).to_pylist()}
    assert len(index) == len(rows) == sum(stats.counts.values())
    assert index[rows[-2]["key"]]["reason"].startswith("too-many-pixels:")
    apple = index[rows[-1]["key"]]
    assert (apple["status"], apple["original_width"], apple["original_height"]) == ("ok", 10524, 16000)
    assert (apple["width"], apple["height"]) == (674, 1024)
    kinds = {reason_kind(r["reason"]) for r in index.values() if r["status"] != "ok"}
    assert kinds <= {"too-many-pixels", "too-small", "blank", "duplicate-of", "near-duplicate-of"}, kinds
    assert stats.counts["ok"] >= 20
    stored = [img for tar in sorted(ws.images_dir("clipart").glob("shard-*.tar")) for img in iter_shard(tar)]
    assert len(stored) == stats.counts["ok"]
    for img in stored:
        rgb = load_rgb(img.data)
        assert img.ext == "png" and max(rgb.size) <= 1024 and rgb.mode == "RGB"
        assert img.meta["local_path"].startswith(str(clipart_root))
        assert (rgb.width, rgb.height) == (index[img.key]["width"], index[img.key]["height"])
    report = fetch_stats(ws, "clipart")
    assert report["reasons"]["failed"]["too-many-pixels"] == 1
    # Whatever the pass kept or skipped follows the in-memory rule over the whole subset, in key order.
    duplicates = DuplicateIndex(FetchOptions().near_dup_distance)
    for row in sorted((r for r in index.values() if r["sha256"]), key=lambda r: r["key"]):
        match = duplicates.add(row["key"], row["sha256"], row["phash"])
        assert (row["status"], row["reason"]) == (("skipped", match.reason) if match else ("ok", "")), row
