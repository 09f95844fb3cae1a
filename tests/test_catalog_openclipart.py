"""The openclipart adapter on the real Open Clip Art Library (Debian openclipart-svg/png)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.query import catalog_rows, query
from opencanvas.catalog.sources import InputFormatError
from opencanvas.catalog.sources.openclipart import library_root, parse_rdf, plan
from opencanvas.catalog.stats import catalog_stats
from opencanvas.workspace import Workspace


def test_subtree_fields_match_the_files(ws: Workspace, clipart_root: Path) -> None:
    sub = clipart_root / "svg" / "science"
    stats = ingest(ws, "openclipart", [sub])
    assert stats.read == stats.ingested + stats.quarantined > 10
    rows = catalog_rows(ws).to_pylist()
    svgs = {p.relative_to(clipart_root / "svg").with_suffix("").as_posix()
            for p in sub.rglob("*.svg") if not p.is_symlink()}
    assert {r["source_id"] for r in rows} == svgs  # stable keys: path without extension
    r = next(r for r in rows if r["title"] and r["tags"] and r["creator"])
    svg = (clipart_root / "svg" / r["source_id"]).with_suffix(".svg")
    work = parse_rdf(svg.read_bytes())
    assert work is not None and r["key"] == f"openclipart:{r['source_id']}" and r["category"] == "science"
    assert r["title"] in svg.read_text(errors="replace")
    with Image.open(r["local_path"]) as im:  # the PNG twin, and its size read from the header
        assert (im.width, im.height) == (r["width"], r["height"])
    assert r["license_id"] == "pdm" and r["commercial_ok"] and not r["attribution_required"]


def test_not_a_clipart_tree(ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(InputFormatError, match=str(tmp_path) + r".*Open Clip Art Library"):
        ingest(ws, "openclipart", [tmp_path])


def test_library_root(clipart_root: Path) -> None:
    assert library_root(clipart_root) == clipart_root / "svg"
    assert library_root(clipart_root / "svg" / "animals") == clipart_root / "svg"
    assert len(plan([clipart_root])) == 1 + sum(1 for d in (clipart_root / "svg").iterdir() if d.is_dir())


def test_full_library(ws: Workspace, clipart_root: Path) -> None:
    """All ~8k SVGs: empty licenses take the collection license, GPL items and aliases are quarantined."""
    stats = ingest(ws, "openclipart", [clipart_root], workers=2)
    all_svgs = list((clipart_root / "svg").rglob("*.svg"))
    assert stats.read == len(all_svgs)
    s = catalog_stats(ws)
    assert s["total"]["balanced"]
    links = sum(1 for p in all_svgs if p.is_symlink())
    assert s["quarantine"].get("duplicate", 0) + s["quarantine"].get("license:other", 0) >= links
    assert s["license_origin"]["collection"] > 0 and s["license_origin"]["item"] > 7000
    gpl = query(ws, "SELECT raw, detail FROM {quarantine} WHERE reason = 'license:other'").to_pylist()
    assert gpl and all("GPL" in q["detail"] for q in gpl)
    keys = catalog_rows(ws)["key"].to_pylist()
    assert len(keys) == len(set(keys)) == stats.ingested
    again = ingest(ws, "openclipart", [clipart_root])
    assert again.read == 0 and again.resumed == stats.inputs
