"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

The wrapper has the same signature as the denoiser, so every sampler gets
guidance for free. Conditional and unconditional (or negative-prompt) passes
share one batch: (2B, C, h, w) in, two halves out.
"""

from __future__ import annotations

import torch
from torch import nn

from opencanvas.diffusion.conditioning import Conditioning, as_conditioning


def rescale_guidance(eps_cfg: torch.Tensor, eps_cond: torch.Tensor, guidance_rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, Sec. 3.4, Eq. 15-16), on the noise prediction as diffusers does.

    Matches the per-sample std of the guided prediction to the conditional one,
    which undoes the over-exposure high guidance causes; phi=guidance_rescale blends.
    eps_*: (B, C, h, w).
    """
    if guidance_rescale <= 0:
        return eps_cfg
    dims = tuple(range(1, eps_cfg.ndim))
    std_cond = eps_cond.std(dim=dims, keepdim=True)
    std_cfg = eps_cfg.std(dim=dims, keepdim=True)
    rescaled = eps_cfg * (std_cond / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * eps_cfg


class CFGDenoiser(nn.Module):
    """x0 = D_uncond + g * (D_cond - D_uncond), optionally with guidance rescale.

    `uncond` is the empty prompt's embedding, or the negative prompt's.
    guidance 1 runs the conditional pass only, guidance 0 the unconditional only,
    so neither pays for a pass whose weight is zero.
    """

    def __init__(self, denoiser: nn.Module, guidance_scale: float, guidance_rescale: float = 0.0) -> None:
        super().__init__()
        self.inner = denoiser
        self.guidance_scale = float(guidance_scale)
        self.guidance_rescale = float(guidance_rescale)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning | torch.Tensor,
                cond_mask: torch.Tensor | None = None, uncond: Conditioning | torch.Tensor | None = None,
                uncond_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, h, w); sigma: (B,); cond/uncond: Conditionings of B rows (all fields are batched
        together), or (B, L, D) text hidden states with their masks (B, L)."""
        if uncond is None:
            raise ValueError("classifier-free guidance needs the unconditional (or negative) conditioning")
        c, u = as_conditioning(cond, cond_mask), as_conditioning(uncond, uncond_mask)
        g = self.guidance_scale
        if g == 1.0:
            return self.inner(x, sigma, c)
        if g == 0.0:
            return self.inner(x, sigma, u)
        if (c.mask is None) != (u.mask is None):  # a mask for one half only: neither half gets one
            c, u = c.replace(mask=None), u.replace(mask=None)
        both = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), Conditioning.cat([u, c]))
        x0_uncond, x0_cond = both.chunk(2)  # (B, C, h, w) each
        x0 = x0_uncond + g * (x0_cond - x0_uncond)
        if self.guidance_rescale <= 0:
            return x0
        # Rescale in eps space, eps = (x - x0) / sigma (linear, so CFG itself is the same there).
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        eps_cfg = rescale_guidance((x - x0) / s, (x - x0_cond) / s, self.guidance_rescale)
        return x - s * eps_cfg


def cfg_denoiser(denoiser: nn.Module, guidance_scale: float, guidance_rescale: float = 0.0) -> CFGDenoiser:
    """The guided denoiser a sampler calls with extra_args cond and uncond (Conditionings)."""
    return CFGDenoiser(denoiser, guidance_scale, guidance_rescale)
