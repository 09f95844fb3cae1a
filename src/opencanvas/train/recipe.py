"""The efficient-training recipe of CommonCanvas / MosaicML's SD2 runs, switch by switch.

Each switch is on by default where the device supports it and can be turned
off for a baseline:

- bf16 autocast (CUDA with bf16 support; off on CPU, where bf16 matmuls are emulated and slower);
- SDPA attention: diffusers' AttnProcessor2_0 calls F.scaled_dot_product_attention,
  which dispatches to FlashAttention / memory-efficient kernels on GPU. Set explicitly,
  so a diffusers default change cannot silently turn it off;
- low-precision GroupNorm/LayerNorm: autocast runs norms in fp32 (upcast, then
  downcast); Composer's LowPrecisionGroupNorm runs them in bf16 instead, which
  halves their memory traffic. The norms are a large share of a UNet's time at 256 px;
- channels-last memory format for the convolutions (CUDA: tensor-core friendly layouts);
- fused AdamW (one kernel for the whole update; CUDA and, since torch 2.4, CPU);
- torch.compile (CUDA only by default: compiling costs minutes, which CPU demos never win back).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel


@dataclass(frozen=True)
class Recipe:
    bf16: bool
    sdpa: bool
    low_precision_norms: bool
    channels_last: bool
    fused_adamw: bool
    compile: bool

    def to_dict(self) -> dict[str, bool]:
        return dict(self.__dict__)


def resolve_recipe(device: torch.device, *, bf16: bool | None = None, sdpa: bool | None = None,
                   low_precision_norms: bool | None = None, channels_last: bool | None = None,
                   fused_adamw: bool | None = None, compile: bool | None = None) -> Recipe:
    """Fill the switches left as None with what `device` supports; refuse impossible ones."""
    cuda = device.type == "cuda"
    bf16_ok = cuda and torch.cuda.is_bf16_supported()
    if bf16 and not bf16_ok and device.type != "cpu":
        raise ValueError(f"--bf16 needs a device with bf16 support; {device} has none (use --no-bf16)")
    bf16 = bf16_ok if bf16 is None else bf16
    if low_precision_norms and not bf16:
        raise ValueError("--low-precision-norms only makes sense with --bf16 (norms run in the autocast dtype)")
    return Recipe(
        bf16=bf16,
        sdpa=True if sdpa is None else sdpa,
        low_precision_norms=bf16 if low_precision_norms is None else low_precision_norms,
        channels_last=cuda if channels_last is None else channels_last,
        fused_adamw=device.type in ("cuda", "cpu") if fused_adamw is None else fused_adamw,
        compile=cuda if compile is None else compile,
    )


# ---- low-precision norms --------------------------------------------------------------

class LowPrecisionGroupNorm(nn.GroupNorm):
    """GroupNorm computed in the autocast dtype instead of autocast's fp32 upcast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _autocast_dtype(x)
        if dtype is None:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.group_norm(x.to(dtype), self.num_groups, _cast(self.weight, dtype),
                                _cast(self.bias, dtype), self.eps)


class LowPrecisionLayerNorm(nn.LayerNorm):
    """LayerNorm computed in the autocast dtype instead of autocast's fp32 upcast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = _autocast_dtype(x)
        if dtype is None:
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x.to(dtype), self.normalized_shape, _cast(self.weight, dtype),
                                _cast(self.bias, dtype), self.eps)


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    if not torch.is_autocast_enabled(x.device.type):
        return None
    return torch.get_autocast_dtype(x.device.type)


def _cast(p: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if p is None else p.to(dtype)


def use_low_precision_norms(model: nn.Module) -> int:
    """Swap every GroupNorm/LayerNorm's class in place (parameters and state-dict keys unchanged).

    Returns how many modules were swapped.
    """
    swapped = 0
    for module in model.modules():
        if type(module) is nn.GroupNorm:
            module.__class__ = LowPrecisionGroupNorm
            swapped += 1
        elif type(module) is nn.LayerNorm:
            module.__class__ = LowPrecisionLayerNorm
            swapped += 1
    return swapped


# ---- applying the recipe ----------------------------------------------------------------

def apply_recipe(unet: UNet2DConditionModel, recipe: Recipe) -> None:
    """Attention processor, norms and memory format of a diffusers UNet, in place."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet.set_attn_processor(AttnProcessor2_0() if recipe.sdpa else AttnProcessor())
    if recipe.low_precision_norms:
        use_low_precision_norms(unet)
    if recipe.channels_last:
        unet.to(memory_format=torch.channels_last)


def autocast(device: torch.device, recipe: Recipe) -> contextlib.AbstractContextManager:
    if not recipe.bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def to_memory_format(x: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """(B, C, h, w) latents in the layout the convolutions were set to."""
    return x.contiguous(memory_format=torch.channels_last) if recipe.channels_last else x


def make_optimizer(params: Iterator[nn.Parameter], recipe: Recipe, *, lr: float, weight_decay: float,
                   betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    """AdamW; fused (one kernel for all parameters) when the recipe says so."""
    kwargs: dict[str, Any] = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
    if recipe.fused_adamw:
        kwargs["fused"] = True
    else:
        kwargs["foreach"] = False  # the plain per-parameter loop: the naive baseline
    return torch.optim.AdamW(params, **kwargs)
