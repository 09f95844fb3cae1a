from __future__ import annotations

import csv

from opencanvas.cards.attribution import MODIFICATION_NOTE, write_attribution
from opencanvas.cards.writer import obligations
from tests.factories import catalog_row


def _row(i: int, lic: str, creator: str) -> dict:
    r = catalog_row(f"{i:03d}", f"image {i}", license_id=lic)
    r.update(creator=creator, license_url=f"https://creativecommons.org/licenses/{lic[3:]}/4.0/",
             license_version="4.0")
    return r


def test_attribution_lists_every_by_image_grouped_by_author(tmp_path) -> None:
    rows = [_row(1, "cc-by", "Zoe"), _row(2, "cc0", "Ann"), _row(3, "cc-by-sa", "ann b"), _row(4, "cc-by", "Zoe")]
    counts = write_attribution(tmp_path, rows)
    assert counts == {"attribution_required": 3, "no_attribution_needed": 1, "authors": 2}
    listed = list(csv.DictReader((tmp_path / "attribution.csv").open()))
    assert [r["key"] for r in listed] == ["synthetic:003", "synthetic:001", "synthetic:004"]
    assert all(r["modification"] == MODIFICATION_NOTE for r in listed)
    md = (tmp_path / "ATTRIBUTION.md").read_text()
    assert "## [Zoe](https://example.org/author) (2)" in md
    assert "1 are public domain or CC0" in md and "4 images: 4 for training and 0 held out" in md
    assert md.count(MODIFICATION_NOTE) == 4  # 3 items + the header sentence


def test_obligations_name_share_alike_and_noncommercial_plainly() -> None:
    text = " ".join(obligations({"policy": "noncommercial", "by_license": {"cc-by-nc-sa": 2, "cc0": 1}}))
    assert "Attribution required" in text and "ShareAlike present" in text and "Non-commercial" in text
    text = " ".join(obligations({"policy": "commercial", "by_license": {"cc0": 5}}))
    assert "No attribution required" in text and "No ShareAlike" in text and "Commercial use allowed" in text
