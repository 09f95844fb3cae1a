"""Loaders for pretrained components, on tiny models saved in the SD2 pipeline layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from opencanvas.components.loading import (
    ComponentNotFoundError,
    load_autoencoder,
    load_clip_evaluator,
    load_text_encoder,
)
from opencanvas.components.tokenizer import EOS_ID, train_caption_tokenizer

CAPTIONS = ["a red circle", "a blue square", "a green triangle", "a yellow circle on white"] * 3


def tiny_vae(**overrides):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                         layers_per_block=1, sample_size=32, **overrides)


def tiny_text_config(max_length: int = 16) -> dict:
    return dict(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                max_position_embeddings=max_length, pad_token_id=0, bos_token_id=2, eos_token_id=EOS_ID)


@pytest.fixture
def sd2_dir(tmp_path: Path) -> Path:
    """A pipeline folder shaped like stabilityai/stable-diffusion-2-base (vae/, text_encoder/, tokenizer/)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path / "sd2"
    tiny_vae().save_pretrained(root / "vae")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(**tiny_text_config())).save_pretrained(root / "text_encoder")
    train_caption_tokenizer(CAPTIONS, vocab_size=200, max_length=16, min_frequency=1).save_pretrained(
        root / "tokenizer")
    return root


def test_autoencoder_from_pipeline_dir_uses_sd_scaling(ws, sd2_dir):
    ae = load_autoencoder(ws, str(sd2_dir))
    assert ae.shift == [0.0] * 4 and ae.scale == pytest.approx([0.18215] * 4)
    assert ae.downscale == 2 and ae.provenance["origin"] == "local"
    assert len(ae.provenance["weights_sha256"]) == 64
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = ae.encode(pixels)
    assert mean.shape == (2, 4, 16, 16) and (std > 0).all()
    # normalize/denormalize are inverses, and decode undoes the normalisation
    z = torch.randn(2, 4, 16, 16)
    torch.testing.assert_close(ae.denormalize(ae.normalize(z)), z)
    raw = ae.vae.decode(z).sample
    torch.testing.assert_close(ae.decode(ae.normalize(z)), raw, atol=1e-5, rtol=1e-5)


def test_autoencoder_component_dir_with_per_channel_stats(ws, sd2_dir):
    vae_dir = sd2_dir / "vae"
    (vae_dir / "opencanvas.json").write_text(json.dumps(
        {"latent_shift": [0.1, 0.2, 0.3, 0.4], "latent_scale": [1.0, 2.0, 3.0, 4.0], "subset": "shapes"}))
    ae = load_autoencoder(ws, str(vae_dir))
    assert ae.shift == [0.1, 0.2, 0.3, 0.4] and ae.scale == [1.0, 2.0, 3.0, 4.0]
    assert ae.provenance["subset"] == "shapes"
    z = torch.ones(1, 4, 2, 2)
    assert ae.normalize(z)[0, :, 0, 0].tolist() == pytest.approx([0.9, 1.6, 2.1, 2.4])


def test_autoencoder_diffusers_latents_mean_std(ws, tmp_path):
    tiny_vae(latents_mean=[1.0, 0.0, 0.0, 0.0], latents_std=[2.0, 1.0, 1.0, 1.0],
             scaling_factor=0.5).save_pretrained(tmp_path / "ae")
    ae = load_autoencoder(ws, str(tmp_path / "ae"))
    assert ae.shift == [1.0, 0.0, 0.0, 0.0] and ae.scale == [0.25, 0.5, 0.5, 0.5]


def test_workspace_name_wins_and_hub_errors_say_what_to_do(ws, sd2_dir):
    tiny_vae().save_pretrained(ws.autoencoder_dir("mine"))
    assert load_autoencoder(ws, "mine").provenance["origin"] == "workspace"
    with pytest.raises(ComponentNotFoundError, match="huggingface-cli download"):
        load_autoencoder(ws, "nobody/no-such-model-xyz")
    with pytest.raises(ComponentNotFoundError, match="not a name trained in this workspace"):
        load_autoencoder(ws, "missing-name")
    (sd2_dir.parent / "empty").mkdir()
    with pytest.raises(ComponentNotFoundError, match="no config.json"):
        load_autoencoder(ws, str(sd2_dir.parent / "empty"))


def test_text_encoder_layers_padding_and_mask(ws, sd2_dir):
    te = load_text_encoder(ws, str(sd2_dir))
    assert te.layer == "last" and te.max_length == 16 and te.hidden_size == 32
    hidden, mask = te.encode(["a red circle", "a blue square on a yellow circle"])
    assert hidden.shape == (2, 16, 32) and mask.dtype == torch.bool
    assert mask[0].tolist() == [True] * 5 + [False] * 11  # bos a red circle eos
    # causal tower: tokens before the padding do not depend on it
    alone, _ = te.encode(["a red circle"])
    torch.testing.assert_close(alone[0, :5], hidden[0, :5], atol=1e-5, rtol=1e-5)

    pen = load_text_encoder(ws, str(sd2_dir / "text_encoder"), layer="penultimate", max_length=8)
    assert pen.provenance["text_layer"] == "penultimate" and pen.max_length == 8
    ph, pm = pen.encode(["a red circle"])
    assert ph.shape == (1, 8, 32)
    ids, attn = pen.tokenize(["a red circle"])
    out = pen.model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
    torch.testing.assert_close(ph, pen.model.final_layer_norm(out.hidden_states[1]))
    assert not torch.allclose(ph, out.last_hidden_state)
    with pytest.raises(ValueError, match="positions"):
        load_text_encoder(ws, str(sd2_dir), max_length=100)


def test_clip_evaluator_from_local_dir(ws, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  image_size=32, patch_size=8)
    CLIPModel(CLIPConfig(text_config=tiny_text_config(), vision_config=vision, projection_dim=16)).save_pretrained(
        tmp_path / "clip")
    train_caption_tokenizer(CAPTIONS, vocab_size=200, max_length=16, min_frequency=1).save_pretrained(
        tmp_path / "clip")
    ev = load_clip_evaluator(ws, str(tmp_path / "clip"))
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "blue", "green")]
    img = ev.image_features(images)
    txt = ev.text_features(["a red circle", "a blue square", "a green triangle"])
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, rtol=1e-5)
    score = ev.clip_score(images, ["a red circle", "a blue square", "a green triangle"])
    np.testing.assert_allclose(score, 100 * np.clip((img * txt).sum(1), 0, None), rtol=1e-4, atol=1e-4)
    assert ev.text_features([]).shape == (0, 16)
    with pytest.raises(ValueError, match="pairs"):
        ev.clip_score(images, ["one"])
