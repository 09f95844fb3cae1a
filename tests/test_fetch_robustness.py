"""Hostile and damaged input: bad URLs become failed rows, addresses hidden in IPv6 forms are refused,
credentials never reach a shard, damaged tars are found and fetched again, files get the umask's mode."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.fetch.addresses import blocked_reason
from opencanvas.fetch.http import FetchFailure, HttpConfig, PoliteClient, redact_credentials
from opencanvas.fetch.stage import FetchOptions, fetch
from opencanvas.fetch.stats import fetch_stats
from opencanvas.fetch.testing import ServerState, image_server, noise_image, write_catalog_subset
from opencanvas.shards import ShardError, iter_shard, read_index
from opencanvas.storage import atomic_write_text
from opencanvas.workspace import Workspace
from tests.factories import catalog_row

HTTP = HttpConfig(timeout=0.5, retries=0, backoff=0.01, allow_private_addresses=True, domain_rps=0)
OPTIONS = FetchOptions(threads=2, http=HTTP)
STRICT = FetchOptions(threads=2, http=HttpConfig(timeout=0.5, retries=0, backoff=0.01, domain_rps=0))


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with image_server(ServerState()) as running:
        yield running


def rows_for(urls: list[str]) -> list[dict]:
    rows = []
    for i, url in enumerate(urls):
        row = catalog_row(f"{i:04d}", f"image {i}")
        row["download_url"] = url
        rows.append(row)
    return rows


BAD_URLS = [
    ("http://[::ffff:a9fe:a9fe]/x", "link-local-address"),       # IPv6 literal without a port
    ("http://[2002:a9fe:a9fe::]/x", "link-local-address"),       # 6to4 form of the metadata service
    ("http://[2002:7f00:1::]:8080/x", "loopback-address"),       # 6to4 form of 127.0.0.1
    ("http://[64:ff9b::a9fe:a9fe]/x", "link-local-address"),     # NAT64 form
    ("http://127.0.0.1:99999/x", "bad-url: Port out of range"),
    ("http://127.0.0.1:0/x", "bad-url: port 0"),
    ("http://127.0.0.1:http/x", "bad-url:"),
    ("http://[::1/x", "bad-url:"),                                # unclosed bracket
    ("http://exa mple.org/x", "bad-url: whitespace"),
    ("http://a..b/x", "bad-url: host is not a valid domain name"),  # empty IDNA label
    ("http://\u00e9" + "x" * 70 + ".org/x", "bad-url: host is not a valid domain name"),  # label > 63
    ("ftp://example.org/x", "bad-url:"),
    ("javascript:alert(1)", "bad-url:"),
]


def test_every_bad_url_becomes_a_failed_row_and_the_stage_finishes(ws: Workspace) -> None:
    write_catalog_subset(ws, "s", rows_for([u for u, _ in BAD_URLS]))
    stats = fetch(ws, "s", shard_size=4, options=STRICT)
    assert stats.complete and stats.counts == {"failed": len(BAD_URLS)}
    index = {r["key"]: r for r in read_index(ws.images_dir("s")).to_pylist()}
    for i, (url, reason) in enumerate(BAD_URLS):
        assert index[f"synthetic:{i:04d}"]["reason"].startswith(reason), (url, index[f"synthetic:{i:04d}"])
    assert stats.reasons["failed: bad-url"] >= 8  # the summary counts reasons


@pytest.mark.parametrize("ip, why", [
    ("2002:7f00:1::", "loopback"), ("2002:a9fe:a9fe::1", "link-local"), ("2002:0a00:0001::", "private"),
    ("64:ff9b::7f00:1", "loopback"), ("64:ff9b::a9fe:a9fe", "link-local"), ("::ffff:a9fe:a9fe", "link-local"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo
    ("2002:0808:0808::", None), ("64:ff9b::808:808", "reserved"),
])
def test_ipv4_addresses_inside_ipv6_forms(ip: str, why: str | None) -> None:
    assert blocked_reason(ip) == why


def test_spaces_in_a_url_path_are_percent_encoded(server) -> None:
    url, state = server
    state.images["a%20b.jpg"] = (noise_image(1, (300, 300)), "image/jpeg")  # the server sees the raw path
    client = PoliteClient(HTTP)
    assert client.fetch(f"{url}/img/a b.jpg").data == state.images["a%20b.jpg"][0]
    with pytest.raises(FetchFailure, match="http-404"):  # CR/LF cannot inject a header
        client.fetch(f"{url}/img/x\r\nX-Evil: 1")


def test_credentials_never_reach_shards_or_indexes(ws: Workspace, server) -> None:
    url, state = server
    state.images["a.jpg"] = (noise_image(2, (300, 300)), "image/jpeg")
    authed = url.replace("http://", "http://alice:s3cr3t@")
    rows = rows_for([f"{authed}/img/a.jpg", f"{authed}/missing/a.jpg", "http://bob:hunter2@127.0.0.1:99999/x"])
    rows[0]["landing_url"] = "https://carol:pa55@example.org/page"
    write_catalog_subset(ws, "s", rows)
    stats = fetch(ws, "s", options=OPTIONS)
    assert stats.counts == {"ok": 1, "failed": 2}
    out = ws.images_dir("s")
    for path in out.glob("shard-*"):
        data = path.read_bytes()
        for secret in (b"s3cr3t", b"hunter2", b"pa55", b"alice", b"bob:"):
            assert secret not in data, (path.name, secret)
    meta = next(iter_shard(out / "shard-00000.tar")).meta
    assert meta["download_url"] == f"{url}/img/a.jpg" and meta["fetched_from"] == f"{url}/img/a.jpg"
    assert meta["landing_url"] == "https://example.org/page"
    assert redact_credentials("error at https://u:p@h/x and http://v@w") == "error at https://h/x and http://w"


def test_a_truncated_tar_is_named_reported_and_fetched_again(ws: Workspace, server) -> None:
    url, state = server
    for i in range(4):
        state.images[f"i{i}.jpg"] = (noise_image(10 + i, (300, 300)), "image/jpeg")
    write_catalog_subset(ws, "s", rows_for([f"{url}/img/i{i}.jpg" for i in range(4)]))
    fetch(ws, "s", shard_size=2, options=OPTIONS)
    tar = ws.images_dir("s") / "shard-00001.tar"
    good = tar.read_bytes()
    tar.write_bytes(good[: len(good) // 3])

    with pytest.raises(ShardError, match=r"shard-00001\.tar is damaged .*opencanvas fetch --subset s"):
        list(iter_shard(tar))
    report = fetch_stats(ws, "s", plot=False)
    assert list(report["damaged_shards"]) == ["shard-00001.tar"]
    assert "index recorded" in report["damaged_shards"]["shard-00001.tar"]

    hits = sum(state.hits.values())
    stats = fetch(ws, "s", shard_size=2, options=OPTIONS)
    assert stats.shards_done_before == 1 and stats.shards_fetched == 1
    assert any("shard-00001.tar has" in n and "fetching shard-00001 again" in n for n in stats.notes)
    assert sum(state.hits.values()) == hits + 2  # only the damaged shard's two images
    assert len(list(iter_shard(tar))) == 2 and "damaged_shards" not in fetch_stats(ws, "s", plot=False)
    # Same size, different bytes: the sha256 catches it.
    flipped = bytearray(tar.read_bytes())
    flipped[600] ^= 0xFF
    tar.write_bytes(bytes(flipped))
    assert "sha256" in fetch_stats(ws, "s", plot=False)["damaged_shards"]["shard-00001.tar"]
    quick = replace(OPTIONS, verify="size")  # finds truncation only, without reading the tars
    assert fetch(ws, "s", shard_size=2, options=quick).shards_fetched == 0
    assert fetch(ws, "s", shard_size=2, options=OPTIONS).shards_fetched == 1


def test_the_duplicate_pass_keeps_tar_facts_current(ws: Workspace, server) -> None:
    url, state = server
    a = noise_image(20, (300, 300))
    state.images.update({"a.jpg": (a, "image/jpeg"), "b.jpg": (noise_image(21, (300, 300)), "image/jpeg")})
    write_catalog_subset(ws, "s", rows_for([f"{url}/img/a.jpg", f"{url}/img/b.jpg", f"{url}/img/a.jpg?2"]))
    assert fetch(ws, "s", shard_size=2, options=OPTIONS).duplicates_across_shards == 1
    assert "damaged_shards" not in fetch_stats(ws, "s", plot=False)  # the rewritten tar matches its index
    assert fetch(ws, "s", shard_size=2, options=OPTIONS).shards_fetched == 0


def test_atomic_writes_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o027)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640


def test_index_parquet_is_readable_by_others(ws: Workspace, server) -> None:
    url, state = server
    state.images["a.jpg"] = (noise_image(3, (300, 300)), "image/jpeg")
    write_catalog_subset(ws, "s", rows_for([f"{url}/img/a.jpg"]))
    old = os.umask(0o022)
    try:
        fetch(ws, "s", options=OPTIONS)
    finally:
        os.umask(old)
    index = ws.images_dir("s") / "shard-00000.parquet"
    assert stat.S_IMODE(index.stat().st_mode) == 0o644 and len(pq.read_table(index)) == 1


def test_the_fetch_summary_prints_skip_and_failure_reasons_with_counts(ws: Workspace, server) -> None:
    url, state = server
    state.images.update({"a.jpg": (noise_image(30, (300, 300)), "image/jpeg"),
                         "small.jpg": (noise_image(31, (100, 80)), "image/jpeg")})
    write_catalog_subset(ws, "s", rows_for([f"{url}/img/a.jpg", f"{url}/img/small.jpg", f"{url}/missing/a.jpg",
                                            f"{url}/missing/b.jpg", "http://127.0.0.1:99999/x"]))
    result = CliRunner().invoke(app, ["fetch", "-w", str(ws.root), "--subset", "s", "--allow-private-addresses",
                                      "--retries", "0", "--domain-rps", "0"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    summary = result.output[result.output.index("\nreasons"):]
    for line in ("failed: http-404", "skipped: too-small", "failed: bad-url"):
        assert line in summary
    assert re.search(r"failed: http-404\s*│\s*2", summary), summary


def test_caption_on_a_truncated_shard_names_it_and_says_to_fetch_again(ws: Workspace, server) -> None:
    url, state = server
    for i in range(2):
        state.images[f"c{i}.jpg"] = (noise_image(40 + i, (300, 300)), "image/jpeg")
    write_catalog_subset(ws, "s", rows_for([f"{url}/img/c{i}.jpg" for i in range(2)]))
    fetch(ws, "s", options=OPTIONS)
    tar = ws.images_dir("s") / "shard-00000.tar"
    tar.write_bytes(tar.read_bytes()[:700])
    result = CliRunner().invoke(app, ["caption", "-w", str(ws.root), "--subset", "s", "--captioner", "metadata"],
                                env={"COLUMNS": "300"})
    assert result.exit_code == 2, result.output
    assert "shard-00000.tar is damaged" in result.output and "opencanvas fetch --subset s" in result.output
