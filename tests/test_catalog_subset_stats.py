"""Subsets by license policy, stats and the catalog CLI verbs."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.stats import catalog_stats
from opencanvas.catalog.subset import POLICIES, catalog_hash, make_subset
from opencanvas.cli import app
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
