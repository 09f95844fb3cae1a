"""Named UNet presets: frozen, typed, and resolved against a latent set.

`cross_attention_dim` is not part of a preset: it is the text encoder's hidden
size, read from the latent set, so one preset works with any text encoder.
`in_channels`/`out_channels` likewise come from the autoencoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn

Parallel = Literal["ddp", "fsdp"]


@dataclass(frozen=True)
class UNetPreset:
    """The architecture knobs of diffusers' UNet2DConditionModel that differ between presets."""

    block_out_channels: tuple[int, ...]
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    layers_per_block: int
    attention_head_dim: int | tuple[int, ...]
    transformer_layers_per_block: int | tuple[int, ...] = 1
    norm_num_groups: int = 32
    use_linear_projection: bool = False

    def unet_config(self, latent_channels: int, text_dim: int, latent_size: int) -> dict[str, Any]:
        """The kwargs for UNet2DConditionModel (JSON-able: tuples become lists)."""
        cfg = asdict(self)
        cfg.update(in_channels=latent_channels, out_channels=latent_channels,
                   cross_attention_dim=text_dim, sample_size=latent_size)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


@dataclass(frozen=True)
class Preset:
    """A UNet plus the training defaults that suit its size."""

    name: str
    unet: UNetPreset
    lr: float
    batch: int
    warmup_images: int
    parallel: Parallel = "ddp"
    ema_decay: float = 0.9999
    extra: dict[str, Any] = field(default_factory=dict)


_CROSS3 = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_UP3 = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3

def _tiny(name: str, widths: tuple[int, int], attention_at_top: bool = True) -> Preset:
    """A two-level CPU-sized UNet; cross-attention at the top level (16x16 latents) or only at the bottom."""
    down, up = ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D")
    if not attention_at_top:
        down, up = ("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")
    unet = UNetPreset(block_out_channels=widths, down_block_types=down, up_block_types=up, layers_per_block=1,
                      attention_head_dim=8, norm_num_groups=8)
    return Preset(name=name, unet=unet, lr=1e-3, batch=16, warmup_images=64, ema_decay=0.99)


PRESETS: dict[str, Preset] = {
    # A CPU demo: ~0.8M parameters (32-dim text), ~110 img/s on 8x8x4 latents on one CPU core.
    "tiny": _tiny("tiny", (32, 64)),
    # tiny with its attention only at the lowest resolution (8x8 latents: 64 tokens instead of 256), as SDXL
    # drops attention at its highest: a candidate for the demo (benchmarks/RESULTS.md, issue 20).
    "tiny-lowattn": _tiny("tiny-lowattn", (32, 64), attention_at_top=False),
    # tiny at twice the width (~3M parameters): the larger model of the built-in data-scaling study.
    "tiny-wide": _tiny("tiny-wide", (64, 128)),
    # A model that learns something on one CPU in minutes and is quick on one GPU.
    "small": Preset(
        name="small",
        unet=UNetPreset(block_out_channels=(64, 128, 256),
                        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                        layers_per_block=1, attention_head_dim=32, norm_num_groups=32,
                        use_linear_projection=True),
        lr=3e-4, batch=32, warmup_images=2_000, ema_decay=0.999,
    ),
    # The 865M-parameter UNet of Stable Diffusion 2 (stabilityai/stable-diffusion-2-base),
    # the architecture CommonCanvas-S/-L train; lr and warmup follow MosaicML's SD2 recipe.
    "sd2-base": Preset(
        name="sd2-base",
        unet=UNetPreset(block_out_channels=(320, 640, 1280, 1280), down_block_types=_CROSS3,
                        up_block_types=_UP3, layers_per_block=2, attention_head_dim=(5, 10, 20, 20),
                        use_linear_projection=True),
        lr=1e-4, batch=2048, warmup_images=10_000 * 2048, parallel="fsdp",
    ),
    # A larger UNet in the spirit of SDXL / CommonCanvas-L: three levels, deep transformers
    # at low resolution (2.4B parameters with a 1024-wide text encoder).
    "xl": Preset(
        name="xl",
        unet=UNetPreset(block_out_channels=(320, 640, 1280),
                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                        layers_per_block=2, attention_head_dim=(5, 10, 20),
                        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True),
        lr=1e-4, batch=2048, warmup_images=10_000 * 2048, parallel="fsdp",
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None


def build_unet(unet_config: dict[str, Any], seed: int = 0) -> nn.Module:
    """A UNet2DConditionModel with seeded initial weights (equal on every rank).

    A `conditioning_adapter` entry of the config (opencanvas.diffusion.conditioning) adds the
    adapter submodule, initialised after the UNet so the UNet's own weights do not change.
    """
    import torch
    from diffusers import UNet2DConditionModel

    from opencanvas.diffusion.conditioning import ADAPTER_KEY, attach_adapter, build_adapter

    config = {k: v for k, v in unet_config.items() if k != ADAPTER_KEY}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config)
        return attach_adapter(unet, build_adapter(unet_config.get(ADAPTER_KEY)))
