"""Two text encoders and text+image conditioning end to end (issue 14): train, kill -9 and resume, sample,
evaluate, export or refuse, and the one-line errors before any work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.encode import open_latents
from opencanvas.sample.generate import SampleSettings, sample_latents
from opencanvas.shards import iter_shard
from opencanvas.train import loop
from opencanvas.train.checkpoint import list_checkpoints
from opencanvas.train.pipeline import load_pipeline
from opencanvas.workspace import Workspace
from tests.factories import kill_train_and_resume
from tests.test_encode_conditioning import TEXT2_DIM, write_second_text_encoder
from tests.test_encode_stage import make_encode_workspace, write_tiny_models

TEXT_DIM, IMAGE_DIM = 32, 16
SMALL = dict(images=16, batch=8, checkpoint_every=0, holdout=0.0)
SAMPLE = SampleSettings(steps=2, guidance=3.0, sampler="euler", width=16, height=16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Workspace, dict[str, Path]]:
    """A latent set with two text encoders and CLIP image embeddings; a two-encoder run and a text+image run."""
    from opencanvas.encode import encode
    from opencanvas.sample.tiny import write_tiny_clip

    root = tmp_path_factory.mktemp("encoders")
    ws = make_encode_workspace(root / "ws", n=16, shard_size=8)
    models = {"first": write_tiny_models(root / "first"), "second": write_second_text_encoder(root / "second"),
              "clip": write_tiny_clip(root / "clip", seed=3)}
    encode(ws, "shapes", str(models["first"]), [str(models["first"]), str(models["second"])],
           ["metadata", "second"], "both", resolutions=(16,), image_embeddings=str(models["clip"]))
    loop.train(ws, "both", "tiny", "two", validate_every=16, **SMALL)
    loop.train(ws, "both", "tiny", "image", conditioning="text+image", **SMALL)
    reference = root / "ref.png"
    reference.write_bytes(next(iter_shard(next(ws.images_dir("shapes").glob("*.tar")))).data)
    models["reference"] = reference
    return ws, models


def stream_unet_adapter(ws: Workspace):
    """The text+image run's conditioning adapter (its image tokens)."""
    return load_pipeline(ws, "image").denoiser.unet.conditioning_adapter


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) > 1e-6


def test_two_encoders_concatenate_features_and_add_both_pooled_embeddings(trained):
    ws, _ = trained
    config = json.loads((ws.run_dir("two") / "config.json").read_text())
    unet = config["unet"]
    assert unet["cross_attention_dim"] == TEXT_DIM + TEXT2_DIM  # feature axis: a plain diffusers config
    assert unet["class_embed_type"] == "projection"
    assert unet["projection_class_embeddings_input_dim"] == TEXT_DIM + TEXT2_DIM  # both pooled embeddings
    assert (ws.run_dir("two") / "samples" / "grid-000000000016.png").exists()  # validation encodes with both
    pipe = load_pipeline(ws, "two")
    cond = pipe.conditioning(["a red circle", "a blue square"])
    assert cond.text.shape == (2, 16, TEXT_DIM + TEXT2_DIM) and cond.added.shape == (2, TEXT_DIM + TEXT2_DIM)
    # The second encoder's 12 tokens are padded to the first one's 16 with zeros.
    hidden2, _, pooled2 = pipe.text_encoder_2.encode_pooled(["a red circle"])
    assert torch.allclose(cond.text[0, :12, TEXT_DIM:], hidden2[0]) and not cond.text[0, 12:, TEXT_DIM:].any()
    assert torch.allclose(cond.added[0, TEXT_DIM:], pooled2[0])
    red = sample_latents(pipe, ["a red circle"], [0], SAMPLE)
    blue = sample_latents(pipe, ["a blue square"], [0], SAMPLE)
    assert red.shape == (1, 4, 8, 8) and _differs(red, blue)


def test_text_encoders_1_trains_on_the_first_encoder_of_a_two_encoder_set(trained):
    ws, _ = trained
    loop.train(ws, "both", "tiny", "first", text_encoders=1, **SMALL)
    config = json.loads((ws.run_dir("first") / "config.json").read_text())
    assert config["unet"]["cross_attention_dim"] == TEXT_DIM and "class_embed_type" not in config["unet"]
    pipe = load_pipeline(ws, "first")
    cond = pipe.conditioning(["a red circle"])
    assert pipe.text_encoder_2 is None and cond.text.shape == (1, 16, TEXT_DIM) and cond.added is None


def test_each_encoder_and_the_image_drop_on_their_own(trained):
    from opencanvas.train.data import LatentStream, training_inputs

    ws, _ = trained
    stream = LatentStream.open(ws, "both", 16, 8, 0, 0, 1, torch.device("cpu"), image=True)
    batch = stream.next_batch()
    null = stream.null_conditioning(False)
    full = stream.conditioning(batch, torch.device("cpu"), False)
    drops = {"encoder_drop": torch.tensor([[True, False], [False, True]] + [[False, False]] * 6),
             "image_drop": torch.tensor([False, False, True] + [False] * 5)}
    cond = stream.conditioning(batch, torch.device("cpu"), False, **drops)
    first, second = slice(0, TEXT_DIM), slice(TEXT_DIM, None)
    # Row 0 lost the first encoder only, row 1 the second only, row 2 the image only; row 3 kept everything.
    assert torch.equal(cond.text[0, :, first], null.text[0, :, first])
    assert torch.equal(cond.text[0, :, second], full.text[0, :, second])
    assert torch.equal(cond.added[0, :TEXT_DIM], null.added[0, :TEXT_DIM])
    assert torch.equal(cond.text[1, :, first], full.text[1, :, first])
    assert torch.equal(cond.text[1, :, second], null.text[0, :, second])
    assert torch.equal(cond.added[1, TEXT_DIM:], null.added[0, TEXT_DIM:])
    assert not cond.image[2].any() and torch.equal(cond.image[1], full.image[1]) and full.image[2].any()
    assert torch.equal(cond.text[3], full.text[3]) and torch.equal(cond.added[3], full.added[3])
    # With the text mask: a token is attended where either encoder has one (the first one's 16 tokens, the
    # second one's 12 padded), and the adapter appends the image tokens, always attended.
    masked = stream.conditioning(batch, torch.device("cpu"), True)
    assert torch.equal(masked.mask, batch["mask"] | torch.nn.functional.pad(batch["mask2"], (0, 4)))
    adapted = stream_unet_adapter(ws)(masked)
    assert adapted.text.shape == (8, 16 + 4, TEXT_DIM + TEXT2_DIM) and adapted.mask[:, 16:].all()
    assert adapted.image is None and adapted.added.shape == (8, TEXT_DIM + TEXT2_DIM + IMAGE_DIM)
    # With dropout 0 the step's draws leave everything; with 0.99 the encoders and the image are (almost) all null.
    gen = torch.Generator().manual_seed(0)
    kept = training_inputs(batch, stream, gen, torch.device("cpu"), num_timesteps=1000, caption_dropout=0.0,
                           offset_noise=0.0, use_text_mask=False)["cond"]
    assert torch.equal(kept.text, full.text) and torch.equal(kept.image, full.image)
    dropped = training_inputs(batch, stream, torch.Generator().manual_seed(0), torch.device("cpu"),
                              num_timesteps=1000, caption_dropout=0.0, offset_noise=0.0, use_text_mask=False,
                              encoder_dropout=0.99, image_dropout=0.99)["cond"]
    assert torch.equal(dropped.text, null.text.expand_as(dropped.text)) and not dropped.image.any()


def test_text_image_run_gives_image_variations_with_their_own_guidance(trained, tmp_path):
    ws, models = trained
    config = json.loads((ws.run_dir("image") / "config.json").read_text())
    assert config["unet"]["projection_class_embeddings_input_dim"] == TEXT_DIM + TEXT2_DIM + IMAGE_DIM
    assert config["unet"]["conditioning_adapter"]["image_tokens"] == 4
    pipe = load_pipeline(ws, "image")
    embedding = pipe.image_embedding(models["reference"])
    stored = open_latents(ws, "both", 16)
    keys = stored.keys()
    first = next(iter_shard(next(ws.images_dir("shapes").glob("*.tar")))).key
    np.testing.assert_allclose(embedding[0].numpy(), stored.get(keys.index(first)).image.astype(np.float32),
                               atol=2e-3)  # the same embedding encode stored for that image
    plain = sample_latents(pipe, [""], [0], SAMPLE)
    settings = SampleSettings(**{**SAMPLE.to_dict(), "image": str(models["reference"]), "image_guidance": 2.0})
    variation = sample_latents(pipe, [""], [0], settings)
    stronger = sample_latents(pipe, [""], [0], SampleSettings(**{**settings.to_dict(), "image_guidance": 6.0}))
    assert _differs(plain, variation) and _differs(variation, stronger)
    out = tmp_path / "variations"
    result = CliRunner().invoke(app, ["sample", "--run", "image", "--image", str(models["reference"]), "a red circle",
                                      "--out", str(out), "--steps", "2", "--sampler", "euler", "--size", "16x16",
                                      "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 2  # the image and grid.png
    # The model card names every component the run was conditioned through.
    card = CliRunner().invoke(app, ["card", "--run", "image", "-w", str(ws.root)])
    assert card.exit_code == 0, card.output
    text = (ws.run_dir("image") / "cards" / "MODEL_CARD.md").read_text()
    assert f"| Second text encoder (CLIP text tower) | `{models['second']}`" in text
    assert f"| Image-embedding CLIP (image tower) | `{models['clip']}`" in text


def test_runs_evaluate(trained):
    from opencanvas.components.loading import load_clip_evaluator
    from opencanvas.sample.evaluate import evaluate

    ws, models = trained
    clip = load_clip_evaluator(None, str(models["clip"]))
    for run in ("two", "image"):
        report = evaluate(ws, run, ["a red circle", "a blue square"], "shapes", metrics=("clip",),
                          guidance_scales=(3.0,), n=2, steps=2, sampler="euler", batch_size=2,
                          pipeline=load_pipeline(ws, run), clip=clip)
        assert [row["guidance"] for row in report["rows"]] == [0.0, 3.0]


def test_two_encoder_export_loads_in_diffusers_and_text_image_refuses(trained, tmp_path):
    from diffusers import DiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from opencanvas.sample.loading import load_folder_pipeline

    ws, _ = trained
    out = tmp_path / "two"
    result = CliRunner().invoke(app, ["export", "--run", "two", "--out", str(out), "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "stock StableDiffusionPipeline has one text" in result.output.replace("\n", " ")
    DiffusionPipeline.from_pretrained(out)  # loads
    unet = UNet2DConditionModel.from_pretrained(out / "unet").eval()
    # The exported UNet and second text encoder are the trained ones: same prediction for the same conditioning.
    pipe = load_pipeline(ws, "two")
    text2 = CLIPTextModel.from_pretrained(out / "text_encoder_2").eval()
    ids, attention = pipe.text_encoder_2.tokenize(["a red circle"])
    with torch.no_grad():  # called with the tokenizer's mask, as encode did (use_attention_mask in its config)
        exported = text2(input_ids=ids, attention_mask=attention).last_hidden_state
        assert torch.allclose(exported, pipe.text_encoder_2.encode(["a red circle"])[0], atol=1e-5)
        cond = pipe.conditioning(["a red circle"])
        x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
        ours = pipe.denoiser.unet(x, t, encoder_hidden_states=cond.text, class_labels=cond.added).sample
        theirs = unet(x, t, encoder_hidden_states=cond.text, class_labels=cond.added).sample
    assert torch.allclose(ours, theirs, atol=1e-5)

    with pytest.raises(ValueError, match="two text encoders"):
        load_folder_pipeline(out)

    refused = CliRunner().invoke(app, ["export", "--run", "image", "--out", str(tmp_path / "img"), "-w", str(ws.root)])
    assert refused.exit_code != 0 and "no diffusers equivalent" in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and not (tmp_path / "img").exists()


def test_errors_before_any_work(trained, tmp_path, ws):
    from opencanvas.encode.synthetic import write_random_latents

    trained_ws, models = trained
    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["sample", "--run", "two", "--image", str(models["reference"]), "--out", str(out),
                                      "-w", str(trained_ws.root)])
    assert result.exit_code != 0 and "trained without image conditioning" in result.output
    assert not out.exists()
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    result = CliRunner().invoke(app, ["sample", "--run", "image", "--image", str(not_an_image), "--out", str(out),
                                      "-w", str(trained_ws.root)])
    assert result.exit_code != 0 and "is not an image this can read" in result.output and not out.exists()
    write_random_latents(ws, "plain", 16, resolution=32, text_len=8, text_dim=32, shard_size=8)
    with pytest.raises(ValueError, match=r"has none: re-encode with `opencanvas encode .* --image-embeddings CLIP`"):
        loop.train(ws, "plain", "tiny", "img", conditioning="text+image", **SMALL)
    assert not list_checkpoints(ws.run_dir("img"))
    with pytest.raises(ValueError, match=r"re-encode with `opencanvas encode .* --text-encoder A --text-encoder B`"):
        loop.train(ws, "plain", "tiny", "two", text_encoders=2, **SMALL)
    assert not list_checkpoints(ws.run_dir("two"))
    with pytest.raises(ValueError, match="takes one of them"):
        loop.train(trained_ws, "both", "tiny", "cls", class_column="category", **SMALL)


def test_sigkill_and_resume_of_a_two_encoder_text_image_run_is_bit_identical(trained):
    ws, _ = trained
    args = dict(images=32, batch=8, checkpoint_every=16, keep=2, holdout=0.0, conditioning="text+image",
                encoder_dropout=0.3, image_dropout=0.3)
    flags = ["--holdout", "0", "--conditioning", "text+image", "--encoder-dropout", "0.3", "--image-dropout", "0.3"]
    resumed, full, _ = kill_train_and_resume(ws, "both", flags, args, 16)
    assert resumed["weights_sha256"] == full["weights_sha256"]


def test_stream_settings_of_a_run_carry_its_extra_inputs(ws):
    """What training and a distillation of the run open their latent stream with."""
    from opencanvas.train.data import stream_conditioning

    both = stream_conditioning(ws, {"conditioning": "text+image", "data": {}})
    first = stream_conditioning(ws, {"conditioning": "text", "text_encoders": 1, "data": {}})
    assert both["image"] and both["second_encoder"]
    assert not first["image"] and not first["second_encoder"]
