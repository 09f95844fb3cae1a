"""Named, frozen presets for the components trained here.

`tiny` trains on a laptop CPU in minutes (64-128 px); the larger ones are the
published architectures: SD's 4-channel factor-8 AutoencoderKL and a
ViT-B/32-sized CLIP.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class AutoencoderPreset:
    name: str
    block_out_channels: tuple[int, ...]   # one per resolution level; downscale = 2 ** (levels - 1)
    layers_per_block: int
    latent_channels: int
    norm_num_groups: int
    mid_block_add_attention: bool
    resolution: int                       # default training resolution
    min_resolution: int
    max_resolution: int
    batch_size: int
    learning_rate: float
    kl_weight: float                      # KL(q(z|x) || N(0, I)) weight; small, as in SD (1e-6)
    train_crop: int                       # random crops this big train the (convolutional) model
    warmup_steps: int
    initial_logvar: float | None          # start log-variance of q(z|x); None keeps the default (0)
    disc_start: int                       # step the patch discriminator starts at (with --lpips-weights)

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def check_resolution(self, resolution: int) -> None:
        if not self.min_resolution <= resolution <= self.max_resolution or resolution % (self.downscale * 4):
            raise ValueError(
                f"preset {self.name!r} takes resolutions {self.min_resolution}..{self.max_resolution} px in "
                f"steps of {self.downscale * 4} (downscale {self.downscale}), got {resolution}: pick e.g. "
                f"--resolution {self.resolution}, or another --preset")

    def diffusers_config(self, resolution: int) -> dict[str, Any]:
        levels = len(self.block_out_channels)
        return {
            "in_channels": 3, "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels,
            "block_out_channels": list(self.block_out_channels),
            "layers_per_block": self.layers_per_block,
            "latent_channels": self.latent_channels,
            "norm_num_groups": self.norm_num_groups,
            "mid_block_add_attention": self.mid_block_add_attention,
            "sample_size": resolution,
        }


@dataclass(frozen=True)
class ClipPreset:
    name: str
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    text_width: int
    text_layers: int
    text_heads: int
    max_length: int                       # text positions (77 as in CLIP / SD)
    projection_dim: int
    vocab_size: int                       # BPE vocabulary trained on the captions (upper bound)
    batch_size: int
    learning_rate: float
    weight_decay: float

    def transformers_config(self, vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> dict[str, Any]:
        text = {"vocab_size": vocab_size, "hidden_size": self.text_width, "intermediate_size": 4 * self.text_width,
                "num_hidden_layers": self.text_layers, "num_attention_heads": self.text_heads,
                "max_position_embeddings": self.max_length, "pad_token_id": pad_id, "bos_token_id": bos_id,
                "eos_token_id": eos_id, "projection_dim": self.projection_dim}
        vision = {"image_size": self.image_size, "patch_size": self.patch_size, "hidden_size": self.vision_width,
                  "intermediate_size": 4 * self.vision_width, "num_hidden_layers": self.vision_layers,
                  "num_attention_heads": self.vision_heads, "projection_dim": self.projection_dim}
        return {"text_config": text, "vision_config": vision, "projection_dim": self.projection_dim}


AUTOENCODER_PRESETS: dict[str, AutoencoderPreset] = {
    # Factor 4: a 64 px image becomes a 16x16x4 latent, enough detail for clip art on a CPU.
    # Trained on 32 px crops: a CPU step at full 64 px costs 4x more, and the model is convolutional.
    # Starting at posterior std e^-2 instead of 1 lets the decoder see the signal from the first
    # steps: +2.5 dB held-out PSNR after 100 CPU steps on the shapes set.
    "tiny": AutoencoderPreset("tiny", (16, 32, 32), 1, 4, 8, False, 64, 32, 256, 8, 4e-3, 1e-6, 32, 20, -4.0, 250),
    # Stable Diffusion's VAE architecture (factor 8, 4 latent channels, ~84M parameters); the
    # discriminator starts at step 50001 as in SD's kl-f8 config.
    "sd": AutoencoderPreset("sd", (128, 256, 512, 512), 2, 4, 32, True, 256, 64, 1024, 8, 4.5e-6, 1e-6, 256, 500, None,
                            50001),
}

CLIP_PRESETS: dict[str, ClipPreset] = {
    "tiny": ClipPreset("tiny", 64, 8, 128, 4, 4, 128, 4, 4, 77, 128, 4096, 64, 5e-4, 0.1),
    # ViT-B/32 at 224 px with a 12-layer, 512-wide text tower (OpenAI CLIP's base shape).
    "base": ClipPreset("base", 224, 32, 768, 12, 12, 512, 12, 8, 77, 512, 16384, 128, 5e-4, 0.2),
}


def preset_dict(preset: AutoencoderPreset | ClipPreset) -> dict[str, Any]:
    """The resolved preset as JSON-able data (written into every record)."""
    return {f.name: (list(v) if isinstance(v := getattr(preset, f.name), tuple) else v) for f in fields(preset)}


def get_preset(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        raise ValueError(f"unknown {what} preset {name!r}: choose one of {', '.join(table)}")
    return table[name]
