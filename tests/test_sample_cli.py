"""`opencanvas sample` end to end on a tiny diffusers folder: metadata, grid, determinism, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.sample.generate import generate
from opencanvas.sample.loading import load_folder_pipeline
from opencanvas.sample.pngmeta import REQUIRED_KEYS, read_png_meta
from opencanvas.sample.prompts import read_prompts
from opencanvas.sample.tiny import write_tiny_folder

PROVENANCE = {"run": "tiny-run", "weights_sha256": "f" * 64,
              "config": {"data": {"policy": "commercial", "catalog_hash": "cafe01"}}}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_folder(tmp_path_factory.mktemp("model") / "tiny", provenance=PROVENANCE)


def _sample(folder: Path, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(app, ["sample", "--pipeline", str(folder), "a red circle", "a blue square",
                                      "-n", "2", "--steps", "3", "--guidance", "4", "--seed", "7",
                                      "--batch-size", "3", "--out", str(out), "-w", str(out.parent / "ws"),
                                      *extra])
    assert result.exit_code == 0, result.output


def test_sample_writes_pngs_with_metadata_and_a_grid(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _sample(folder, out, "--negative-prompt", "a black square", "--sampler", "heun")
    pngs = sorted(out.glob("0*.png"))
    assert [p.name for p in pngs] == ["00000-s7.png", "00001-s8.png", "00002-s7.png", "00003-s8.png"]
    meta = read_png_meta(pngs[2])
    assert set(REQUIRED_KEYS) <= set(meta)
    assert meta["prompt"] == "a blue square" and meta["seed"] == 7 and meta["sampler"] == "heun"
    assert meta["negative_prompt"] == "a black square" and meta["steps"] == 3 and meta["guidance"] == 4.0
    assert meta["model"] == "tiny-run" and meta["weights_hash"] == "f" * 64
    assert meta["license_policy"] == "commercial" and meta["catalog_hash"] == "cafe01"
    assert Image.open(pngs[0]).text["prompt"] == "a red circle"  # plain PNG text chunk, for other tools
    grid = Image.open(out / "grid.png")
    assert grid.width >= 2 * 128 and grid.height > 2 * 128  # 2x2 cells of upscaled 16 px images + captions


def test_sample_is_deterministic_and_resumes(folder: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _sample(folder, a)
    _sample(folder, b, "--batch-size", "1")
    for pa, pb in zip(sorted(a.glob("0*.png")), sorted(b.glob("0*.png"))):
        diff = np.abs(np.asarray(Image.open(pa), int) - np.asarray(Image.open(pb), int))
        assert diff.max() <= 1, pa.name  # batch size changes float rounding only
    kept = a / "00001-s8.png"
    mtime = kept.stat().st_mtime_ns
    (a / "00002-s7.png").unlink()
    _sample(folder, a)
    assert (a / "00002-s7.png").exists() and kept.stat().st_mtime_ns == mtime


def test_guidance_changes_images_and_seeds_differ(folder: Path) -> None:
    pipe = load_folder_pipeline(folder)
    g1 = generate(pipe, ["a red circle"], n=2, steps=3, guidance=1.0, seed=0, sampler="euler")
    g5 = generate(pipe, ["a red circle"], n=2, steps=3, guidance=5.0, seed=0, sampler="euler")
    arr = [np.asarray(im, int) for im in g1 + g5]
    assert np.abs(arr[0] - arr[1]).max() > 0   # different seeds
    assert np.abs(arr[0] - arr[2]).max() > 0   # different guidance
    assert g1[0].size == (16, 16)              # the model's resolution by default


def test_bad_inputs_fail_clearly(folder: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["sample", "x", "--out", str(tmp_path / "o"), "-w", str(tmp_path)])
    assert r.exit_code == 2 and "--run NAME or --pipeline DIR" in r.output, r.output
    r = runner.invoke(app, ["sample", "x", "--pipeline", str(folder), "--sampler", "plms", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "choose one of" in r.output
    r = runner.invoke(app, ["sample", "x", "--pipeline", str(folder), "--size", "15x16", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "multiple of 2" in r.output, r.output


def test_prompt_readers(tmp_path: Path) -> None:
    (tmp_path / "p.txt").write_text("a red circle\n\n  a blue square \n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "one"}\n{"prompt": "two", "id": 2}\n')
    (tmp_path / "parti.tsv").write_text("Prompt\tCategory\tChallenge\tNote\n"
                                        "a cat\tAnimals\tBasic\t\nthe sky\tOutdoor Scenes\tBasic\t\n")
    (tmp_path / "captions.json").write_text(json.dumps({"images": [], "annotations": [
        {"image_id": 5, "id": 9, "caption": "later caption"}, {"image_id": 5, "id": 3, "caption": "first caption"},
        {"image_id": 1, "id": 4, "caption": "image one"}]}))
    assert read_prompts(tmp_path / "p.txt") == ["a red circle", "a blue square"]
    assert read_prompts(tmp_path / "p.jsonl") == ["one", "two"]
    assert read_prompts(tmp_path / "parti.tsv") == ["a cat", "the sky"]
    assert read_prompts(tmp_path / "captions.json") == ["image one", "first caption"]
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")


def test_sample_and_eval_a_trained_run(tmp_path: Path) -> None:
    """`--run` goes through opencanvas.train.load_pipeline: a tiny run trained on random latents,
    with tiny components saved where the latent set's specs ("synthetic") point."""
    from opencanvas.encode.synthetic import write_random_latents
    from opencanvas.sample.tiny import tiny_text_model, tiny_tokenizer, tiny_vae, write_tiny_clip
    from opencanvas.train import loop
    from opencanvas.workspace import Workspace
    from tests.factories import make_image_subset

    ws = Workspace.open(tmp_path / "ws")
    write_random_latents(ws, "lat", 16, resolution=16, downscale=2, text_len=8, text_dim=32, shard_size=8)
    tiny_vae(1).save_pretrained(ws.autoencoder_dir("synthetic"))
    tiny_text_model(2).save_pretrained(ws.clip_dir("synthetic"))
    tiny_tokenizer().save_pretrained(ws.clip_dir("synthetic"))
    loop.train(ws, "lat", "tiny", "r", images=16, batch=8)
    make_image_subset(ws, "shapes", n=8, size=16, shard_size=8)
    runner = CliRunner()
    out = tmp_path / "samples"
    r = runner.invoke(app, ["sample", "--run", "r", "a red circle", "--steps", "2", "--out", str(out),
                            "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    raw = tmp_path / "raw"
    r = runner.invoke(app, ["sample", "--run", "r", "a red circle", "--steps", "2", "--no-ema", "--out", str(raw),
                            "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert read_png_meta(raw / "00000-s0.png")["weights_hash"] != read_png_meta(out / "00000-s0.png")["weights_hash"]
    meta = read_png_meta(out / "00000-s0.png")
    assert meta["model"] == "r" and meta["license_policy"] == "commercial" and meta["catalog_hash"] == "synthetic"
    assert len(meta["weights_hash"]) == 64 and Image.open(out / "00000-s0.png").size == (16, 16)
    clip = write_tiny_clip(tmp_path / "clip")
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")
    r = runner.invoke(app, ["eval", "--run", "r", "--prompts", str(tmp_path / "p.txt"), "--reference", "shapes",
                            "--metrics", "clip,kid", "--guidance", "3", "-n", "4", "--steps", "2",
                            "--clip", str(clip), "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    report = json.loads(next((ws.run_dir("r") / "eval").glob("*/report.json")).read_text())
    assert report["kid_metric"] == "KID-CLIP" and [row["guidance"] for row in report["rows"]] == [0.0, 3.0]
