"""Attribution list: same credit lines as before on small catalogs, hostile text made inert, a summary at
scale, every used image in attribution.csv, and memory that does not grow with the catalog."""

from __future__ import annotations

import csv
import hashlib
import re
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from markdown_it import MarkdownIt

from opencanvas.cards import attribution as attribution_module
from opencanvas.cards.attribution import MODIFICATION_NOTE, write_attribution
from opencanvas.cards.records import UsedImages
from opencanvas.catalog.ingest import write_done_record
from opencanvas.catalog.schema import CATALOG_SCHEMA, SUBSET_SCHEMA
from opencanvas.model_license import obligations
from opencanvas.shards import INDEX_SCHEMA
from opencanvas.splits import key_fraction
from opencanvas.storage import atomic_write_parquet
from opencanvas.workspace import Workspace
from tests.factories import catalog_row

MD = MarkdownIt("commonmark", {"html": True})


def _row(i: int, lic: str, creator: str, title: str | None = None) -> dict:
    r = catalog_row(f"{i:03d}", title or f"image {i}", license_id=lic)
    r.update(creator=creator, license_url=f"https://creativecommons.org/licenses/{lic[3:]}/4.0/",
             license_version="4.0")
    return r


def used_workspace(ws: Workspace, rows: list[dict], subset: str = "s", failed: tuple[str, ...] = ()) -> None:
    """Catalog part + subset + one shard index (no tar: the cards read indexes only)."""
    atomic_write_parquet(ws.source_dir("synthetic") / "part-00000.parquet",
                         pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))
    write_done_record(ws, "synthetic", "test", "(test)", ["part-00000.parquet"], read=len(rows), ingested=len(rows))
    atomic_write_parquet(ws.subset_path(subset), pa.Table.from_pylist(
        [{"key": r["key"], "source": "synthetic", "license_id": r["license_id"]} for r in rows], schema=SUBSET_SCHEMA),
        metadata={"policy": "commercial", "catalog_hash": "test", "policy_text": "test"})
    now = datetime.now(UTC)
    index = [{"key": r["key"], "status": "failed" if r["key"] in failed else "ok", "reason": "", "sha256": "",
              "phash": "0" * 16, "width": 8, "height": 8, "original_width": 8, "original_height": 8, "bytes": 1,
              "fetched_at": now} for r in rows]
    atomic_write_parquet(ws.images_dir(subset) / "shard-00000.parquet",
                         pa.Table.from_pylist(index, schema=INDEX_SCHEMA))


def _write(ws: Workspace, out: Path, holdout: float = 0.0) -> dict:
    with UsedImages(ws, "s", holdout, out / ".spill") as images:
        return write_attribution(out, images)


def test_small_catalog_keeps_the_credit_lines_and_lists_every_image_in_the_csv(ws: Workspace, tmp_path: Path) -> None:
    rows = [_row(1, "cc-by", "Zoe"), _row(2, "cc0", "Ann"), _row(3, "cc-by-sa", "ann b"), _row(4, "cc-by", "Zoe")]
    used_workspace(ws, rows)
    counts = _write(ws, tmp_path)
    assert counts == {"attribution_required": 3, "no_attribution_needed": 1, "authors": 2, "listed": 4}
    listed = list(csv.DictReader((tmp_path / "attribution.csv").open()))
    assert [r["key"] for r in listed] == ["synthetic:002", "synthetic:003", "synthetic:001", "synthetic:004"]
    assert [r["attribution_required"] for r in listed] == ["no", "yes", "yes", "yes"]
    assert all(r["modification"] == MODIFICATION_NOTE and r["use"] == "training" for r in listed)
    md = (tmp_path / "ATTRIBUTION.md").read_text()
    # The credit lines as the in-memory version wrote them.
    assert ("## [ann b](https://example.org/author) (1)\n\n- \"image 3\" by ann b, [source](https://example.org/003), "
            "[CC BY-SA 4.0](https://creativecommons.org/licenses/by-sa/4.0/); resized and center-cropped for "
            "training.\n\n## [Zoe](https://example.org/author) (2)\n\n- \"image 1\" by Zoe, "
            "[source](https://example.org/001), [CC BY 4.0](https://creativecommons.org/licenses/by/4.0/); "
            f"{MODIFICATION_NOTE}.\n- \"image 4\" by Zoe") in md
    assert "1 are public domain or CC0" in md and "4 images: 4 for training and 0 held out" in md
    assert "lists all 4 images, public-domain ones included" in md


def test_public_domain_only_says_so_instead_of_listing_none(ws: Workspace, tmp_path: Path) -> None:
    used_workspace(ws, [_row(i, "cc0", "Ann") for i in range(3)])
    _write(ws, tmp_path)
    md = (tmp_path / "ATTRIBUTION.md").read_text()
    assert "Every image credited" not in md and "No image here needs attribution" in md
    assert len(list(csv.DictReader((tmp_path / "attribution.csv").open()))) == 3   # not just a header row
    assert "courteous" in " ".join(obligations({"cc0"}, "commercial"))


HOSTILE = [
    ("<script>alert(1)</script>", "Eve\n# Fake heading"),
    ('<img src=x onerror="alert(1)">', "=HYPERLINK(\"http://evil\",\"x\")"),
    ("title <!--", "+cmd|' /C calc'!A0"),
    ("\u202eexe.txt", "-2+3"),
    ("ok\r\n| a | b |", "@SUM(1)"),
    ("[x](javascript:alert(1))", "\x1b[31mred\x00"),
]


def test_hostile_titles_authors_and_urls_are_inert(ws: Workspace, tmp_path: Path) -> None:
    rows = []
    for i, (title, creator) in enumerate(HOSTILE):
        r = _row(i, "cc-by", creator, title)
        r.update(creator_url="javascript:alert(1)", landing_url="data:text/html,<script>x</script>")
        rows.append(r)
    rows.append(_row(99, "cc-by", "Last Author"))   # must not be hidden by an earlier '<!--'
    used_workspace(ws, rows)
    _write(ws, tmp_path)
    html = MD.render((tmp_path / "ATTRIBUTION.md").read_text())
    assert set(re.findall(r"<(/?[a-z0-9]+)", html)) <= {"h1", "/h1", "h2", "/h2", "p", "/p", "ul", "/ul", "li",
                                                       "/li", "a", "/a", "code", "/code"}
    assert all(re.match(r"https?://", h) for h in re.findall(r'href="([^"]*)"', html))
    assert html.count("<li>") == len(rows) and html.count("<h2>") == len(rows) and "Last Author" in html
    cells = [c for r in csv.reader((tmp_path / "attribution.csv").open()) for c in r]
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    assert not any(ch in c for c in cells for ch in "\x00\x1b\r\n\u202e")
    listed = list(csv.DictReader((tmp_path / "attribution.csv").open()))
    assert len(listed) == len(rows) and {r["creator_url"] for r in listed} <= {"", "https://example.org/author"}


def test_large_catalog_gives_a_summary_and_the_top_authors(ws: Workspace, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attribution_module, "FULL_LIST_MAX", 5)
    monkeypatch.setattr(attribution_module, "TOP_AUTHORS", 2)
    rows = [_row(i, "cc-by", ["Ann", "Bob", "Cy", "Dee"][i % 4] if i < 8 else "Ann") for i in range(12)]
    used_workspace(ws, rows)
    counts = _write(ws, tmp_path)
    md = (tmp_path / "ATTRIBUTION.md").read_text()
    assert counts["listed"] == 12 and counts["authors"] == 4
    assert "## The 2 authors with the most images" in md and "| [Ann](https://example.org/author) | 6 |" in md
    assert "... and 2 more authors" in md and "image 1\"" not in md


def test_held_out_split_in_sql_is_the_key_fraction_rule(ws: Workspace, tmp_path: Path) -> None:
    rows = [_row(i, "cc0", "Ann") for i in range(600)]
    used_workspace(ws, rows, failed=("synthetic:005",))
    counts = _write(ws, tmp_path, holdout=0.3)
    listed = list(csv.DictReader((tmp_path / "attribution.csv").open()))
    expected = {r["key"] for r in rows if r["key"] != "synthetic:005" and key_fraction(r["key"]) < 0.3}
    assert {r["key"] for r in listed if r["use"] != "training"} == expected
    assert counts["listed"] == 599   # the failed fetch is not used
    assert int.from_bytes(hashlib.sha256(b"x").digest()[:8], "big") / 2**64 == key_fraction("x")


def test_memory_does_not_grow_with_the_catalog(ws: Workspace, tmp_path: Path) -> None:
    """Python-side peak while writing 40k credits stays far below what holding the rows would take."""
    n = 40_000
    template = _row(0, "cc-by", "x")
    columns = {f.name: [template[f.name]] * n for f in CATALOG_SCHEMA}
    columns.update(key=[f"synthetic:{i:06d}" for i in range(n)], title=[f"image {i}" for i in range(n)],
                   creator=[f"author {i % 5000}" for i in range(n)])
    used_workspace(ws, pa.Table.from_pydict(columns, schema=CATALOG_SCHEMA).to_pylist())
    del columns
    tracemalloc.start()
    try:
        counts = _write(ws, tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts["listed"] == n
    assert peak < 12 * 2**20, f"peak {peak / 2**20:.1f} MiB"   # 40k row dicts alone are ~40 MiB
