"""`caption score`, `caption stats` with scores, and `caption select`, on shape images with the tiny CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from opencanvas.caption.stats import caption_stats, scores_path
from opencanvas.caption_quality.score import score_captions
from opencanvas.caption_quality.select import select_captions
from opencanvas.captions import CAPTION_SCHEMA, read_captions
from opencanvas.cli import app
from opencanvas.components.loading import load_clip_evaluator
from opencanvas.fetch.decode import load_rgb
from opencanvas.shards import iter_shard
from opencanvas.storage import atomic_write_parquet
from opencanvas.workspace import Workspace
from tests.factories import make_captions, make_image_subset


def _reversed_captions(ws: Workspace, name: str) -> None:
    """A second caption table: each shard's metadata captions in reverse order (mostly the wrong image)."""
    for part in sorted(ws.captions_dir("metadata").glob("part-*.parquet")):
        table = pq.read_table(part)
        captions = table.column("caption").to_pylist()[::-1]
        table = table.set_column(1, "caption", pa.array([f"a {c}" for c in captions], pa.string()))
        table = table.set_column(2, "captioner", pa.array([name] * len(captions), pa.string()))
        atomic_write_parquet(ws.captions_dir(name) / part.name, table.cast(CAPTION_SCHEMA))


@pytest.fixture
def scored(ws: Workspace, tmp_path: Path):
    from opencanvas.sample.tiny import write_tiny_clip

    make_image_subset(ws, "shapes", n=32, size=32, shard_size=16)
    make_captions(ws, "shapes", "metadata")
    _reversed_captions(ws, "reversed")
    clip = load_clip_evaluator(None, str(write_tiny_clip(tmp_path / "clip")))
    return ws, clip


def test_score_is_the_clip_score_of_each_caption_with_its_own_image(scored) -> None:
    ws, clip = scored
    stats = score_captions(ws, "shapes", "metadata", clip)
    assert stats.captions == stats.scored == 32 and not stats.quarantined
    table = pq.read_table(scores_path(ws, "shapes", "metadata"))
    assert table.schema.metadata[b"clip"] == clip.name.encode()
    rows = {r["key"]: r for r in table.to_pylist()}
    captions = dict(zip(*(read_captions(ws, "metadata").column(c).to_pylist() for c in ("key", "caption"))))
    image = next(iter_shard(ws.images_dir("shapes") / "shard-00000.tar"))
    want = clip.clip_score([load_rgb(image.data)], [captions[image.key]])[0]
    assert rows[image.key]["clip_score"] == pytest.approx(want, abs=1e-4)
    assert rows[image.key]["error"] == "" and rows[image.key]["caption"] == captions[image.key]


def test_round_trip_is_the_mean_image_cosine_of_generations_and_original(scored, tmp_path: Path) -> None:
    from opencanvas.caption_quality.score import RoundTrip
    from opencanvas.sample.generate import generate
    from opencanvas.sample.loading import load_folder_pipeline
    from opencanvas.sample.tiny import write_tiny_folder

    ws, clip = scored
    model = load_folder_pipeline(write_tiny_folder(tmp_path / "model"))
    trip = RoundTrip(model, "tiny", seeds=2, steps=2, sampler="euler")
    score_captions(ws, "shapes", "metadata", clip, round_trip=trip)
    table = pq.read_table(scores_path(ws, "shapes", "metadata"))
    assert table.schema.metadata[b"run"] == b"tiny" and table.column("round_trip").null_count == 0
    row = table.to_pylist()[0]
    original = next(img for img in iter_shard(ws.images_dir("shapes") / "shard-00000.tar") if img.key == row["key"])
    made = generate(model, [row["caption"]], n=2, steps=2, guidance=5.0, sampler="euler", seed=0)
    want = (clip.image_features(made) @ clip.image_features([load_rgb(original.data)])[0]).mean()
    assert row["round_trip"] == pytest.approx(want, abs=1e-4)
    summary = caption_stats(ws, "shapes")["captioners"]["metadata"]["clip_score"]["round_trip"]
    assert summary["run"] == "tiny" and summary["scored"] == 32


def test_a_damaged_shard_is_quarantined_and_the_rest_is_scored(scored) -> None:
    ws, clip = scored
    tar = ws.images_dir("shapes") / "shard-00001.tar"
    tar.write_bytes(tar.read_bytes()[:700])
    stats = score_captions(ws, "shapes", "metadata", clip)
    assert stats.scored == 16 and stats.quarantined == {"damaged shard": 16}
    table = pq.read_table(scores_path(ws, "shapes", "metadata")).to_pylist()
    bad = [r for r in table if r["clip_score"] is None]
    assert len(bad) == 16 and all("re-run `opencanvas fetch --subset shapes`" in r["error"] for r in bad)


def test_stats_show_scores_per_captioner_with_a_histogram(scored) -> None:
    ws, clip = scored
    score_captions(ws, "shapes", "metadata", clip)
    report = caption_stats(ws, "shapes")
    got = report["captioners"]["metadata"]["clip_score"]
    values = pq.read_table(scores_path(ws, "shapes", "metadata")).column("clip_score").to_numpy()
    assert got["scored"] == 32 and got["mean"] == pytest.approx(values.mean(), abs=1e-3)
    assert "clip_score" not in report["captioners"]["reversed"]  # not scored: nothing made up
    assert (ws.root / report["paths"]["score_histogram"]).read_bytes()[:4] == b"\x89PNG"


def test_select_keeps_each_images_best_caption_with_its_source(scored) -> None:
    ws, clip = scored
    with pytest.raises(FileNotFoundError, match="caption score --subset shapes --captioner metadata"):
        select_captions(ws, "shapes", ["metadata", "reversed"], "best")
    for name in ("metadata", "reversed"):
        score_captions(ws, "shapes", name, clip)
    record = select_captions(ws, "shapes", ["metadata", "reversed"], "best")
    score = {name: {r["key"]: r["clip_score"] for r in pq.read_table(scores_path(ws, "shapes", name)).to_pylist()}
             for name in ("metadata", "reversed")}
    best = read_captions(ws, "best").to_pylist()
    assert len(best) == record["images"] == 32
    assert sorted(p.name for p in ws.captions_dir("best").glob("part-*")) == ["part-00000.parquet",
                                                                            "part-00001.parquet"]
    for row in best:
        other = "reversed" if row["captioner"] == "metadata" else "metadata"
        assert score[row["captioner"]][row["key"]] >= score[other][row["key"]]
    assert record["chosen"] == {n: sum(r["captioner"] == n for r in best) for n in ("metadata", "reversed")}
    assert json.loads((ws.captions_dir("best") / "selection.json").read_text())["clip"] == clip.name
    assert 0 < record["chosen"]["metadata"] < 32  # a real choice between the two


def test_cli_scores_selects_and_errors_in_one_line(scored, tmp_path: Path) -> None:
    ws, clip = scored
    runner = CliRunner()
    for name in ("metadata", "reversed"):
        result = runner.invoke(app, ["caption", "score", "--subset", "shapes", "--captioner", name,
                                     "--clip", str(tmp_path / "clip"), "-w", str(ws.root)])
        assert result.exit_code == 0, result.output
        assert "scored 32 of 32 captions" in result.output
    result = runner.invoke(app, ["caption", "select", "--subset", "shapes", "--from", "metadata,reversed",
                                 "--name", "best", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    stats = runner.invoke(app, ["caption", "stats", "--subset", "shapes", "-w", str(ws.root)])
    assert stats.exit_code == 0 and "CLIP score" in stats.output
    for args, message in [(["score", "--subset", "shapes", "--captioner", "blip2", "--clip", str(tmp_path / "clip")],
                           "--captioner blip2` first"),
                          (["score", "--subset", "shapes", "--captioner", "metadata"], "pass --clip"),
                          (["select", "--subset", "shapes", "--from", "metadata", "--name", "b2"], "two or more")]:
        result = runner.invoke(app, ["caption", *args, "-w", str(ws.root)])
        assert result.exit_code != 0 and message in " ".join(result.output.split()), result.output
        assert "Traceback" not in result.output
