"""Cards and export agree: the exported README states the model's license and the same obligations as
MODEL_CARD, both give the hash of the published (EMA) weights and of the raw ones, `export` copies the
cards into its folder and `card` after `export` updates that copy."""

from __future__ import annotations

import re
from pathlib import Path

from opencanvas.cards.writer import write_cards
from opencanvas.model_license import obligations
from tests.test_train_pipeline import trained  # noqa: F401  (the tiny trained run, a module fixture)


def test_export_carries_license_hashes_and_cards_and_card_updates_it(trained, tmp_path: Path) -> None:  # noqa: F811
    from opencanvas.train.pipeline import load_pipeline
    from opencanvas.train.to_diffusers import export

    ws, _ = trained
    first = export(ws, "demo", tmp_path / "before-card")
    readme = (first / "README.md").read_text()
    assert re.search(r"^license: cc0-1\.0$", readme, re.MULTILINE)   # every training image is CC0
    assert "Run `opencanvas card --run demo`" in readme and not (first / "cards").exists()
    ema = load_pipeline(ws, "demo").weights_hash
    raw = load_pipeline(ws, "demo", ema=False).weights_hash
    assert ema != raw
    assert f"published (EMA) weights sha256 `{ema}`" in readme and f"raw weights sha256 `{raw}`" in readme

    cards = write_cards(ws, "demo")                       # card after export updates the export
    model_card = (cards / "MODEL_CARD.md").read_text()
    assert (first / "cards" / "MODEL_CARD.md").read_text() == model_card
    assert (first / "cards" / "attribution.csv").read_bytes() == (cards / "attribution.csv").read_bytes()
    assert f"| published weights (EMA) sha256 | `{ema}` |" in model_card
    assert f"| raw weights sha256 | `{raw}` |" in model_card
    assert "(`cc0-1.0`" in model_card
    for duty in obligations({"cc0"}, "commercial"):      # one wording: no contradiction between the two
        assert duty in model_card and duty in readme

    second = export(ws, "demo", tmp_path / "after-card")  # export copies existing cards
    assert (second / "cards" / "MODEL_CARD.md").read_text() == model_card
    assert "`cards/` holds the data card" in (second / "README.md").read_text()
    raw_export = export(ws, "demo", tmp_path / "raw", ema=False)
    raw_readme = (raw_export / "README.md").read_text()
    assert f"published (raw) weights sha256 `{raw}`" in raw_readme and ema not in raw_readme
