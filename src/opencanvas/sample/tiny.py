"""Tiny random-weight models with the real architectures, for tests and CPU benchmarks.

Nothing is downloaded: a UNet2DConditionModel, AutoencoderKL and CLIPTextModel
are built from small configs under a fixed torch seed, and the tokenizer is a
word-level `tokenizers` model, so a diffusers folder can be written offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TEXT_DIM = 32
WORDS = ("a an the of red green blue yellow white black circle square triangle shape photo drawing "
         "cat dog house tree sky").split()


def tiny_unet(seed: int = 0, cross_attention_dim: int = TEXT_DIM, sample_size: int = 8) -> Any:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=8, norm_num_groups=8,
    ).eval()


def tiny_vae(seed: int = 0) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=16, scaling_factor=0.5,
    ).eval()


def tiny_text_model(seed: int = 0, vocab_size: int = len(WORDS) + 4) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return CLIPTextModel(config).eval()


def tiny_tokenizer() -> Any:
    """The word-level tokenizer over WORDS (pad 0, bos 1, eos 2, unk 3), at most 16 tokens."""
    from opencanvas.caption.tiny_models import word_tokenizer

    return word_tokenizer(["<pad>", "<bos>", "<eos>", "<unk>"], "<bos> $A <eos>", words=WORDS, model_max_length=16,
                          bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


SCHEDULER_CONFIG = {"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
                    "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
                    "timestep_spacing": "leading", "steps_offset": 1}


def write_tiny_folder(path: Path, seed: int = 0, provenance: dict[str, Any] | None = None) -> Path:
    """A diffusers pipeline folder of tiny random models (16 px images, 8 px latents).

    `provenance` goes to opencanvas.json as `opencanvas export` writes it
    ({"run", "weights_sha256", "config": {"data": {"policy", "catalog_hash", ...}}}).
    """
    path = Path(path)
    tiny_unet(seed).save_pretrained(path / "unet")
    tiny_vae(seed + 1).save_pretrained(path / "vae")
    tiny_text_model(seed + 2).save_pretrained(path / "text_encoder")
    tiny_tokenizer().save_pretrained(path / "tokenizer")
    (path / "scheduler").mkdir(parents=True, exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG))
    if provenance is not None:
        (path / "opencanvas.json").write_text(json.dumps(provenance))
    return path


def write_tiny_clip(path: Path, seed: int = 0) -> Path:
    """A tiny random CLIPModel (32 px images) + the word-level tokenizer, as a local CLIP folder."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"vocab_size": len(WORDS) + 4, "hidden_size": TEXT_DIM, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 16,
                     "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16)
    path = Path(path)
    CLIPModel(config).eval().save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
