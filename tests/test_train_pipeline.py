"""A real encoded latent set -> tiny training run with validation grids -> load_pipeline -> diffusers export.

The components are tiny SD2-layout models built from configs with random
weights (no downloads): an AutoencoderKL with downscale 2, a 2-layer CLIP text
tower, and a BPE tokenizer trained on the captions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from opencanvas.components.tokenizer import EOS_ID, train_caption_tokenizer
from opencanvas.train.to_diffusers import fold_normalization, uniform_scale
from opencanvas.workspace import Workspace
from tests.factories import make_captions, make_image_subset

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow circle"]


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                         layers_per_block=1, sample_size=32)


def write_components(root: Path) -> Path:
    """A pipeline folder in the stabilityai/stable-diffusion-2-base layout."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny_vae().save_pretrained(root / "vae")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=16, pad_token_id=0,
                                 bos_token_id=2, eos_token_id=EOS_ID)).save_pretrained(root / "text_encoder")
    train_caption_tokenizer(PROMPTS * 3, vocab_size=200, max_length=16, min_frequency=1).save_pretrained(
        root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Workspace, dict]:
    from opencanvas.encode import encode
    from opencanvas.train.loop import train

    ws = Workspace.open(tmp_path_factory.mktemp("train-pipeline") / "ws")
    components = write_components(ws.root / "sd2-tiny")
    make_image_subset(ws, "shapes", n=16, size=32, shard_size=8)
    make_captions(ws, "shapes", "metadata")
    encode(ws, "shapes", str(components), str(components), ["metadata"], "shapes16", resolutions=(16,))
    summary = train(ws, "shapes16", "tiny", "demo", images=48, batch=8, validate_every=24,
                    validation_prompts=tuple(PROMPTS[:2]))
    return ws, summary


def test_training_on_encoded_latents_writes_validation_grids(trained):
    from PIL import Image

    ws, summary = trained
    run = ws.run_dir("demo")
    assert summary["images_seen"] == 48
    grids = sorted((run / "samples").glob("grid-*.png"))
    assert [g.name for g in grids] == ["grid-000000000024.png", "grid-000000000048.png"]
    grid = Image.open(grids[-1])
    assert grid.size == (2 * 16, 2 * 16)  # 2 seeds x 2 prompts of 16 px
    assert np.asarray(grid).std() > 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["subset"] == "shapes" and config["data"]["policy"] == "commercial"
    assert config["data"]["text_dim"] == 32 and config["unet"]["cross_attention_dim"] == 32


def test_load_pipeline_gives_the_ema_denoiser_and_components(trained):
    from opencanvas.train.checkpoint import latest_checkpoint, load_checkpoint
    from opencanvas.train.pipeline import load_pipeline

    ws, _ = trained
    pipe = load_pipeline(ws, "demo")
    ema = load_checkpoint(latest_checkpoint(ws.run_dir("demo")), parts=("ema",)).ema
    for name, t in pipe.denoiser.unet.state_dict().items():
        assert torch.equal(t, ema[name]), name
    raw = load_pipeline(ws, "demo", ema=False)
    assert raw.weights_hash != pipe.weights_hash and len(pipe.weights_hash) == 64
    assert pipe.latent_shape(16, 16) == (4, 8, 8)
    with pytest.raises(ValueError, match="multiples of 2"):
        pipe.latent_shape(15, 16)
    text, mask = pipe.encode_prompts(PROMPTS[:2])
    assert text.shape == (2, 16, 32) and mask is None
    x = torch.randn(2, 4, 8, 8)
    x0 = pipe.denoiser(x, torch.tensor(2.0), text)  # (B, C, h, w)
    assert x0.shape == x.shape and torch.isfinite(x0).all()
    images = pipe.decode(x0)
    assert len(images) == 2 and images[0].size == (16, 16)
    with pytest.raises(FileNotFoundError, match="no checkpoint 7"):
        load_pipeline(ws, "demo", checkpoint=7)


def test_export_loads_in_diffusers_and_generates(trained, tmp_path):
    from diffusers import DiffusionPipeline

    from opencanvas.train.pipeline import load_pipeline
    from opencanvas.train.to_diffusers import export

    ws, _ = trained
    out = export(ws, "demo", tmp_path / "export")
    assert (out / "README.md").read_text().count("policy `commercial`") == 1
    sd = DiffusionPipeline.from_pretrained(out)
    assert type(sd).__name__ == "StableDiffusionPipeline"
    assert sd.vae.config.scaling_factor == pytest.approx(0.18215)  # the SD VAE's uniform scale, kept
    result = sd(PROMPTS[:2], num_inference_steps=2, guidance_scale=3.0, height=16, width=16,
                output_type="np", generator=torch.Generator().manual_seed(0))
    assert result.images.shape == (2, 16, 16, 3) and np.isfinite(result.images).all()
    # The exported UNet, text encoder and scheduler are the trained model's (EMA), not just loadable.
    pipe = load_pipeline(ws, "demo")
    ids = sd.tokenizer(PROMPTS[:2], padding="max_length", max_length=sd.tokenizer.model_max_length,
                       return_tensors="pt")
    hidden = sd.text_encoder(ids.input_ids, attention_mask=ids.attention_mask)[0]
    ours, _ = pipe.encode_prompts(PROMPTS[:2])
    assert torch.allclose(hidden, ours, atol=1e-5)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 20])
    assert torch.allclose(sd.unet(x, t, hidden).sample, pipe.denoiser.unet(x, t, ours).sample, atol=1e-5)
    assert sd.scheduler.config.prediction_type == "epsilon"
    assert np.allclose(sd.scheduler.alphas_cumprod.numpy(), pipe.denoiser.alphas_cumprod.numpy(), atol=1e-6)
    with pytest.raises(FileExistsError):
        export(ws, "demo", out)


def test_per_channel_normalisation_folds_into_the_vae():
    vae = tiny_vae().eval()
    shift, scale = [0.1, -0.2, 0.3, 0.0], [0.5, 0.8, 1.5, 2.0]
    assert uniform_scale([0.0] * 4, [0.18215] * 4) == pytest.approx(0.18215)
    assert uniform_scale(shift, scale) is None
    folded = tiny_vae().eval()
    fold_normalization(folded, shift, scale)
    s, c = torch.tensor(scale).view(1, -1, 1, 1), torch.tensor(shift).view(1, -1, 1, 1)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        before, after = vae.encode(pixels).latent_dist, folded.encode(pixels).latent_dist
        assert torch.allclose(after.mean, (before.mean - c) * s, atol=1e-5)
        assert torch.allclose(after.std, before.std * s, atol=1e-5)
        u = torch.randn(2, 4, 8, 8)
        assert torch.allclose(folded.decode(u).sample, vae.decode(u / s + c).sample, atol=1e-5)
    assert folded.config.scaling_factor == 1.0


def test_cli_export_and_clear_errors(trained, tmp_path):
    from typer.testing import CliRunner

    from opencanvas.cli import app

    ws, _ = trained
    runner = CliRunner()
    out = tmp_path / "cli-export"
    done = runner.invoke(app, ["export", "--run", "demo", "--out", str(out), "--raw", "-w", str(ws.root)])
    assert done.exit_code == 0, done.output
    assert json.loads((out / "opencanvas.json").read_text())["ema"] is False
    missing = runner.invoke(app, ["export", "--run", "nope", "--out", str(tmp_path / "x"), "-w", str(ws.root)])
    assert missing.exit_code == 2 and "no run 'nope'" in missing.output and "runs here: demo" in missing.output
    bad = runner.invoke(app, ["train", "--latents", "shapes16", "--run", "r", "--preset", "huge", "--images", "8",
                              "-w", str(ws.root)])
    assert bad.exit_code == 2 and "unknown preset 'huge'" in bad.output
    unknown = runner.invoke(app, ["train", "--latents", "shapes16", "--run", "r", "--learning-rate", "1"])
    assert unknown.exit_code != 0 and "No such option" in unknown.output
