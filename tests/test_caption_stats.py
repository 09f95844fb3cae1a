"""`caption stats`: counts, flags, lengths, vocabulary, duplicates, histogram and sample table."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
from PIL import Image
from typer.testing import CliRunner

from opencanvas.caption.stage import caption
from opencanvas.caption.stats import caption_stats, text_stats
from opencanvas.captions import CAPTION_SCHEMA
from opencanvas.cli import app
from opencanvas.storage import atomic_write_parquet
from opencanvas.workspace import Workspace
from tests.factories import make_image_subset


def test_text_stats_counts() -> None:
    s = text_stats(["a red circle", "A red  circle", "a blue square on white", "", "x x x"],
                   ["", "", "", "empty", "repetitive"], lambda t: len(t.split()) + 1)
    assert s["count"] == 5 and s["flagged"] == {"empty": 1, "repetitive": 1}
    assert s["duplicate_share"] == 0.5  # 2 of the 4 non-empty captions are the same text
    assert s["vocabulary"] == len({"a", "red", "circle", "blue", "square", "on", "white", "x"})
    assert s["words"]["max"] == 5.0 and s["tokens"]["max"] == 6.0


def _write_synthetic(ws: Workspace, keys: list[str]) -> None:
    """A 'blip2' table as a model would leave it: one duplicate, one empty flagged row, a pipe to escape."""
    now = datetime.now(UTC)
    texts = ["a photo of a shape | logo"] + ["a drawing"] * 2 + [""] + [f"a shape number {i}" for i in range(4, 8)]
    rows = [{"key": k, "caption": t, "captioner": "blip2", "model_id": "tiny", "model_revision": "sha256:0",
             "prompt": "", "generation": "{}", "preprocessing": "center-crop 512",
             "flagged": "empty" if not t else "", "created_at": now} for k, t in zip(keys, texts)]
    atomic_write_parquet(ws.captions_dir("blip2") / "part-00000.parquet",
                         pa.Table.from_pylist(rows, schema=CAPTION_SCHEMA))


def test_stats_report_files_and_numbers(ws: Workspace) -> None:
    keys = make_image_subset(ws, n=8, shard_size=4)
    _write_synthetic(ws, keys[:4])  # blip2 only captioned the first shard so far
    report = caption_stats(ws, "shapes", sample=8)  # no metadata table yet: built from shard JSON
    b = report["captioners"]["blip2"]
    assert (b["count"], b["coverage"], b["flagged"]) == (4, 0.5, {"empty": 1})
    assert b["duplicate_share"] == round(2 / 3, 4)
    samples = (ws.root / report["paths"]["samples"]).read_text()
    assert "| `synthetic:00000` | a red circle | a photo of a shape \\| logo |" in samples
    assert samples.count("\n| `synthetic:") == 8 and "∅" in samples  # uncaptioned / empty cells shown

    caption(ws, "shapes", "metadata")
    report = caption_stats(ws, "shapes", sample=3, seed=1)
    m = report["captioners"]["metadata"]
    assert (m["count"], m["coverage"], m["flagged"], m["duplicate_share"]) == (8, 1.0, {}, 0.0)
    assert m["words"]["median"] == 3.0 and m["vocabulary"] == 1 + 4 + 2  # 'a', 4 colours, circle + square
    saved = json.loads((ws.root / report["paths"]["json"]).read_text())
    assert saved["captioners"]["metadata"]["count"] == 8 and "_words" not in saved["captioners"]["metadata"]
    png = Image.open(ws.root / report["paths"]["histogram"])
    assert png.size[0] > 500 and png.format == "PNG"
    assert str(report["paths"]["json"]).startswith("captions/stats/shapes/")


def test_stats_cli_prints_paths_and_fails_clearly(ws: Workspace) -> None:
    make_image_subset(ws, n=4, shard_size=4)
    runner = CliRunner()
    result = runner.invoke(app, ["caption", "stats", "--subset", "shapes", "-w", str(ws.root)])
    assert result.exit_code == 2 and "--captioner metadata" in result.output
    caption(ws, "shapes", "metadata")
    result = runner.invoke(app, ["caption", "stats", "--subset", "shapes", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "metadata: 4 captions" in result.output and "samples.md" in result.output
    assert (ws.root / "captions/stats/shapes/lengths.png").exists()
    result = runner.invoke(app, ["caption", "-w", str(ws.root)])
    assert result.exit_code == 2 and "--subset" in result.output
