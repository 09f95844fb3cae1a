"""Model captioners through the real code paths: tiny BLIP-2 / BLIP saved to disk, loaded by --model DIR."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from opencanvas.caption.captioners import GenerationSettings
from opencanvas.caption.stage import caption
from opencanvas.caption.tiny_models import save_tiny_blip, save_tiny_blip2, save_tiny_llava
from opencanvas.caption.vision import CaptionModelError, load_model_captioner, weights_revision
from opencanvas.captions import read_captions
from opencanvas.cli import app
from opencanvas.shards import INDEX_SCHEMA, ShardWriter
from opencanvas.storage import atomic_write_parquet, sha256_file
from opencanvas.workspace import Workspace
from tests.factories import catalog_row, make_image_subset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def blip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip2(tmp_path_factory.mktemp("models") / "tiny-blip2")


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


def _captions(ws: Workspace, name: str) -> dict[str, str]:
    t = read_captions(ws, name)
    return dict(zip(t.column("key").to_pylist(), t.column("caption").to_pylist()))


def _add_shard_with_corrupt_image(ws: Workspace, subset: str, shard: int) -> str:
    row = catalog_row("broken", "a broken image")
    writer = ShardWriter(ws.images_dir(subset) / f"shard-{shard:05d}.tar")
    writer.add(row["key"], b"\x89PNG truncated", "png", row)
    writer.close()
    index = [{"key": row["key"], "status": "ok", "reason": ""}]
    atomic_write_parquet(ws.images_dir(subset) / f"shard-{shard:05d}.parquet",
                         pa.Table.from_pylist(index).cast(pa.schema([INDEX_SCHEMA.field(n) for n in index[0]])))
    return row["key"]


def test_blip2_cli_captions_like_a_user_with_downloaded_weights(ws: Workspace, blip2_dir: Path) -> None:
    keys = make_image_subset(ws, n=10, shard_size=4)
    broken = _add_shard_with_corrupt_image(ws, "shapes", 3)
    result = CliRunner().invoke(app, [
        "caption", "--subset", "shapes", "--captioner", "blip2", "--model", str(blip2_dir), "--batch-size", "3",
        "--max-new-tokens", "12", "--loader-workers", "1", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "captioned 11 images in 4 shards" in result.output
    table = read_captions(ws, "blip2")
    rows = {r["key"]: r for r in table.to_pylist()}
    assert sorted(rows) == sorted([*keys, broken])  # exactly one row per ok image
    assert rows[broken]["flagged"].startswith("unreadable") and rows[broken]["caption"] == ""
    row = rows[keys[0]]
    assert row["model_id"] == str(blip2_dir) and row["model_revision"] == weights_revision(blip2_dir)
    assert row["model_revision"].startswith("sha256:") and row["preprocessing"] == "center-crop 512"
    assert json.loads(row["generation"])["max_new_tokens"] == 12
    made = [r["caption"] for r in rows.values() if not r["flagged"]]
    assert made and all(0 < len(c.split()) <= 12 for c in made)
    assert all("<image>" not in r["caption"] for r in rows.values())


def test_hf_auto_class_path_matches_blip2_adapter(ws: Workspace, blip2_dir: Path) -> None:
    """Generic AutoModelForImageTextToText + processor in the main process == BLIP-2 adapter + worker preprocessing."""
    make_image_subset(ws, n=6, shard_size=3)
    settings = dict(model=str(blip2_dir), batch_size=3, generation=GenerationSettings(max_new_tokens=8))
    caption(ws, "shapes", "blip2", loader_workers=0, **settings)
    caption(ws, "shapes", "hf", loader_workers=1, **settings)
    assert _captions(ws, "hf") == _captions(ws, "blip2")
    with pytest.raises(ValueError, match=r"other settings \(generation differ"):
        caption(ws, "shapes", "blip2", model=str(blip2_dir), generation=GenerationSettings(max_new_tokens=9))


def test_same_seed_same_captions_other_seed_differs(ws: Workspace, blip2_dir: Path) -> None:
    make_image_subset(ws, n=6, shard_size=3)
    runs = {}
    for name, seed, workers in (("s7", 7, 0), ("s7-again", 7, 2), ("s8", 8, 0)):
        gen = GenerationSettings(max_new_tokens=10, do_sample=True, temperature=1.5, seed=seed)
        caption(ws, "shapes", "blip2", model=str(blip2_dir), batch_size=2, name=name, generation=gen,
                loader_workers=workers)
        runs[name] = _captions(ws, name)
    assert runs["s7"] == runs["s7-again"]
    assert runs["s7"] != runs["s8"]


def test_blip_strips_the_prompt_it_echoes(blip_dir: Path) -> None:
    from PIL import Image

    captioner = load_model_captioner("blip", str(blip_dir), name="blip", device="cpu", dtype="fp32",
                                     prompt="a picture of", generation=GenerationSettings(max_new_tokens=6),
                                     preprocessing="center-crop 512")
    pixels = captioner.image_processor(images=[Image.new("RGB", (40, 40), (200, 30, 30))],
                                       return_tensors="pt")["pixel_values"]  # (1, 3, 32, 32)
    [(text, _flag)] = captioner.caption([], pixels)
    inputs, echoed = captioner.inputs(pixels)
    assert echoed == inputs["input_ids"].shape[1] - 1  # BOS + "a picture of", not the final [SEP]
    raw = captioner.model.generate(**inputs, max_new_tokens=6)
    full = captioner.processor.batch_decode(raw, skip_special_tokens=True)[0]
    assert " ".join(full.split()) == " ".join(f"a picture of {text}".split())
    assert captioner.provenance.prompt == "a picture of"


def test_hf_chat_model_gets_its_template_and_loses_the_echoed_prompt(ws: Workspace, tmp_path: Path) -> None:
    """LLaVA-style models: prompt wrapped in the chat template, caption = only the new tokens."""
    model = save_tiny_llava(tmp_path / "tiny-llava")
    make_image_subset(ws, n=4, shard_size=4)
    stats = caption(ws, "shapes", "hf", model=str(model), prompt="describe the image", batch_size=2,
                    name="llava", loader_workers=0, generation=GenerationSettings(max_new_tokens=5))
    assert stats.images == 4
    rows = read_captions(ws, "llava").to_pylist()
    assert all(r["prompt"] == "describe the image" for r in rows)
    # echoed, "USER: describe the image ASSISTANT:" alone is 5 words: only the <= 5 new tokens may remain
    assert any(r["caption"] for r in rows) and all(len(r["caption"].split()) <= 5 for r in rows)
    captioner = load_model_captioner("hf", str(model), name="llava", device="cpu", dtype="fp32",
                                     prompt="describe the image", generation=GenerationSettings(max_new_tokens=5),
                                     preprocessing="center-crop 512")
    assert captioner._prompt_text() == "USER: <image>\ndescribe the image ASSISTANT:"


def test_missing_model_says_how_to_provide_it(ws: Workspace, tmp_path: Path) -> None:
    make_image_subset(ws, n=2, shard_size=2)
    with pytest.raises(CaptionModelError, match="huggingface-cli download"):
        caption(ws, "shapes", "blip2", model=str(tmp_path / "no-such-dir"))
    with pytest.raises(CaptionModelError, match="huggingface-cli download Salesforce/blip2-opt-2.7b"):
        caption(ws, "shapes", "blip2")  # hub id, but the tests run offline
    result = CliRunner().invoke(app, ["caption", "--subset", "shapes", "--captioner", "blip", "--model",
                                      str(tmp_path / "nope"), "-w", str(ws.root)])
    assert result.exit_code == 2 and "--model" in result.output


@pytest.mark.slow
def test_killed_run_resumes_without_duplicates_or_gaps(ws: Workspace, blip2_dir: Path, tmp_path: Path) -> None:
    keys = make_image_subset(ws, n=24, shard_size=3)
    args = ["caption", "--subset", "shapes", "--captioner", "blip2",
           "--model", str(blip2_dir), "--batch-size", "1", "--max-new-tokens", "30", "--loader-workers", "0",
           "-w", str(ws.root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCANVAS_PROGRESS": "0"}
    out = ws.captions_dir("blip2")
    proc = subprocess.Popen([sys.executable, "-m", "opencanvas", *args], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("part-*.parquet")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p.name: sha256_file(p) for p in out.glob("part-*.parquet")}
    assert 0 < len(done_before) < 8, "the run must be killed part-way"
    result = CliRunner().invoke(app, args)  # the same command again (in-process: one interpreter start less)
    assert result.exit_code == 0, result.output
    assert f"({len(done_before)} already done)" in result.output
    parts = {p.name: sha256_file(p) for p in out.glob("part-*.parquet")}
    assert len(parts) == 8 and all(parts[n] == h for n, h in done_before.items())  # finished shards kept
    assert not list(out.glob(".*tmp"))  # no half-written parts left behind
    table = read_captions(ws, "blip2")
    assert sorted(table.column("key").to_pylist()) == sorted(keys)  # each image exactly once
    # and the resumed table equals an uninterrupted run
    fresh = Workspace.open(tmp_path / "fresh")
    make_image_subset(fresh, n=24, shard_size=3)
    caption(fresh, "shapes", "blip2", model=str(blip2_dir), batch_size=1, loader_workers=0)
    assert _captions(ws, "blip2") == _captions(fresh, "blip2")


def test_one_word_tokenizer_for_tiny_captioners_and_text_encoders() -> None:
    """Both tiny tokenizers come from `word_tokenizer`: ids are the specials then the words, and
    punctuation splits off (so "circle." is the word circle, not an unknown token)."""
    from opencanvas.caption.tiny_models import word_tokenizer
    from opencanvas.sample.tiny import tiny_tokenizer

    opt_style = word_tokenizer(["<pad>", "<unk>", "</s>"], "</s> $A", bos_token="</s>", eos_token="</s>",
                               pad_token="<pad>", unk_token="<unk>")
    assert opt_style("a red circle.")["input_ids"] == [2, 3, 11, 17, 1]
    clip_style = tiny_tokenizer()
    assert clip_style("a red circle.")["input_ids"] == [1, 4, 8, 14, 3, 2]
    assert clip_style.model_max_length == 16
