"""The denoiser: owns the noise schedule, the parameterisation and the loss.

The UNet only maps (noisy latents, timestep, text) to a tensor; whether that
tensor is epsilon or v is this module's business (k-diffusion `Denoiser`,
EDM2 `Precond`). Samplers see a pure function of sigma:

    denoised = denoiser(x, sigma, cond)

where `cond` is a `conditioning.Conditioning` (text hidden states, mask, class labels, ...), or plain
text hidden states (B, L, D) with an optional mask.

with x = x0 + sigma * eps (the variance-exploding view of the DDPM chain,
Karras et al. 2022, Eq. 1), so one sampler works for every parameterisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from opencanvas.diffusion.conditioning import Conditioning, as_conditioning, unet_inputs

PredictionType = Literal["epsilon", "v_prediction"]


@dataclass(frozen=True)
class NoiseSchedule:
    """The discrete DDPM schedule of Stable Diffusion (scaled-linear betas)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    zero_terminal_snr: bool = False  # Lin et al. 2023, "Common Diffusion Noise Schedules are Flawed"

    def alphas_cumprod(self) -> torch.Tensor:
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        elif self.beta_schedule == "linear":
            betas = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        else:
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}")
        if self.zero_terminal_snr:
            betas = _rescale_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        if self.zero_terminal_snr:
            # sigma would be infinite at the last step; diffusers uses the same floor.
            alphas_cumprod[-1] = 2**-24
        return alphas_cumprod

    def to_dict(self) -> dict:
        return asdict(self)


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of Lin et al. 2023: shift/scale sqrt(alpha_bar) so the last one is 0."""
    sqrt_ab = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])
    return 1.0 - alphas


class Denoiser(nn.Module):
    """Wraps a diffusers UNet2DConditionModel into x0-prediction in sigma space."""

    # Buffers, declared so that type checkers see tensors rather than Module.__getattr__'s union.
    alphas_cumprod: torch.Tensor
    sigmas: torch.Tensor
    log_sigmas: torch.Tensor

    def __init__(self, unet: nn.Module, schedule: NoiseSchedule = NoiseSchedule(),
                 prediction_type: PredictionType = "epsilon") -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
        self.unet = unet
        self.schedule = schedule
        self.prediction_type = prediction_type
        alphas_cumprod = schedule.alphas_cumprod()
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.register_buffer("sigmas", sigmas.float(), persistent=False)
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for a sigma, interpolating linearly in log-sigma."""
        log_sigma = sigma.float().clamp(min=1e-10).log()
        dists = log_sigma[..., None] - self.log_sigmas
        low = dists.ge(0).cumsum(dim=-1).argmax(dim=-1).clamp(max=self.log_sigmas.numel() - 2)
        low_s, high_s = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((low_s - log_sigma) / (low_s - high_s)).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning | torch.Tensor,
                encoder_attention_mask: torch.Tensor | None = None,
                timestep_cond: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, h, w) = x0 + sigma * eps; sigma: (B,) or scalar. Returns x0 estimate.

        cond: a Conditioning, or text hidden states (B, L, D) with `encoder_attention_mask` (B, L).
        timestep_cond: (B, time_cond_proj_dim), a guidance-distilled UNet's guidance embedding.
        """
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).expand(x.shape[0])
        s = sigma.view(-1, 1, 1, 1)
        c_in = 1.0 / (s**2 + 1).sqrt()  # back to the DDPM input scale, sqrt(alpha_bar) * x
        dtype = self._unet_dtype()
        out = self.unet(
            (x * c_in).to(dtype),
            self.sigma_to_t(sigma),
            **unet_inputs(self.unet, as_conditioning(cond, encoder_attention_mask), dtype),
            **({} if timestep_cond is None else {"timestep_cond": timestep_cond.to(dtype)}),
        ).sample.float()
        if self.prediction_type == "epsilon":
            return x - s * out
        # v = sqrt(ab) eps - sqrt(1-ab) x0  =>  x0 = c_skip x + c_out v  (Salimans & Ho 2022)
        c_skip = 1.0 / (s**2 + 1)
        c_out = -s / (s**2 + 1).sqrt()
        return c_skip * x + c_out * out

    def _unet_dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def loss(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
             cond: Conditioning | torch.Tensor, encoder_attention_mask: torch.Tensor | None = None,
             min_snr_gamma: float | None = None) -> torch.Tensor:
        """Per-sample training loss (B,), in the UNet's own target space.

        x0: clean (normalised) latents; noise: eps of the same shape; timesteps: (B,) ints;
        cond: a Conditioning, or text hidden states (B, L, D) with `encoder_attention_mask`.
        min_snr_gamma: Min-SNR-gamma weighting (Hang et al. 2023), None for plain MSE.
        """
        ab = self.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        # No cast: under training autocast decides the compute dtype.
        pred = self.unet(x_t, timesteps, **unet_inputs(self.unet, as_conditioning(cond, encoder_attention_mask))
                         ).sample.float()
        if self.prediction_type == "epsilon":
            target = noise
        else:
            target = ab.sqrt() * noise - (1 - ab).sqrt() * x0
        per_sample = (pred - target.float()).pow(2).mean(dim=(1, 2, 3))
        if min_snr_gamma is not None:
            snr = (ab / (1 - ab)).view(-1)
            clipped = snr.clamp(max=min_snr_gamma)
            weight = clipped / snr if self.prediction_type == "epsilon" else clipped / (snr + 1)
            per_sample = per_sample * weight
        return per_sample


def lognormal_timesteps(denoiser: Denoiser, n: int, generator: torch.Generator, p_mean: float = -1.2,
                        p_std: float = 1.2) -> torch.Tensor:
    """(n,) training timesteps whose sigmas are log-normal (EDM, Karras et al. 2022, Sec. 5: P_mean, P_std).

    Uniform timesteps spend most of the batch at sigmas where the loss cannot improve (pure noise,
    or nearly clean); EDM concentrates them mid-range. Each sigma maps to the discrete timestep
    nearest in log-sigma, so the loss and its weighting stay those of the DDPM chain.
    """
    device = denoiser.log_sigmas.device
    log_sigma = p_mean + p_std * torch.randn(n, generator=generator, device=device)
    return denoiser.sigma_to_t(log_sigma.exp()).round().long()
