"""`evaluate` end to end on tiny models and a synthetic workspace: report, plots, resume,
planted memorization, held-out prompts, Inception plumbing and clear errors for missing weights."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.sample.evalsets import heldout_prompts, load_reference
from opencanvas.sample.evaluate import build_scorers, evaluate
from opencanvas.sample.features import INCEPTION_FILE, InceptionFeatures, clean_resize
from opencanvas.sample.loading import load_folder_pipeline
from opencanvas.sample.tiny import write_tiny_clip, write_tiny_folder
from opencanvas.workspace import Workspace
from tests.factories import make_captions, make_image_subset

DATA = {"subset": "shapes", "captioners": ["metadata"], "policy": "commercial", "catalog_hash": "cafe01",
        "text_encoder": "not-a-catalog-clip"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"folder": write_tiny_folder(root / "tiny", provenance={"run": "tiny", "config": {"data": DATA}}),
            "clip": write_tiny_clip(root / "clip")}


@pytest.fixture(scope="module")
def eval_ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace.open(tmp_path_factory.mktemp("eval") / "ws")
    make_image_subset(ws, "shapes", n=40, size=32, shard_size=20)
    make_captions(ws, "shapes", "metadata")
    return ws


def _evaluate(ws: Workspace, models: dict[str, Path], reference: str = "shapes", **kw) -> dict:
    from opencanvas.components.loading import load_clip_evaluator

    pipe = load_folder_pipeline(models["folder"])
    args = dict(metrics=("fid", "kid", "clip", "pr", "memorization"), guidance_scales=(3.0,), n=6, steps=2,
                sampler="euler", batch_size=6, clip=load_clip_evaluator(None, str(models["clip"])), pipeline=pipe)
    args.update(kw)
    return evaluate(ws, "tiny", ["a red circle", "a blue square", "a green triangle"], reference, **args)


def test_report_rows_plots_and_resume(eval_ws: Workspace, models: dict[str, Path]) -> None:
    report = _evaluate(eval_ws, models)
    root = eval_ws.run_dir("tiny") / "eval" / report["eval_id"]
    assert [r["guidance"] for r in report["rows"]] == [0.0, 3.0] and report["rows"][0]["baseline"]
    assert report["fd_metric"] == "FD-CLIP" and report["kid_metric"] == "KID-CLIP"  # never called FID
    assert report["clip_model"] == str(models["clip"]) and report["license_policy"] == "commercial"
    for row in report["rows"]:
        assert row["FD-CLIP"] > 0 and np.isfinite(row["KID-CLIP"]) and 0 <= row["clip_score"] <= 100
        assert 0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1
        assert 0 <= row["memorization"]["share_cosine_above"] <= 1
    assert len(list((root / "g3").glob("*.png"))) == 6 and len(list((root / "g0").glob("*.png"))) == 6
    assert json.loads((root / "report.json").read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    md = (root / "report.md").read_text()
    assert "FD-CLIP" in md and "not FID" in md and "(unconditional)" in md
    gain = report["rows"][1]["clip_score"] - report["rows"][0]["clip_score"]
    assert report["clip_gain_over_unconditional"] == pytest.approx(gain)
    assert Image.open(root / "tradeoff.png").size[0] > 100 and (root / "memorization.png").exists()
    # Resume: the same command keeps every image and reproduces the numbers.
    mtimes = {p: p.stat().st_mtime_ns for p in root.glob("g*/*.png")}
    (root / "g3" / "00004.png").unlink()
    again = _evaluate(eval_ws, models)
    assert again["eval_id"] == report["eval_id"]
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items() if p.name != "00004.png")
    assert again["rows"][1]["FD-CLIP"] == pytest.approx(report["rows"][1]["FD-CLIP"], rel=1e-3)


def test_memorization_finds_a_planted_training_image(eval_ws: Workspace, models: dict[str, Path],
                                                     tmp_path: Path) -> None:
    first = _evaluate(eval_ws, models, metrics=("memorization",))
    generated = eval_ws.run_dir("tiny") / "eval" / first["eval_id"] / "g3" / "00002.png"
    refs = tmp_path / "refs"
    refs.mkdir()
    for i, img in enumerate(load_reference(eval_ws, "shapes", 12).images):
        img.save(refs / f"ref{i:02d}.png")
    shutil.copy(generated, refs / "planted.png")   # a "training image" identical to a sample
    report = _evaluate(eval_ws, models, reference=str(refs), metrics=("memorization",))
    mem = report["rows"][1]["memorization"]
    assert mem["share_phash_within"] >= 1 / 6 and mem["min_phash_distance"] == 0
    assert mem["max_cosine"] == pytest.approx(1.0, abs=1e-5)
    top = report["memorization_gallery"]["pairs"][0]
    assert top["reference"] == "planted.png" and top["phash_distance"] == 0


def test_heldout_prompts_are_the_hash_split(eval_ws: Workspace) -> None:
    prompts = heldout_prompts(eval_ws, {"data": DATA}, fraction=0.25)
    keys = [f"synthetic:{i:05d}" for i in range(40)]
    held = [k for k in keys if int.from_bytes(hashlib.sha256(k.encode()).digest()[:8], "big") / 2**64 < 0.25]
    assert 0 < len(held) < 40
    colors, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle"]
    expected = [f"a {colors[int(k[-5:]) % 4]} {shapes[(int(k[-5:]) // 4) % 3]}" for k in sorted(held)]
    assert prompts == expected
    with pytest.raises(ValueError, match="--prompts FILE"):
        heldout_prompts(eval_ws, {"data": {}})


def _fake_inception(path: Path) -> Path:
    """A TorchScript stand-in with clean-fid's call signature (the real file is not available offline)."""

    class FakeInception(torch.nn.Module):
        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            if x.shape[1:] != (3, 299, 299) or x.max() > 255:
                raise ValueError("expected (B, 3, 299, 299) in [0, 255]")
            stats = torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1) / 255   # (B, 6)
            return stats.repeat(1, 342)[:, :2048]                                        # (B, 2048)

    torch.jit.script(FakeInception()).save(str(path))
    return path


def test_inception_path_gives_fid_with_clean_resize(eval_ws: Workspace, models: dict[str, Path],
                                                    tmp_path: Path) -> None:
    path = _fake_inception(tmp_path / INCEPTION_FILE)
    images = [Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (20, 40), (0, 0, 255))]
    feats = InceptionFeatures(path)(images)
    assert feats.shape == (2, 2048) and feats[0, 0] == pytest.approx(1.0, abs=1e-3)
    resized = clean_resize(images[1])
    assert resized.shape == (299, 299, 3) and resized.dtype == np.float32
    report = _evaluate(eval_ws, models, metrics=("fid", "kid", "clip"), inception=path)
    assert report["fd_metric"] == "FID" and "FID" in report["rows"][1] and "KID" in report["rows"][1]
    assert report["features"] == INCEPTION_FILE.removesuffix(".pt")


def test_missing_weights_name_the_file_to_provide(eval_ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=INCEPTION_FILE):
        build_scorers(eval_ws, {"data": DATA}, ["fid"], tmp_path / "nope.pt", clip=object())
    with pytest.raises(FileNotFoundError, match="--clip NAME_OR_PATH"):
        build_scorers(eval_ws, {"data": DATA}, ["clip"], None, clip=None)


def test_eval_cli(eval_ws: Workspace, models: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["eval", "--pipeline", str(models["folder"]), "--prompts", "heldout", "--reference", "shapes",
            "--metrics", "clip,fid", "--guidance", "2", "-n", "4", "--steps", "2", "--clip", str(models["clip"]),
            "-w", str(eval_ws.root)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "FD-CLIP" in result.output and "report:" in result.output
    bad = runner.invoke(app, [*args, "--inception", str(tmp_path / "missing.pt")])
    assert bad.exit_code == 2 and INCEPTION_FILE in bad.output


def test_report_says_what_memorization_searched_and_warns_when_it_cannot_mean_much(
        eval_ws: Workspace, models: dict[str, Path]) -> None:
    report = _evaluate(eval_ws, models, metrics=("memorization",))
    searched = report["memorization_reference"]
    assert searched["source"] == "subset:shapes" and searched["count"] == 40 and searched["training_subset"]
    md = (eval_ws.run_dir("tiny") / "eval" / report["eval_id"] / "report.md").read_text()
    assert "memorization searched the training subset `shapes` (40 images, held-out ones included" in md
    assert any("n=6 images per guidance scale is too few" in n for n in report["notes"])
    sep = report["feature_separation"]
    assert 0 < sep["pairs"] and -1 <= sep["median_cosine"] <= 1
    warned = any("cannot separate unrelated images" in n for n in report["notes"])
    assert warned == (sep["median_cosine"] >= 0.75)


def test_feature_space_that_cannot_separate_images_is_named(eval_ws: Workspace, models: dict[str, Path]) -> None:
    """A feature extractor that maps every image near one direction: every sample 'memorized', with a caveat."""
    from opencanvas.sample.evaluate import EvalOptions, caveats

    rng = np.random.default_rng(0)
    collapsed = np.ones((30, 16)) + 0.01 * rng.normal(size=(30, 16))
    spread = rng.normal(size=(30, 16))
    report: dict = {"features": "weak-clip"}
    notes = caveats(EvalOptions(n=200), collapsed, report)
    assert len(notes) == 1 and "weak-clip" in notes[0] and "cannot separate unrelated images" in notes[0]
    assert report["feature_separation"]["share_above_threshold"] == 1.0
    assert caveats(EvalOptions(n=200), spread, {}) == []


@pytest.mark.parametrize("n, metrics, message", [
    (2, ("fid", "clip", "pr"), "leave pr out of --metrics (--metrics fid,clip)"),
    (3, ("pr",), "raise -n, or leave pr out of --metrics"),
    (1, ("clip",), "at least 2 images per guidance scale"),
])
def test_small_n_errors_say_what_to_do(eval_ws: Workspace, models: dict[str, Path], n: int, metrics: tuple,
                                       message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _evaluate(eval_ws, models, metrics=metrics, n=n)


def test_prompt_retrieval_per_guidance_with_chance(eval_ws: Workspace, models: dict[str, Path]) -> None:
    report = _evaluate(eval_ws, models, metrics=("clip", "retrieval"))
    assert report["prompt_retrieval_chance"] == {"top1": pytest.approx(1 / 3), "top5": 1.0, "prompts": 3}
    for row in report["rows"]:
        assert 0 <= row["prompt_retrieval_top1"] <= 1 and row["prompt_retrieval_top5"] == 1.0   # 3 prompts < 5
    md = (eval_ws.run_dir("tiny") / "eval" / report["eval_id"] / "report.md").read_text()
    assert "retrieval top-1" in md and "chance is 0.333 / 1.000" in md
