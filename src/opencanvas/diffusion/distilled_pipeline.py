"""A diffusers pipeline for a guidance-distilled OpenCanvas student (shipped in the exported folder).

`opencanvas export` copies this file into the folder as pipeline_distilled.py and names it in
model_index.json, so `DiffusionPipeline.from_pretrained(folder)` returns this class. No stock
pipeline feeds the guidance scale to a DDIM sampler through `timestep_cond`: the LCM pipeline does
feed it, but its scheduler adds fresh noise at every step, which is not the sampler the student was
distilled for. It imports only diffusers and torch, since it runs outside OpenCanvas.

One UNet call per step: w goes in as Fourier features through the UNet's time_cond_proj_dim MLP
(Meng et al. 2023), on deterministic DDIM over "trailing" timesteps (the grid it was distilled on).
"""

from __future__ import annotations

import math

import torch
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_output import StableDiffusionPipelineOutput


def guidance_embedding(guidance: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) -> (B, dim): the features of opencanvas.diffusion.distilled.guidance_embedding."""
    w = (guidance.float() - 1.0) * 1000.0
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=w.device) * -(math.log(10000.0) / (half - 1)))
    angles = w[:, None] * freqs[None, :]
    emb = torch.cat([angles.sin(), angles.cos()], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


class DistilledGuidancePipeline(StableDiffusionPipeline):
    """StableDiffusionPipeline's components; __call__ samples the student in a few guided steps."""

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 4, guidance_scale: float = 5.0,
                 height: int | None = None, width: int | None = None, num_images_per_prompt: int = 1,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, **_: object) -> StableDiffusionPipelineOutput:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        scale = self.vae_scale_factor
        height = height or self.unet.config.sample_size * scale
        width = width or self.unet.config.sample_size * scale
        device = self._execution_device
        embeds, _unused = self.encode_prompt(prompts, device, num_images_per_prompt, False)
        b = embeds.shape[0]
        shape = (b, self.unet.config.in_channels, height // scale, width // scale)
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        w = guidance_embedding(torch.full((b,), float(guidance_scale), device=device),
                               int(self.unet.config.time_cond_proj_dim)).to(self.unet.dtype)
        for t in self.progress_bar(self.scheduler.timesteps):
            out = self.unet(latents.to(self.unet.dtype), t, encoder_hidden_states=embeds, timestep_cond=w).sample
            latents = self.scheduler.step(out.float(), t, latents, eta=0.0).prev_sample
        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images, None)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)
