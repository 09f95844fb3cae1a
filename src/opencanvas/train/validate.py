"""Validation grids during training: fixed prompts and seeds, so grids compare across time.

They differ from `opencanvas sample` on purpose, and are not drawn by its function
(`opencanvas.sample.generate.sample_latents`): `train` sits below `sample` in the layers,
and a grid drawn every few thousand images must be cheap. So they use the diffusion core's
pieces that `sample` also calls (`get_sigmas`, the samplers, classifier-free guidance) with
settings of their own: 20 Euler steps on trailing sigmas at guidance 5, where `sample`'s
defaults are 25 dpmpp-2m steps on leading sigmas (trailing for zero-terminal SNR) at
guidance 7.5. A grid shows how training progresses, not what `sample` gives: sample a
checkpoint (`opencanvas sample --run NAME`) for that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from opencanvas.components.reports import image_grid
from opencanvas.diffusion.conditioning import Conditioning
from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.diffusion.guidance import cfg_denoiser
from opencanvas.diffusion.samplers import get_sigmas, initial_noise_scale, sample_euler
from opencanvas.pixels import to_pil
from opencanvas.workspace import Workspace

if TYPE_CHECKING:
    from PIL import Image


@torch.no_grad()
def sample_euler_cfg(denoiser: Denoiser, cond: Conditioning, null: Conditioning,
                     latent_shape: tuple[int, int, int], seeds: list[int], steps: int = 20,
                     guidance: float = 5.0) -> torch.Tensor:
    """Normalised latents (B, C, h, w) for `cond` (B rows; `null` of batch 1), one fixed seed per image."""
    device = cond.text.device
    sigmas = get_sigmas(denoiser, steps, "trailing").to(device)
    noise = [torch.randn(latent_shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    x = torch.stack(noise).to(device) * initial_noise_scale(sigmas)  # (B, C, h, w)
    extra = {"cond": cond, "uncond": null.expand(x.shape[0])}
    return sample_euler(cfg_denoiser(denoiser, guidance), x, sigmas, extra)


class Validator:
    """Holds the text encoder and autoencoder of the latent set, and the prompts' embeddings."""

    def __init__(self, cfg: Any, autoencoder: Any, prompts: Conditioning, null: Conditioning,
                 device: torch.device) -> None:
        self.cfg, self.autoencoder, self.device = cfg, autoencoder, device
        # The prompts' conditioning (P rows) and the unconditional one (1 row: "", the null class).
        self.cond, self.null = prompts, null
        self.unet: Any = None

    @classmethod
    def create(cls, ws: Workspace, cfg: Any, device: torch.device) -> Validator:
        """Load the components named by the latent set (fails early, before any training)."""
        from opencanvas.train.pipeline import load_components

        data = cfg.data
        try:
            te, ae = load_components(ws, cfg.to_dict(), device)
        except (OSError, ValueError) as err:
            raise ValueError(f"--validate-every needs the latent set's text encoder and autoencoder "
                             f"({data.get('text_encoder')!r}, {data.get('autoencoder')!r}): {err}. "
                             "Pass --validate-every 0 to train without validation grids") from err
        from opencanvas.train.pipeline import prompt_conditioning

        def encode(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
            text, mask = te.encode(prompts)
            return text.float(), (mask if cfg.use_text_mask else None)

        from opencanvas.train.encoders import load_second_text_encoder, prompt_extras

        # With class conditioning the grids show the null class, with image conditioning the null image:
        # what the prompts alone give. A second text encoder joins the first as in training.
        config = cfg.to_dict()
        te2 = load_second_text_encoder(ws, data, device, cfg.text_encoders)

        def conditioning(prompts: list[str]) -> Conditioning:
            return prompt_extras(config, te, te2, prompts, prompt_conditioning(encode, config, prompts), None, device)

        return cls(cfg, ae, conditioning(list(cfg.validation_prompts)), conditioning([""]), device)

    def render(self, ema_state: dict[str, torch.Tensor], resolution: int, steps: int = 20,
               guidance: float = 5.0) -> Image.Image:
        """A grid of the EMA model's samples: one row per prompt, fixed seeds 0..1."""
        from opencanvas.train.presets import build_unet

        if self.unet is None:
            self.unet = build_unet(self.cfg.unet).to(self.device).eval()
        self.unet.load_state_dict(ema_state)
        denoiser = Denoiser(self.unet, NoiseSchedule(zero_terminal_snr=self.cfg.zero_terminal_snr),
                            self.cfg.prediction_type).to(self.device)
        seeds = [0, 1]
        prompts = self.cond.batch_size
        size = resolution // self.autoencoder.downscale
        shape = (int(self.cfg.unet["in_channels"]), size, size)
        latents = sample_euler_cfg(denoiser, self.cond.repeat_interleave(len(seeds)), self.null, shape,
                                   seeds * prompts, steps=steps, guidance=guidance)
        images = to_pil(self.autoencoder.decode(latents))
        return image_grid([images[i:i + len(seeds)] for i in range(0, len(images), len(seeds))], pad=0)
