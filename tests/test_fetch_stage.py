"""The fetch stage end to end: subset -> shards + indexes, dedup, resume, ranks, CLI."""

from __future__ import annotations

import io
import json
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.fetch.decode import load_rgb
from opencanvas.fetch.http import HttpConfig
from opencanvas.fetch.stage import FetchOptions, fetch
from opencanvas.fetch.stats import fetch_stats
from opencanvas.fetch.testing import ServerState, image_server, noise_image, write_catalog_subset
from opencanvas.shards import index_paths, iter_shard, read_index
from opencanvas.workspace import Workspace
from tests.factories import catalog_row

HTTP = HttpConfig(timeout=0.5, retries=1, backoff=0.01, allow_private_addresses=True, domain_rps=0)
OPTIONS = FetchOptions(threads=4, http=HTTP)


def rejpeg(data: bytes, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with image_server(ServerState(slow_seconds=1.0)) as running:
        yield running


def add_rows(url: str, state: ServerState, specs: list[tuple[str, bytes]]) -> list[dict]:
    """One catalog row per (route, image bytes); the key order is the list order."""
    rows = []
    for i, (route, data) in enumerate(specs):
        name = f"i{i}.jpg"
        state.images[name] = (data, "image/jpeg")
        row = catalog_row(f"{i:04d}", f"image {i}")
        row["download_url"] = f"{url}/{route}/{name}"
        rows.append(row)
    return rows


def test_fetch_writes_shards_every_key_once_with_reasons(ws: Workspace, server) -> None:
    url, state = server
    a = noise_image(1, (640, 480))
    specs = [("img", a), ("img", noise_image(2, (1600, 1200))), ("img", noise_image(3, (200, 900))),
             ("noai", noise_image(4)), ("private", noise_image(5)), ("truncated", noise_image(6)),
             ("img", b"not an image at all"), ("img", a),                     # exact duplicate of key 0
             ("img", rejpeg(a, 70)), ("missing", noise_image(9)), ("redirect/2", noise_image(10))]
    rows = add_rows(url, state, specs)
    rows.append({**catalog_row("0011", "image 11"), "local_path": "local/x.png"})
    (ws.root / "local").mkdir()
    Image.open(io.BytesIO(noise_image(11, (300, 400)))).save(ws.root / "local" / "x.png")
    write_catalog_subset(ws, "s", rows)
    stats = fetch(ws, "s", shard_size=5, options=OPTIONS)

    index = {r["key"]: r for r in read_index(ws.images_dir("s")).to_pylist()}
    assert len(index) == 12 and stats.complete and stats.shards == 3
    assert sum(stats.counts.values()) == 12
    statuses = [r["status"] for r in index.values()]
    assert stats.final_counts == {s: statuses.count(s) for s in ("failed", "ok", "skipped")}
    want = {0: ("ok", ""), 1: ("ok", ""), 2: ("skipped", "too-small: 200x900 < 256"),
            3: ("skipped", "x-robots-tag: noai"), 4: ("skipped", "robots-txt: disallowed for OpenCanvas"),
            5: ("failed", "truncated-body"), 6: ("failed", "undecodable"),
            7: ("skipped", "duplicate-of: synthetic:0000"),
            8: ("skipped", "near-duplicate-of: synthetic:0000 (phash distance"), 9: ("failed", "http-404"),
            10: ("ok", ""), 11: ("ok", "")}
    for i, (status, reason) in want.items():
        row = index[f"synthetic:{i:04d}"]
        assert row["status"] == status and row["reason"].startswith(reason), row
    big = index["synthetic:0001"]
    assert (big["width"], big["height"], big["original_width"], big["original_height"]) == (1024, 768, 1600, 1200)

    stored = {img.key: img for tar in sorted(ws.images_dir("s").glob("shard-*.tar")) for img in iter_shard(tar)}
    ok = {k for k, r in index.items() if r["status"] == "ok"}
    assert set(stored) == ok  # duplicates and skips never reach a tar
    for key in ok:
        img, row = stored[key], index[key]
        assert load_rgb(img.data).size == (row["width"], row["height"]) and row["bytes"] == len(img.data)
        assert img.meta["title"] == f"image {int(key[-4:])}" and img.meta["license_id"] == "cc0"
        assert img.meta["sha256"] == row["sha256"] and img.meta["fetcher"].startswith("OpenCanvas/")
    assert stored["synthetic:0000"].data == a  # untouched JPEG: stored byte for byte
    assert stored["synthetic:0011"].ext == "png" and stored["synthetic:0010"].meta["final_url"].endswith("/img/i10.jpg")

    report = fetch_stats(ws, "s")
    assert report["counts"] == dict(Counter(r["status"] for r in index.values()))
    ok_rows = [r for r in index.values() if r["status"] == "ok"]
    assert report["resized"] == sum((r["width"], r["height"]) != (r["original_width"], r["original_height"])
                                    for r in ok_rows)
    widths = sorted(r["original_width"] for r in ok_rows)
    assert report["resolution"]["original_width"] == {"min": widths[0], "max": widths[-1],
                                                      "median": float(statistics.median(widths))}
    assert report["rows"] == 12 and report["bytes"] == sum(r["bytes"] for r in index.values())
    assert report["reasons"]["skipped"]["too-small"] == 1 and report["reasons"]["failed"]["http-404"] == 1
    assert (ws.root / report["histogram"]).stat().st_size > 1000


def test_duplicates_across_shards_are_reconciled_deterministically(ws: Workspace, server) -> None:
    url, state = server
    a, b = noise_image(20), noise_image(21)
    rows = add_rows(url, state, [("img", a), ("img", b), ("img", noise_image(22)),
                                 ("img", a), ("img", rejpeg(b, 60)), ("img", noise_image(23))])
    write_catalog_subset(ws, "s", rows)
    stats = fetch(ws, "s", shard_size=3, options=OPTIONS)
    assert stats.duplicates_across_shards == 2
    index = {r["key"]: r for r in read_index(ws.images_dir("s")).to_pylist()}
    assert index["synthetic:0003"]["reason"] == "duplicate-of: synthetic:0000"
    assert index["synthetic:0004"]["reason"].startswith("near-duplicate-of: synthetic:0001")
    assert {i.key for i in iter_shard(ws.images_dir("s") / "shard-00001.tar")} == {"synthetic:0005"}
    # Re-running changes nothing: finished shards are skipped and the reconcile pass is idempotent.
    mtimes = {p: p.stat().st_mtime_ns for p in ws.images_dir("s").glob("shard-*")}
    again = fetch(ws, "s", shard_size=3, options=OPTIONS)
    assert again.shards_done_before == 2 and again.shards_fetched == 0 and again.duplicates_across_shards == 0
    assert mtimes == {p: p.stat().st_mtime_ns for p in ws.images_dir("s").glob("shard-*")}
    with pytest.raises(ValueError, match="different subset or --shard-size"):
        fetch(ws, "s", shard_size=4, options=OPTIONS)


def test_ranks_split_the_shards_and_together_cover_the_subset(ws: Workspace, server) -> None:
    url, state = server
    write_catalog_subset(ws, "s", add_rows(url, state, [("img", noise_image(30 + i)) for i in range(7)]))
    first = fetch(ws, "s", shard_size=2, options=OPTIONS, rank=1, world=2)
    assert first.shards_fetched == 2 and not first.complete
    assert [p.stem for p in index_paths(ws.images_dir("s"))] == ["shard-00001", "shard-00003"]
    second = fetch(ws, "s", shard_size=2, options=OPTIONS, rank=0, world=2)
    assert second.shards_fetched == 2 and second.complete
    keys = read_index(ws.images_dir("s")).column("key").to_pylist()
    assert sorted(keys) == [f"synthetic:{i:04d}" for i in range(7)]


def test_process_pool_workers(ws: Workspace, server) -> None:
    url, state = server
    write_catalog_subset(ws, "s", add_rows(url, state, [("img", noise_image(40 + i)) for i in range(6)]))
    stats = fetch(ws, "s", shard_size=2, workers=2, options=OPTIONS)
    assert stats.shards_fetched == 3 and stats.counts == {"ok": 6}
    assert len(read_index(ws.images_dir("s"))) == 6


def test_missing_subset_and_catalog_keys(ws: Workspace, server) -> None:
    with pytest.raises(FileNotFoundError, match="opencanvas catalog subset"):
        fetch(ws, "nope", options=OPTIONS)
    url, state = server
    rows = add_rows(url, state, [("img", noise_image(50))])
    write_catalog_subset(ws, "s", rows)
    subset = pq.read_table(ws.subset_path("s")).to_pylist()
    subset.append({"key": "synthetic:gone", "source": "synthetic", "license_id": "cc0"})
    import pyarrow as pa

    from opencanvas.catalog.schema import SUBSET_SCHEMA
    pq.write_table(pa.Table.from_pylist(subset, schema=SUBSET_SCHEMA), ws.subset_path("s"))
    fetch(ws, "s", options=OPTIONS)
    index = {r["key"]: r for r in read_index(ws.images_dir("s")).to_pylist()}
    assert index["synthetic:gone"]["status"] == "failed"
    assert index["synthetic:gone"]["reason"].startswith("not-in-catalog")
    with pytest.raises(ValueError, match="--max-side 100 < --min-side 256"):
        fetch(ws, "s", max_side=100, options=OPTIONS)


def test_cli_fetch_and_stats(ws: Workspace, server) -> None:
    url, state = server
    write_catalog_subset(ws, "s", add_rows(url, state, [("img", noise_image(60 + i)) for i in range(3)]))
    runner = CliRunner()
    common = ["-w", str(ws.root), "--subset", "s"]
    result = runner.invoke(app, ["fetch", *common, "--shard-size", "2", "--allow-private-addresses",
                                 "--domain-rps", "0", "--contact", "https://example.org/me"])
    assert result.exit_code == 0, result.output
    assert "https://example.org/me" in next(iter(state.user_agents - {""}))
    result = runner.invoke(app, ["fetch", "stats", *common])
    assert result.exit_code == 0, result.output
    report = json.loads((ws.images_dir("s") / "stats" / "stats.json").read_text())
    assert report["counts"] == {"ok": 3} and report["shards"] == 2
    # Without the flag the loopback server is refused, and the rows say why.
    write_catalog_subset(ws, "t", add_rows(url, state, [("img", noise_image(70))]))
    result = runner.invoke(app, ["fetch", "-w", str(ws.root), "--subset", "t"])
    assert result.exit_code == 0, result.output
    assert read_index(ws.images_dir("t")).column("reason")[0].as_py().startswith("loopback-address")
    result = runner.invoke(app, ["fetch", "-w", str(ws.root)])
    assert result.exit_code == 2 and "--subset is required" in result.output


@pytest.mark.slow  # Ray start-up: ~15-25 s on 2 busy cores
def test_ray_engine_on_two_workers_matches_the_local_engine(ws: Workspace, tmp_path: Path, server) -> None:
    ray = pytest.importorskip("ray")
    url, state = server
    specs = [("img", noise_image(80 + i)) for i in range(7)]
    specs[5] = ("img", rejpeg(specs[1][1], 60))  # a near duplicate across shards: the reconcile pass runs
    rows = add_rows(url, state, specs)
    write_catalog_subset(ws, "s", rows)
    local = Workspace.open(tmp_path / "local")
    write_catalog_subset(local, "s", rows)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)  # 2 workers
    try:
        stats = fetch(ws, "s", shard_size=2, engine="ray", options=OPTIONS)
        assert fetch(ws, "s", shard_size=2, engine="ray", options=OPTIONS).shards_done_before == 4  # resume
    finally:
        ray.shutdown()
    assert stats.shards_fetched == 4 and stats.counts == {"ok": 7} and stats.duplicates_across_shards == 1
    fetch(local, "s", shard_size=2, options=OPTIONS)

    def contents(w: Workspace) -> tuple[list[dict], list[tuple[str, bytes]]]:
        index = [{k: v for k, v in r.items() if k != "fetched_at"} for r in read_index(w.images_dir("s")).to_pylist()]
        tars = sorted(w.images_dir("s").glob("shard-*.tar"))
        stored = [(img.key, img.data) for tar in tars for img in iter_shard(tar)]
        return sorted(index, key=lambda r: r["key"]), stored

    assert contents(ws) == contents(local)
