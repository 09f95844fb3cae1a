"""Class and multi-caption conditioning end to end: train, kill -9 and resume, sample, evaluate, export or refuse.

One real encoded latent set (tiny components built from configs, two captioners) for the pipeline
tests; random latents in the store format, with a catalog written for their keys, for the resume test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from opencanvas.catalog.ingest import write_done_record
from opencanvas.catalog.schema import CATALOG_SCHEMA
from opencanvas.cli import app
from opencanvas.encode.synthetic import write_random_latents
from opencanvas.sample.generate import SampleSettings, sample_latents
from opencanvas.storage import atomic_write_parquet
from opencanvas.train import loop
from opencanvas.train.checkpoint import latest_checkpoint, load_checkpoint
from opencanvas.train.pipeline import load_pipeline
from opencanvas.workspace import Workspace
from tests.factories import catalog_row, kill_train_and_resume, make_captions, make_image_subset
from tests.test_train_pipeline import write_components

SMALL = dict(images=16, batch=8, checkpoint_every=0)
SAMPLE = SampleSettings(steps=2, guidance=3.0, sampler="euler", width=16, height=16)


def _shape_categories(ws: Workspace) -> None:
    """Catalog category = the shape word of the title (circle 16, square 16, triangle 16... of n)."""
    path = ws.source_dir("synthetic") / "part-00000.parquet"
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row["category"] = row["title"].split()[-1]
    atomic_write_parquet(path, pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    from opencanvas.encode import encode

    ws = Workspace.open(tmp_path_factory.mktemp("conditioning") / "ws")
    components = write_components(ws.root / "sd2-tiny")
    make_image_subset(ws, "shapes", n=16, size=32, shard_size=8)
    _shape_categories(ws)
    make_captions(ws, "shapes", "metadata")
    make_captions(ws, "shapes", "blip2")
    encode(ws, "shapes", str(components), str(components), ["metadata", "blip2"], "lat", resolutions=(16,))
    return ws


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) > 1e-6


def test_class_run_trains_samples_evaluates_and_exports(encoded: Workspace, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    from opencanvas.components.loading import load_clip_evaluator
    from opencanvas.sample.evaluate import evaluate
    from opencanvas.sample.loading import load_folder_pipeline
    from opencanvas.sample.pngmeta import read_image_meta
    from opencanvas.sample.tiny import write_tiny_clip

    loop.train(encoded, "lat", "tiny", "cls", class_column="category", validate_every=16, **SMALL)
    config = json.loads((encoded.run_dir("cls") / "config.json").read_text())
    # 16 images: circle 6, square 5, triangle 5 (colour-major titles) -> frequency, then name.
    assert config["class_names"] == ["circle", "square", "triangle"]
    assert config["unet"]["num_class_embeds"] == 4  # three classes + the null class
    assert (encoded.run_dir("cls") / "samples" / "grid-000000000016.png").exists()

    pipe = load_pipeline(encoded, "cls")
    circle = sample_latents(pipe, ["a red circle"], [0], SampleSettings(**{**SAMPLE.to_dict(), "class_name": "circle"}))
    square = sample_latents(pipe, ["a red circle"], [0], SampleSettings(**{**SAMPLE.to_dict(), "class_name": "square"}))
    assert _differs(circle, square)
    with pytest.raises(ValueError, match="unknown --class 'hexagon': this run knows 3 classes"):
        pipe.conditioning(["x"], "hexagon")

    clip = load_clip_evaluator(None, str(write_tiny_clip(tmp_path / "clip")))
    report = evaluate(encoded, "cls", ["a red circle", "a blue square"], "shapes", metrics=("memorization",),
                      guidance_scales=(3.0,), n=2, steps=2, sampler="euler", batch_size=2, pipeline=pipe,
                      clip=clip, class_name="square")
    assert [row["guidance"] for row in report["rows"]] == [0.0, 3.0]
    images = sorted((encoded.run_dir("cls") / "eval" / report["eval_id"]).rglob("g3/*.png"))
    assert len(images) == 2 and read_image_meta(images[0])["class"] == "square"

    out = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", "--run", "cls", "--out", str(out), "-w", str(encoded.root)])
    assert result.exit_code == 0, result.output
    assert "does not pass class_labels" in result.output
    unet = UNet2DConditionModel.from_pretrained(out / "unet")
    assert unet.config.num_class_embeds == 4 and unet.config.class_embed_type is None
    folder = load_folder_pipeline(out)  # `sample --pipeline` reads the classes from opencanvas.json
    assert folder.conditioning(["a red circle"], "square").class_labels.tolist() == [1]

    result = CliRunner().invoke(app, ["sample", "a red circle", "--run", "cls", "--class", "hexagon", "--out",
                                      str(tmp_path / "s"), "-w", str(encoded.root)])
    assert result.exit_code != 0 and "unknown --class 'hexagon'" in result.output
    assert "Traceback" not in result.output and not list((tmp_path / "s").glob("*.png"))


def test_class_errors_come_before_any_work(encoded: Workspace) -> None:
    with pytest.raises(ValueError, match="unknown --class-column 'colour'"):
        loop.train(encoded, "lat", "tiny", "bad", class_column="colour", **SMALL)
    with pytest.raises(ValueError, match="has 3 classes, more than --max-classes 2"):
        loop.train(encoded, "lat", "tiny", "bad", class_column="category", max_classes=2, **SMALL)
    result = CliRunner().invoke(app, ["train", "--latents", "lat", "--run", "bad", "--images", "8",
                                      "--class-column", "colour", "-w", str(encoded.root)])
    assert result.exit_code != 0 and "--class-column" in result.output and "Traceback" not in result.output
    assert not (encoded.run_dir("bad") / "config.json").exists()
    loop.train(encoded, "lat", "tiny", "plain", **SMALL)
    with pytest.raises(ValueError, match="trained without class conditioning: leave out --class"):
        load_pipeline(encoded, "plain").conditioning(["x"], "circle")


def test_multi_caption_run_trains_samples_and_refuses_export(encoded: Workspace, tmp_path: Path) -> None:
    summary = loop.train(encoded, "lat", "tiny", "multi", conditioning="multi-caption", validate_every=16, **SMALL)
    assert summary["images_seen"] == 16
    ckpt = load_checkpoint(latest_checkpoint(encoded.run_dir("multi")))
    slots = ckpt.model["conditioning_adapter.slot_embedding"]
    assert slots.shape == (2, 32)

    pipe = load_pipeline(encoded, "multi")
    cond = pipe.conditioning(["a red circle || a blue square", "a red circle"])
    assert cond.text.shape == (2, 2 * 16, 32)  # two slots of 16 tokens each
    one, two = (sample_latents(pipe, [p], [0], SAMPLE) for p in ("a red circle", "a red circle || a blue square"))
    assert _differs(one, two)
    with pytest.raises(ValueError, match="3 captions for a run with 2 caption slots"):
        pipe.conditioning(["a || b || c"])

    out = tmp_path / "samples"
    result = CliRunner().invoke(app, ["sample", "--run", "multi", "--prompt", "a red circle", "--prompt",
                                      "a blue square", "--out", str(out), "--steps", "2", "--size", "16",
                                      "-w", str(encoded.root)])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("0*.png"))) == 1  # the two --prompt values fill the slots of one image

    refused = tmp_path / "refused"
    result = CliRunner().invoke(app, ["export", "--run", "multi", "--out", str(refused), "-w", str(encoded.root)])
    assert result.exit_code != 0 and "no diffusers equivalent" in result.output and "Traceback" not in result.output
    assert not refused.exists()


def test_an_image_for_a_run_without_image_conditioning_is_one_line() -> None:
    from opencanvas.train.pipeline import check_image_input

    for config in ({}, {"conditioning": "text"}, {"conditioning": "multi-caption"}):  # {}: a run from before modes
        with pytest.raises(ValueError, match="trained without image conditioning: leave out --image"):
            check_image_input(config)
    check_image_input({"conditioning": "text+image"})  # a mode that reads an image passes


def test_multi_caption_on_a_one_captioner_set_names_the_encode_flag(ws: Workspace) -> None:
    write_random_latents(ws, "one", 8, resolution=64, text_len=8, text_dim=32, shard_size=8)
    with pytest.raises(ValueError, match="re-encode with `opencanvas encode --captioners A,B`"):
        loop.train(ws, "one", "tiny", "bad", conditioning="multi-caption", **SMALL)
    write_random_latents(ws, "two", 8, resolution=64, text_len=8, text_dim=32, shard_size=8,
                         captioners=("metadata", "blip2"))
    with pytest.raises(ValueError, match=r"--max-captions 3 must be in 1\.\.2"):
        loop.train(ws, "two", "tiny", "bad", conditioning="multi-caption", max_captions=3, **SMALL)
    with pytest.raises(ValueError, match="--caption-mix draws one caption"):
        loop.train(ws, "two", "tiny", "bad", conditioning="multi-caption", caption_mix={"blip2": 1.0}, **SMALL)
    with pytest.raises(ValueError, match="--max-captions is for --conditioning multi-caption"):
        loop.train(ws, "two", "tiny", "bad", max_captions=2, **SMALL)
    assert not (ws.run_dir("bad") / "config.json").exists()


def test_training_inputs_drop_each_caption_alone_and_everything_together_for_cfg(ws: Workspace) -> None:
    from opencanvas.train.data import LatentStream, step_generator, training_inputs

    write_random_latents(ws, "lat", 16, resolution=64, text_len=8, text_dim=32, captioners=("metadata", "blip2"),
                         shard_size=8)
    _catalog_for(ws, 16)
    cpu = torch.device("cpu")
    labels = {f"synthetic:{i:08d}": i % 3 for i in range(16)}
    stream = LatentStream.open(ws, "lat", 64, micro_batch=16, seed=0, rank=0, world=1, device=cpu, slots=2,
                               class_of=labels, null_class=3)
    batch = stream.next_batch()
    assert batch["text"].shape == (16, 2, 8, 32)

    def draw(caption_dropout: float, slot_dropout: float):
        gen = step_generator(cpu, 0, 0, 0)
        return training_inputs(batch, stream, gen, cpu, num_timesteps=1000, caption_dropout=caption_dropout,
                               offset_noise=0.0, use_text_mask=True, slot_dropout=slot_dropout)["cond"]

    kept, null = draw(0.0, 0.0), stream.null_conditioning(True)
    assert torch.equal(kept.text, batch["text"].float().flatten(1, 2))  # (B, S*L, D): slots along the sequence
    assert kept.class_labels.tolist() == [labels[k] for k in batch["keys"]]
    everything = draw(0.9999, 0.0)
    assert torch.equal(everything.text, null.text.expand_as(kept.text)) and set(everything.class_labels.tolist()) \
        == {3}
    half = draw(0.0, 0.5)
    slot_dropped = (half.text != kept.text).flatten(2).any(-1).view(16, 2, 8).all(-1)  # (B, S)
    assert slot_dropped.any() and not slot_dropped.all() and (slot_dropped[:, 0] != slot_dropped[:, 1]).any()
    assert torch.equal(half.class_labels, kept.class_labels)  # a caption's own dropout keeps the class


def test_a_run_from_before_these_options_still_resumes() -> None:
    from opencanvas.train.config import config_changes

    new = {"run": "r", "conditioning": "text", "slot_dropout": 0.1, "max_classes": 1000, "class_column": None}
    assert config_changes({"run": "r"}, new) == {}
    assert "conditioning" in config_changes({"run": "r"}, {**new, "conditioning": "multi-caption"})


def _catalog_for(ws: Workspace, n: int) -> None:
    """Catalog rows for the random latent set's keys, with a category (some left empty)."""
    rows = []
    for i in range(n):
        row = catalog_row(f"{i:08d}", "x")
        row["category"] = ("animals", "plants", "animals", "tools")[i % 4] if i % 5 else None
        rows.append(row)
    atomic_write_parquet(ws.source_dir("synthetic") / "part-00000.parquet",
                         pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))
    write_done_record(ws, "synthetic", "test", "(written by a test)", ["part-00000.parquet"], read=n, ingested=n)


def test_sigkill_and_resume_of_a_class_and_multi_caption_run_is_bit_identical(ws: Workspace) -> None:
    write_random_latents(ws, "lat", 24, resolution=64, text_len=8, text_dim=32, captioners=("metadata", "blip2"),
                         shard_size=8, missing_every=3)
    _catalog_for(ws, 24)
    args = dict(images=48, batch=8, checkpoint_every=16, keep=2, conditioning="multi-caption",
                class_column="category", caption_dropout=0.3, slot_dropout=0.3)
    flags = ["--conditioning", "multi-caption", "--class-column", "category", "--caption-dropout", "0.3",
             "--slot-dropout", "0.3"]
    resumed, full, _ = kill_train_and_resume(ws, "lat", flags, args, 16)
    run_dir = ws.run_dir("killed")
    assert resumed["weights_sha256"] == full["weights_sha256"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["class_names"] == ["animals", "plants", "tools"]  # frequency, then name
    # What the training stream (and a distillation of this run) reads: 2 slots, labels, the null class 3.
    from opencanvas.train.data import stream_conditioning

    streams = stream_conditioning(ws, config)
    assert streams["slots"] == 2 and streams["null_class"] == 3
    labels = streams["class_of"]
    assert labels["synthetic:00000001"] == 1 and labels["synthetic:00000003"] == 2  # plants, tools
    assert labels["synthetic:00000005"] == 3  # no category: the null class
