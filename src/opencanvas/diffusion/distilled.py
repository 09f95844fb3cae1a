"""Sampling a guidance-distilled student (Meng et al. 2023, "On Distillation of Guided Diffusion Models").

The student takes the guidance scale as an input: w goes through Fourier features (here) and the
UNet's `time_cond_proj_dim` MLP, which adds it to the timestep embedding (Meng et al., Sec. 4.1).
One UNet call per step then gives the guided x0, so there is no CFG batch doubling.

Its steps are the teacher's deterministic DDIM (= Euler in sigma space) grid at `base_steps`
"trailing" steps, thinned by progressive distillation (Salimans & Ho 2022): a student distilled to
K steps samples at sigmas[::base_steps // K] of that grid.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, cast

import torch
from torch import nn

from opencanvas.diffusion.conditioning import Conditioning, as_conditioning
from opencanvas.diffusion.denoiser import Denoiser
from opencanvas.diffusion.samplers import HasSigmas, get_sigmas

GUIDANCE_EMBED_DIM = 256  # time_cond_proj_dim of a student


class DistilledStepsWarning(UserWarning):
    """Sampling a distilled student at a step count it was not distilled for."""


def guidance_embedding(guidance: torch.Tensor, dim: int = GUIDANCE_EMBED_DIM) -> torch.Tensor:
    """Fourier features of the guidance scale: (B,) -> (B, dim).

    The same features as diffusers' LatentConsistencyModelPipeline.get_guidance_scale_embedding on
    (guidance - 1), so guidance 1 (plain conditional) embeds the w = 0 of Meng et al.'s Eq. (2).
    """
    w = (guidance.float() - 1.0) * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


class GuidedStudent(nn.Module):
    """A student denoiser with the CFGDenoiser call signature: guided x0 in one pass.

    `guidance` is a float (sampling) or set per call (training, one scale per sample).
    uncond/uncond_mask are accepted and ignored, so samplers and generation code need no second path.
    """

    inner: Denoiser

    def __init__(self, denoiser: Denoiser, guidance: float = 1.0) -> None:
        super().__init__()
        self.inner = denoiser
        self.guidance = float(guidance)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning | torch.Tensor,
                cond_mask: torch.Tensor | None = None, uncond: Conditioning | torch.Tensor | None = None,
                uncond_mask: torch.Tensor | None = None, guidance: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, h, w); sigma: (B,); cond: a Conditioning or (B, L, D); guidance: (B,) (default: self.guidance)."""
        if guidance is None:
            guidance = torch.full((x.shape[0],), self.guidance, device=x.device)
        dim = int(cast(Any, self.inner.unet).config.time_cond_proj_dim)
        return self.inner(x, sigma, as_conditioning(cond, cond_mask),
                          timestep_cond=guidance_embedding(guidance.to(x.device), dim))


def teacher_sigmas(denoiser: HasSigmas, base_steps: int) -> torch.Tensor:
    """The teacher's DDIM grid that distillation halves: (base_steps + 1,), descending, ending with 0.

    trailing spacing, so that the first step starts at the largest training sigma (pure noise for
    1-step sampling, Lin et al. 2023, Sec. 3.3).
    """
    return get_sigmas(denoiser, base_steps, "trailing")


def distilled_sigmas(denoiser: HasSigmas, base_steps: int, distilled_steps: int, steps: int) -> torch.Tensor:
    """The student's sigmas for `steps` steps; warns when the student was distilled for another count."""
    if steps != distilled_steps:
        warnings.warn(f"this student was distilled for {distilled_steps} steps, sampling at {steps}: expect "
                      f"lower quality (use --steps {distilled_steps})", DistilledStepsWarning, stacklevel=2)
    if base_steps % steps == 0:
        return teacher_sigmas(denoiser, base_steps)[::base_steps // steps]
    return get_sigmas(denoiser, steps, "trailing")
