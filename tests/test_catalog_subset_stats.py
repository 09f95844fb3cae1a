"""Subsets by license policy, stats and the catalog CLI verbs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.schema import SUBSET_SCHEMA
from opencanvas.catalog.stats import catalog_stats
from opencanvas.catalog.subset import catalog_hash, fraction_threshold, key_position, make_subset
from opencanvas.cli import app
from opencanvas.licenses import POLICIES
from opencanvas.splits import key_fraction
from opencanvas.storage import parquet_metadata
from opencanvas.workspace import Workspace
from tests.test_catalog_sources import openverse_record, write_jsonl, write_yfcc, yfcc_mixed

LICENSES = [("cc0", "1.0"), ("pdm", "1.0"), ("by", "4.0"), ("by-sa", "4.0"), ("by-nc", "4.0"),
            ("by-nc-sa", "4.0"), ("by-nd", "4.0"), ("by-nc-nd", "4.0")]


@pytest.fixture
def mixed_ws(ws: Workspace, tmp_path: Path) -> Workspace:
    """Openverse records under all eight open licenses plus one GPL record."""
    records = [openverse_record(i, license=name, license_version=version, license_url=None)
               for i, (name, version) in enumerate(LICENSES)]
    records.append(openverse_record(99, license="gpl", license_version="2.0", license_url=None))
    ingest(ws, "openverse", [write_jsonl(tmp_path / "ov.jsonl", records)])
    return ws


def subset_licenses(path: Path) -> set[str]:
    return set(pq.read_table(path)["license_id"].to_pylist())


def test_commercial_and_noncommercial_subsets(mixed_ws: Workspace) -> None:
    c = make_subset(mixed_ws, "commercial", "cc")
    nc = make_subset(mixed_ws, "noncommercial", "nc")
    assert subset_licenses(c) == {"cc0", "pdm", "cc-by", "cc-by-sa"} == POLICIES["commercial"]
    assert subset_licenses(nc) == POLICIES["noncommercial"]
    assert not {"cc-by-nd", "cc-by-nc-nd", "other"} & subset_licenses(nc)
    meta = parquet_metadata(c)
    assert meta["policy"] == "commercial" and "CommonCatalog-C" in meta["policy_text"]
    assert meta["catalog_hash"] == catalog_hash(mixed_ws) and meta["created_at"].startswith("20")
    assert pq.read_table(c).column_names == ["key", "source", "license_id"]
    assert pq.read_schema(c).remove_metadata().equals(SUBSET_SCHEMA)
    keys = pq.read_table(nc)["key"].to_pylist()
    assert keys == sorted(keys) and len(keys) == len(set(keys))
    assert sorted(p.name for p in c.parent.iterdir()) == ["cc.parquet", "nc.parquet"]  # no temp or spill files


def test_catalog_hash_is_stable_and_tracks_content(mixed_ws: Workspace, tmp_path: Path) -> None:
    h = catalog_hash(mixed_ws)
    assert catalog_hash(mixed_ws) == h
    ingest(mixed_ws, "openverse", [tmp_path / "ov.jsonl"])  # idempotent re-run: same catalog
    assert catalog_hash(mixed_ws) == h
    ingest(mixed_ws, "openverse", [write_jsonl(tmp_path / "more.jsonl", [openverse_record(500)])])
    assert catalog_hash(mixed_ws) != h


def test_subset_errors(ws: Workspace, mixed_ws: Workspace) -> None:
    with pytest.raises(ValueError, match="unknown policy 'research'"):
        make_subset(mixed_ws, "research", "x")
    with pytest.raises(ValueError, match="subset name"):
        make_subset(mixed_ws, "commercial", "../escape")
    with pytest.raises(ValueError, match="ingest a source first"):
        make_subset(Workspace.open(ws.root.parent / "empty"), "commercial", "x")


def test_stats_counts_and_balance(mixed_ws: Workspace, tmp_path: Path) -> None:
    ingest(mixed_ws, "yfcc100m", [write_yfcc(tmp_path / "y.tsv", yfcc_mixed())])
    s = catalog_stats(mixed_ws)
    assert s["sources"]["openverse"] == {"inputs": 1, "read": 9, "ingested": 8, "quarantined": 1, "balanced": True}
    assert s["sources"]["yfcc100m"] == {"inputs": 1, "read": 8, "ingested": 3, "quarantined": 5, "balanced": True}
    assert s["total"] == {"read": 17, "ingested": 11, "quarantined": 6, "balanced": True}
    assert s["licenses"]["cc-by-sa"] == 2 and s["licenses"]["cc-by-nc-nd"] == 2
    assert s["policies"] == {"commercial": 6, "noncommercial": 8}
    assert s["quarantine"] == {"encoding": 2, "license:other": 2, "malformed": 1, "video": 1}
    assert s["quarantine_by_source"]["openverse"] == {"license:other": 1}
    json.dumps(s)  # JSON-able


def test_cli_ingest_stats_subset(tmp_path: Path) -> None:
    runner = CliRunner()
    ws = tmp_path / "ws"
    ov = write_jsonl(tmp_path / "ov.jsonl", [openverse_record(i) for i in range(3)])
    r = runner.invoke(app, ["catalog", "ingest", "openverse", str(ov), "-w", str(ws)])
    assert r.exit_code == 0, r.output
    assert "ingested 3" in r.output
    r = runner.invoke(app, ["catalog", "stats", "--json", "-w", str(ws)])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.output)
    assert stats["total"]["ingested"] == 3
    chart = ws / stats["chart"]
    assert chart.name == "license_composition.png" and Image.open(chart).size[0] > 100
    r = runner.invoke(app, ["catalog", "stats", "-w", str(ws)])
    assert r.exit_code == 0 and "license_composition.png" in r.output
    again = json.loads(runner.invoke(app, ["catalog", "stats", "--json", "-w", str(ws)]).output)
    assert list(again["sources"]) == ["openverse"]  # the chart's folder is not a source
    r = runner.invoke(app, ["catalog", "subset", "--policy", "noncommercial", "--name", "nc", "-w", str(ws)])
    assert r.exit_code == 0 and "3 images" in r.output
    assert (ws / "subsets" / "nc.parquet").exists()


def test_cli_wrong_format_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "dump.txt"
    bad.write_text("hello\n")
    r = CliRunner().invoke(app, ["catalog", "ingest", "yfcc100m", str(bad), "-w", str(tmp_path / "ws")])
    assert r.exit_code == 2
    assert "dump.txt" in r.output and "tab-separated" in r.output
    r = CliRunner().invoke(app, ["catalog", "ingest", "flickr", str(bad), "-w", str(tmp_path / "ws")])
    assert r.exit_code == 2 and "unknown source" in r.output


def test_cli_help_lists_verbs() -> None:
    r = CliRunner().invoke(app, ["catalog", "--help"])
    assert r.exit_code == 0
    for verb in ("ingest", "subset", "stats", "sources"):
        assert verb in r.output


# ---- issue 12: nested random fractions of a subset ---------------------------------------


@pytest.fixture(scope="module")
def big_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """2,000 open images plus 200 ND ones (never in a subset, whatever the fraction)."""
    tmp = tmp_path_factory.mktemp("fractions")
    records = [openverse_record(i) for i in range(2000)]
    records += [openverse_record(10_000 + i, license="by-nd", license_version="2.0", license_url=None)
                for i in range(200)]
    ws = Workspace.open(tmp / "ws")
    ingest(ws, "openverse", [write_jsonl(tmp / "ov.jsonl", records)])
    return ws


def subset_keys(path: Path) -> list[str]:
    return pq.read_table(path)["key"].to_pylist()


def test_fractions_nest_and_follow_the_seed(big_ws: Workspace) -> None:
    everything = subset_keys(make_subset(big_ws, "commercial", "all"))
    assert len(everything) == 2000
    by_fraction = {f: subset_keys(make_subset(big_ws, "commercial", f"f{f}", fraction=f, seed=7))
                   for f in (0.1, 0.3, 1.0)}
    assert by_fraction[1.0] == everything
    assert set(by_fraction[0.1]) < set(by_fraction[0.3]) < set(everything)
    assert 120 < len(by_fraction[0.1]) < 280 and 480 < len(by_fraction[0.3]) < 720
    # the rule is the documented hash, computed the same way in Python
    expected = sorted(k for k in everything if key_position(k, 7) < fraction_threshold(0.3))
    assert by_fraction[0.3] == expected
    # deterministic for a seed, different across seeds
    assert subset_keys(make_subset(big_ws, "commercial", "again", fraction=0.3, seed=7)) == by_fraction[0.3]
    other_seed = subset_keys(make_subset(big_ws, "commercial", "s8", fraction=0.3, seed=8))
    assert other_seed != by_fraction[0.3] and 480 < len(other_seed) < 720


def test_max_rows_nests_inside_the_fraction(big_ws: Workspace) -> None:
    tenth = set(subset_keys(make_subset(big_ws, "commercial", "tenth", fraction=0.1, seed=3)))
    fifty = subset_keys(make_subset(big_ws, "commercial", "fifty", fraction=0.1, seed=3, max_rows=50))
    hundred = subset_keys(make_subset(big_ws, "commercial", "hundred", fraction=0.1, seed=3, max_rows=100))
    assert len(fifty) == 50 and len(hundred) == 100 and fifty == sorted(fifty)
    assert set(fifty) < set(hundred) < tenth
    lowest = sorted(tenth, key=lambda k: (key_position(k, 3), k))[:50]
    assert set(fifty) == set(lowest)
    assert len(subset_keys(make_subset(big_ws, "commercial", "cap", max_rows=5000))) == 2000


def test_fraction_and_seed_are_in_the_metadata(big_ws: Workspace) -> None:
    meta = parquet_metadata(make_subset(big_ws, "noncommercial", "meta", fraction=0.25, seed=11, max_rows=40))
    assert (meta["fraction"], meta["seed"], meta["max_rows"], meta["policy"]) == ("0.25", "11", "40", "noncommercial")
    meta = parquet_metadata(make_subset(big_ws, "noncommercial", "whole"))
    assert (meta["fraction"], meta["seed"], meta["max_rows"]) == ("1.0", "0", "")


def test_fractions_leave_the_held_out_split_alone(big_ws: Workspace) -> None:
    """The held-out rule has no seed: about a tenth of any seed's fraction is held out, the same keys each time."""
    for seed in (0, 1, 2):
        keys = subset_keys(make_subset(big_ws, "commercial", f"h{seed}", fraction=0.5, seed=seed))
        held = [k for k in keys if key_fraction(k) < 0.1]
        assert 0.05 < len(held) / len(keys) < 0.15
        assert set(held) <= {k for k in subset_keys(big_ws.subset_path("all")) if key_fraction(k) < 0.1}


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_fraction_outside_zero_one_is_an_error(big_ws: Workspace, fraction: float) -> None:
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        make_subset(big_ws, "commercial", "bad", fraction=fraction)
    r = CliRunner().invoke(app, ["catalog", "subset", "--policy", "commercial", "--name", "bad",
                                 "--fraction", str(fraction), "-w", str(big_ws.root)])
    assert r.exit_code == 2 and "must be in (0, 1]" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_cli_fraction(big_ws: Workspace) -> None:
    r = CliRunner().invoke(app, ["catalog", "subset", "--policy", "commercial", "--name", "cli10", "--fraction",
                                 "0.1", "--seed", "7", "--max-rows", "150", "-w", str(big_ws.root)])
    assert r.exit_code == 0, r.output
    keys = subset_keys(big_ws.subset_path("cli10"))
    assert len(keys) <= 150 and "fraction 0.1, seed 7" in r.output
    assert set(keys) <= set(subset_keys(make_subset(big_ws, "commercial", "lib10", fraction=0.1, seed=7)))


def test_subset_spills_to_disk_in_a_fresh_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With DuckDB's memory capped, the sort spills beside the subset file (a folder that may not exist yet)
    and the subset still comes out whole and in key order; no spill folder is left."""
    import numpy as np
    import pyarrow as pa

    import opencanvas.catalog.query as query_module
    from opencanvas.catalog.ingest import write_done_record
    from opencanvas.catalog.schema import CATALOG_SCHEMA

    ws = Workspace.open(tmp_path / "ws")
    n = 1_000_000
    ids = np.random.default_rng(0).permutation(n)
    columns = {f.name: pa.nulls(n, f.type) for f in CATALOG_SCHEMA}
    pad = "k" * 200  # ~210 MB of keys to sort, well over the cap
    columns.update(key=pa.array([f"folder:{pad}{i:09d}" for i in ids]), source=pa.array(["folder"] * n),
                   license_id=pa.array(["cc-by"] * n), derivatives_ok=pa.array([True] * n))
    source_dir = ws.source_dir("folder")
    source_dir.mkdir(parents=True)
    pq.write_table(pa.table(columns, schema=CATALOG_SCHEMA), source_dir / "part-0.parquet")
    write_done_record(ws, "folder", "unit", "synthetic", ["part-0.parquet"], read=n, ingested=n)
    monkeypatch.setattr(query_module, "COPY_MEMORY_LIMIT", "128MB")
    path = make_subset(ws, "commercial", "all")
    keys = pq.read_table(path)["key"]
    assert len(keys) == n
    assert (keys[0].as_py(), keys[n - 1].as_py()) == (f"folder:{pad}{0:09d}", f"folder:{pad}{n - 1:09d}")
    assert pq.read_table(path, columns=["key"])["key"].to_pylist() == sorted(keys.to_pylist())
    assert [p.name for p in path.parent.iterdir()] == ["all.parquet"]
