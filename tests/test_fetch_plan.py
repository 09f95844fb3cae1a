"""The streaming fetch plan: DuckDB shards in key order, a plan file with the subset's digest, re-planning
with a message when the subset changed, per-shard row reads, and `fetch --dry-run` (no HTTP)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from opencanvas.catalog.schema import SUBSET_SCHEMA
from opencanvas.cli import app
from opencanvas.fetch.http import HttpConfig
from opencanvas.fetch.plan import PLAN_FILE, keys_digest, load_plan, shard_rows
from opencanvas.fetch.stage import FetchOptions, dry_run, fetch
from opencanvas.fetch.testing import ServerState, image_server, noise_image, write_catalog_subset
from opencanvas.shards import read_index
from opencanvas.storage import atomic_write_parquet, parquet_metadata
from opencanvas.workspace import Workspace
from tests.factories import catalog_row

OPTIONS = FetchOptions(threads=2, http=HttpConfig(timeout=0.5, retries=0, allow_private_addresses=True,
                                                  domain_rps=0))


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with image_server(ServerState()) as running:
        yield running


def rows(n: int, url: str = "https://img.example.org", start: int = 0) -> list[dict]:
    out = []
    for i in range(start, start + n):
        row = catalog_row(f"{i:04d}", f"image {i}")
        row["download_url"] = f"{url}/img/i{i}.jpg"
        out.append(row)
    return out


def test_plan_cuts_sorted_keys_into_shards_with_digests(ws: Workspace) -> None:
    catalog = rows(11)
    write_catalog_subset(ws, "s", catalog[::-1])  # written out of key order
    plan = load_plan(ws, "s", 4)
    keys = sorted(r["key"] for r in catalog)
    assert [(s.first_key, s.last_key, s.rows) for s in plan.shards] == [
        (keys[0], keys[3], 4), (keys[4], keys[7], 4), (keys[8], keys[10], 3)]
    assert [s.keys_sha256 for s in plan.shards] == [keys_digest(keys[i:i + 4]) for i in (0, 4, 8)]
    assert plan.rows == 11 and not plan.note
    # A shard reads its own rows only, with the catalog row of each key.
    got = shard_rows(ws, "s", plan.shards[1])
    assert [k for k, _ in got] == keys[4:8] and [r["title"] for _, r in got] == [f"image {i}" for i in range(4, 8)]
    meta = parquet_metadata(ws.images_dir("s") / PLAN_FILE)
    assert meta["shard_size"] == "4" and len(meta["subset_sha256"]) == 64


def test_a_changed_subset_is_planned_again_with_a_message(ws: Workspace, server) -> None:
    url, state = server
    catalog = rows(6, url)
    for i in range(6):
        state.images[f"i{i}.jpg"] = (noise_image(100 + i, (300, 300)), "image/jpeg")
    write_catalog_subset(ws, "s", catalog)
    plan_file = ws.images_dir("s") / PLAN_FILE
    assert load_plan(ws, "s", 3).note == ""
    written = plan_file.stat().st_mtime_ns
    assert load_plan(ws, "s", 3).note == "" and plan_file.stat().st_mtime_ns == written  # read, not redone
    # The subset loses a key before any shard is fetched: a new plan, and the run says why.
    smaller = pa.Table.from_pylist([{c: r.get(c) for c in SUBSET_SCHEMA.names} for r in catalog[1:]],
                                   schema=SUBSET_SCHEMA)
    atomic_write_parquet(ws.subset_path("s"), smaller)
    stats = fetch(ws, "s", shard_size=3, options=OPTIONS)
    assert any(re.search(r"subset 's' changed since .*plan\.parquet was written .*planned again", n)
               for n in stats.notes), stats.notes
    assert sorted(read_index(ws.images_dir("s")).column("key").to_pylist()) == [r["key"] for r in catalog[1:]]
    # The subset changes again after the shards were fetched: never mixed with the old shards.
    atomic_write_parquet(ws.subset_path("s"), pa.Table.from_pylist(
        [{c: r.get(c) for c in SUBSET_SCHEMA.names} for r in catalog], schema=SUBSET_SCHEMA))
    with pytest.raises(ValueError, match="different subset or --shard-size"):
        fetch(ws, "s", shard_size=3, options=OPTIONS)


def test_a_worker_refuses_rows_that_are_not_its_plan(ws: Workspace) -> None:
    catalog = rows(4)
    write_catalog_subset(ws, "s", catalog)
    shard = load_plan(ws, "s", 4).shards[0]
    atomic_write_parquet(ws.subset_path("s"), pa.Table.from_pylist(
        [{c: r.get(c) for c in SUBSET_SCHEMA.names} for r in catalog[:3]], schema=SUBSET_SCHEMA))
    with pytest.raises(ValueError, match="changed after shard 0 was planned"):
        shard_rows(ws, "s", shard)


def test_dry_run_counts_hosts_and_makes_no_request(ws: Workspace, server) -> None:
    url, state = server
    catalog = rows(5, url) + rows(3, "https://Other.example.org:8443", start=5)
    catalog.append({**catalog_row("0008", "local"), "local_path": "local/x.png"})
    write_catalog_subset(ws, "s", catalog)
    report = dry_run(ws, "s", shard_size=4)
    assert report["shards"] == 3 and report["rows"] == 9 and report["rows_to_fetch"] == 9
    assert report["rows_per_host"] == {"127.0.0.1": 5, "other.example.org": 3, "(local file)": 1}
    assert sum(state.hits.values()) == 0 and (ws.images_dir("s") / PLAN_FILE).exists()
    result = CliRunner().invoke(app, ["fetch", "-w", str(ws.root), "--subset", "s", "--dry-run",
                                      "--shard-size", "4", "--rank", "1", "--world", "2"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "rows_per_host" in result.output and "other.example.org" in result.output
    assert "shards_this_rank" in result.output and sum(state.hits.values()) == 0
    assert not list(ws.images_dir("s").glob("shard-*"))


def test_not_found_lists_the_subsets_that_exist(ws: Workspace) -> None:
    write_catalog_subset(ws, "cc", rows(1))
    write_catalog_subset(ws, "nc", rows(1))
    with pytest.raises(FileNotFoundError, match=r"no subset 'commercial' .*subsets here: cc, nc.*catalog subset"):
        fetch(ws, "commercial", options=OPTIONS)
    result = CliRunner().invoke(app, ["fetch", "-w", str(ws.root), "--subset", "commercial", "--dry-run"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "subsets here: cc, nc" in result.output
