"""The demo pipeline end to end on a slice of the Open Clip Art Library.

Checks every stage's records, the cards' numbers against those records, and
that a second run does no work (no file in the workspace changes).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from opencanvas.catalog.ingest import done_records
from opencanvas.demo.pipeline import run_demo
from opencanvas.demo.settings import CAPTIONER, EVAL_CLIP, PROMPTS, RUN, SUBSET, DemoSettings
from opencanvas.shards import read_index
from opencanvas.workspace import Workspace


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_demo_pipeline_on_a_slice(clipart_root: Path, tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "demo")
    settings = DemoSettings(minutes=1.5, categories=("food",), clipart_root=clipart_root, eval_prompts=8,
                            grid_eval_images=8)
    results = run_demo(ws, settings)
    assert list(results) == ["ingest", "subset", "fetch", "caption", "autoencoder", "clip", "eval-clip", "encode",
                             "train", "sample", "eval", "card"]

    # Catalog: nothing lost.
    (record,) = done_records(ws, "openclipart")
    assert record["read"] == record["ingested"] + record["quarantined"]
    subset = pq.read_table(ws.subset_path(SUBSET))
    assert subset.num_rows == record["ingested"] > 100
    # Fetch: every subset key exactly once.
    index = read_index(ws.images_dir(SUBSET))
    assert sorted(index["key"].to_pylist()) == sorted(subset["key"].to_pylist())
    ok = sorted(k for k, s in zip(index["key"].to_pylist(), index["status"].to_pylist()) if s == "ok")
    assert len(ok) > 50
    # Captions: one per ok image.
    captions = pq.read_table(ws.captions_dir(CAPTIONER)).to_pylist()
    assert sorted(r["key"] for r in captions) == ok
    # Training ran and the grid exists.
    summary = json.loads((ws.run_dir(RUN) / "summary.json").read_text())
    assert summary["images_seen"] == results["train"]["images_seen"] > 0
    # The UNet's budget came from a measured warm-up, and the image count is recorded for exact re-runs.
    config = json.loads((ws.run_dir(RUN) / "config.json").read_text())
    assert config["measured_images_per_s"] == results["train"]["measured_images_per_s"] > 0
    assert config["images"] == results["train"]["images"] == summary["images_seen"]
    assert config["prediction_type"] == "v_prediction" and config["zero_terminal_snr"]   # the measured better recipe
    assert config["batch"] == 16 and config["preset"] == "tiny"   # batch 8 lost a third of the images per minute
    assert (ws.root / results["sample"]["grid"]).exists()
    # Eval reports a guided and an unconditional CLIP score.
    rows = results["eval"]["rows"]
    assert any(r["baseline"] for r in rows) and any(not r["baseline"] for r in rows)
    # ... scored by the evaluation-only CLIP, trained apart from the one the model conditions on.
    assert results["eval"]["clip"] == EVAL_CLIP and ws.clip_dir(EVAL_CLIP).is_dir()
    assert all(0 <= r["prompt_retrieval_top1"] <= r["prompt_retrieval_top5"] <= 1 for r in rows)
    assert results["eval"]["grid_chance"]["top1"] == pytest.approx(1 / len(PROMPTS))
    assert [r["guidance"] for r in results["eval"]["grid_rows"]] == [0.0, 5.0]

    # Cards: numbers traced to the records above.
    cards = ws.run_dir(RUN) / "cards"
    facts = json.loads((cards / "cards.json").read_text())
    assert facts["subset"]["count"] == subset.num_rows
    assert facts["fetch"]["by_status"]["ok"] == len(ok)
    assert facts["catalog"]["total"]["read"] == record["read"]
    attribution = facts["attribution"]
    assert attribution["attribution_required"] + attribution["no_attribution_needed"] == len(ok)
    listed = list(csv.DictReader((cards / "attribution.csv").open()))
    assert len(listed) == attribution["listed"] == len(ok)   # every used image, public-domain ones too
    data_card = (cards / "DATA_CARD.md").read_text()
    assert f"| fetched ok | {len(ok):,} |" in data_card
    model_card = (cards / "MODEL_CARD.md").read_text()
    assert "Commercial use allowed" in model_card and "trained here on subset" in model_card

    # A second run does no work.
    before = _mtimes(ws.root)
    again = run_demo(ws, settings)
    assert again == results
    assert _mtimes(ws.root) == before


def test_stop_after_names_the_stages_when_unknown(tmp_path: Path) -> None:
    (tmp_path / "clipart" / "svg").mkdir(parents=True)
    with pytest.raises(ValueError, match="unknown demo stage 'latents': choose from ingest, .*encode"):
        run_demo(Workspace.open(tmp_path / "ws"), DemoSettings(clipart_root=tmp_path / "clipart"),
                 stop_after="latents")
