"""Image-embedding conditioning (eDiff-I, unCLIP, Versatile Diffusion): tokens from a CLIP image
embedding, and classifier-free guidance with separate text and image scales.

`ImageTokens` maps one CLIP image embedding (B, E) to a few cross-attention tokens (B, N, D) through
one linear layer and a layer norm, as diffusers' IP-Adapter `ImageProjection` does; the tokens are
appended to the text tokens, so cross-attention reads both. The same embedding also goes into the
vector added to the timestep embedding (class_embed_type="projection"), as unCLIP adds its image
embedding to the timestep embedding.

`TextImageCFGDenoiser` guides text and image separately (InstructPix2Pix, Brooks et al. 2023, Eq. 3):
    x0 = x0(null, null) + s_I (x0(null, image) - x0(null, null)) + s_T (x0(text, image) - x0(null, image))
so an image variation (empty prompt) uses s_I alone, and a prompt mixes in with its own scale.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DEFAULT_IMAGE_TOKENS = 4


class ImageTokens(nn.Module):
    """(B, E) image embedding -> (B, N, D) tokens for cross-attention."""

    def __init__(self, image_dim: int, text_dim: int, tokens: int = DEFAULT_IMAGE_TOKENS) -> None:
        super().__init__()
        self.tokens, self.text_dim = int(tokens), int(text_dim)
        self.proj = nn.Linear(int(image_dim), self.tokens * self.text_dim)
        self.norm = nn.LayerNorm(self.text_dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        return self.norm(self.proj(image.to(self.proj.weight.dtype)).view(b, self.tokens, self.text_dim))


class TextImageCFGDenoiser(nn.Module):
    """Guidance with a text scale and an image scale; samplers call it with extra_args cond (text and
    image), image_cond (null text, the image) and uncond (null text, null image), Conditionings of B rows."""

    def __init__(self, inner: nn.Module, text_scale: float, image_scale: float) -> None:
        super().__init__()
        self.inner = inner
        self.text_scale, self.image_scale = float(text_scale), float(image_scale)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any, image_cond: Any, uncond: Any) -> torch.Tensor:
        from opencanvas.diffusion.conditioning import Conditioning  # conditioning imports ImageTokens from here

        both = self.inner(torch.cat([x, x, x]), torch.cat([sigma, sigma, sigma]),
                          Conditioning.cat([uncond, image_cond, cond]))
        x0_uncond, x0_image, x0_cond = both.chunk(3)  # (B, C, h, w) each
        return x0_uncond + self.image_scale * (x0_image - x0_uncond) + self.text_scale * (x0_cond - x0_image)
