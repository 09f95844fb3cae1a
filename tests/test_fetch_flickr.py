"""Flickr originals (paper §4.1): URLs from YFCC fields, and `--flickr-size` falling back on 404/410."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.query import part_files
from opencanvas.fetch.flickr import flickr_urls, size_candidates
from opencanvas.fetch.http import HttpConfig
from opencanvas.fetch.stage import FetchOptions, fetch
from opencanvas.fetch.testing import image_server, noise_image, write_catalog_subset
from opencanvas.shards import iter_shard
from opencanvas.workspace import Workspace
from tests.factories import catalog_row
from tests.test_catalog_sources import write_yfcc, yfcc_fields


def test_urls_follow_flickrs_static_forms():
    # The forms of https://www.flickr.com/services/api/misc.urls.html for photo 12502775644 on server 7372.
    assert flickr_urls("12502775644", "7372", "acfd415fa7", "e1e3c1d0f1", "JPG") == {
        "original": "https://live.staticflickr.com/7372/12502775644_e1e3c1d0f1_o.jpg",
        "large": "https://live.staticflickr.com/7372/12502775644_acfd415fa7_b.jpg",
        "medium": "https://live.staticflickr.com/7372/12502775644_acfd415fa7.jpg",
    }
    assert "original" not in flickr_urls("1", "2", "abc", None, "jpg")  # no original secret: no original
    assert flickr_urls("1", "2", "abc", "de/f", "png").keys() == {"large", "medium"}  # never a path in a URL
    assert flickr_urls("1", "../x", "abc", "def", "png") == {}


def test_yfcc_rows_carry_the_fields_for_the_original(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    line = "\t".join(yfcc_fields(0, server_id="3120", farm_id="4", secret="e3c6f8dc5d", original_secret="9a8b7c6d5e",
                                 extension="png"))
    ingest(ws, "yfcc100m", [write_yfcc(tmp_path / "y.tsv", [line])])
    (row,) = [r for p in part_files(ws) for r in pq.read_table(p).to_pylist()]
    assert [u for _, u in size_candidates(row, "original")] == [
        "https://live.staticflickr.com/3120/5000000_9a8b7c6d5e_o.png",
        "https://live.staticflickr.com/3120/5000000_e3c6f8dc5d_b.jpg",
        "https://live.staticflickr.com/3120/5000000_e3c6f8dc5d.jpg"]
    assert [s for s, _ in size_candidates(row, "large")] == ["large", "medium"]
    with pytest.raises(ValueError, match="use one of original, large, medium"):
        size_candidates(row, "huge")


def flickr_row(i: int, server: str) -> dict:
    row = catalog_row(f"{i:04d}", f"photo {i}")
    row["source_id"] = str(1000 + i)
    row["download_url"] = f"http://farm1.staticflickr.com/1/{1000 + i}_s{i}.jpg"
    row["extra"] = json.dumps({"server_id": server, "secret": f"s{i}", "original_secret": f"o{i}", "extension": "jpg"})
    return row


def test_fetch_takes_the_largest_size_flickr_serves_and_records_it(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    http = HttpConfig(timeout=2, retries=0, backoff=0.01, allow_private_addresses=True, domain_rps=0)
    with image_server() as (url, state):
        state.images["1000_o0_o.jpg"] = (noise_image(0, (640, 480)), "image/jpeg")  # original served
        state.images["1001_s1_b.jpg"] = (noise_image(1, (400, 300)), "image/jpeg")  # original 404 -> large
        state.images["1002_s2.jpg"] = (noise_image(2, (300, 300)), "image/jpeg")    # only medium
        rows = [flickr_row(0, "img"), flickr_row(1, "img"), flickr_row(2, "img"), flickr_row(3, "gone")]
        write_catalog_subset(ws, "flickr", rows)
        options = FetchOptions(http=http, min_side=16, max_side=0, flickr_host=url, threads=1)
        fetch(ws, "flickr", options=options)
        stored = {img.key: img.meta for t in ws.images_dir("flickr").glob("shard-*.tar") for img in iter_shard(t)}
        index = {r["key"]: r for p in ws.images_dir("flickr").glob("shard-*.parquet")
                 for r in pq.read_table(p).to_pylist()}
        assert {k: m["flickr_size"] for k, m in stored.items()} == {
            "synthetic:0000": "original", "synthetic:0001": "large", "synthetic:0002": "medium"}
        assert stored["synthetic:0000"]["original_width"] == 640  # the original's pixels, not a resize
        assert stored["synthetic:0002"]["flickr_fallbacks"] == ["original: http-404", "large: http-404"]
        gone = index["synthetic:0003"]
        assert gone["status"] == "failed"
        assert gone["reason"] == "http-410 (after original: http-410, large: http-410)"
        # --flickr-size medium asks for the 500-px copy only.
        write_catalog_subset(ws, "medium", rows[:1])
        state.images["1000_s0.jpg"] = (noise_image(3, (300, 200)), "image/jpeg")
        fetch(ws, "medium", options=FetchOptions(http=http, min_side=16, max_side=0, flickr_host=url,
                                                 flickr_size="medium"))
        (meta,) = [img.meta for t in ws.images_dir("medium").glob("shard-*.tar") for img in iter_shard(t)]
        assert meta["flickr_size"] == "medium" and meta["original_width"] == 300
        # --max-side still applies to the original after download.
        write_catalog_subset(ws, "small", rows[:1])
        fetch(ws, "small", options=FetchOptions(http=http, min_side=16, max_side=256, flickr_host=url))
        (meta,) = [img.meta for t in ws.images_dir("small").glob("shard-*.tar") for img in iter_shard(t)]
        assert meta["flickr_size"] == "original" and (meta["original_width"], meta["width"]) == (640, 256)
