"""Samplers: pure functions of (denoiser, x, sigmas, extra_args).

Every sampler integrates the probability-flow ODE in sigma space,

    dx/dsigma = (x - D(x, sigma)) / sigma,    x = x0 + sigma * eps

(Karras et al. 2022, Eq. 3), where D is the x0-predicting denoiser of
`opencanvas.diffusion.denoiser.Denoiser`, possibly wrapped for classifier-free guidance.
There is no state between calls (k-diffusion `sampling.py`, EDM2 `edm_sampler`),
so one sampler can never drift between batches.

Conventions: `sigmas` is a 1-D float tensor, descending, ending with 0.
`x` starts at noise * sqrt(sigmas[0]**2 + 1) for a DDPM-trained model
(`initial_noise_scale`), which is what diffusers' `init_noise_sigma` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch

from opencanvas.diffusion.names import SAMPLER_NAMES, SPACINGS, Spacing


class DenoiserFn(Protocol):
    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor: ...


class HasSigmas(Protocol):
    sigmas: torch.Tensor  # (1000,) training sigmas, ascending


Callback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step, sigma, denoised)


def get_sigmas(denoiser: HasSigmas, steps: int, spacing: Spacing = "leading",
               steps_offset: int = 1, rho: float = 7.0) -> torch.Tensor:
    """`steps` sigmas (descending) plus a final 0: shape (steps + 1,).

    leading / trailing pick training timesteps as diffusers' `timestep_spacing`
    does (Lin et al. 2023, Table 2); leading uses SD's `steps_offset=1`.
    karras spaces sigma^(1/rho) evenly between sigma_max and sigma_min
    (Karras et al. 2022, Eq. 5).
    """
    train_sigmas = denoiser.sigmas.detach().cpu().double()
    n = train_sigmas.numel()
    if not 1 <= steps <= n:
        raise ValueError(f"steps must be in 1..{n}, got {steps}")
    if spacing == "leading":
        ratio = n // steps
        timesteps = (torch.arange(steps, dtype=torch.float64) * ratio).round().flip(0) + steps_offset
        timesteps = timesteps.clamp(max=n - 1).long()
        sigmas = train_sigmas[timesteps]
    elif spacing == "trailing":
        timesteps = (torch.arange(n, 0, -n / steps, dtype=torch.float64).round() - 1).long()
        sigmas = train_sigmas[timesteps]
    elif spacing == "karras":
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        lo, hi = float(train_sigmas[0]) ** (1 / rho), float(train_sigmas[-1]) ** (1 / rho)
        sigmas = (hi + ramp * (lo - hi)) ** rho
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def initial_noise_scale(sigmas: torch.Tensor) -> float:
    """Std of x at sigmas[0] for unit-variance data: sqrt(sigma^2 + 1) (VP prior in sigma space)."""
    return math.sqrt(float(sigmas[0]) ** 2 + 1.0)


def _d(x: torch.Tensor, denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """ODE slope dx/dsigma (Karras et al. 2022, Eq. 3)."""
    return (x - denoised) / sigma


def _call(model: DenoiserFn, x: torch.Tensor, sigma: torch.Tensor, extra_args: dict[str, Any]) -> torch.Tensor:
    return model(x, sigma * x.new_ones(x.shape[0]), **extra_args)


@torch.no_grad()
def sample_euler(model: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor,
                 extra_args: dict[str, Any] | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Euler's method (Karras et al. 2022, Algorithm 2 without churn). One model call per step."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        denoised = _call(model, x, sigmas[i], extra_args)
        if callback is not None:
            callback(i, sigmas[i], denoised)
        x = x + _d(x, denoised, sigmas[i]) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_ddim(model: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor,
                extra_args: dict[str, Any] | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Deterministic DDIM (eta=0, Song et al. 2021) in sigma space.

    x_next = x0 + sigma_next * eps with eps = (x - x0) / sigma: DDIM's update
    divided by sqrt(alpha_bar). Written as the re-noising form on purpose; it is
    algebraically the Euler step (Karras et al. 2022, Sec. 4).
    """
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        denoised = _call(model, x, sigmas[i], extra_args)
        if callback is not None:
            callback(i, sigmas[i], denoised)
        eps = (x - denoised) / sigmas[i]
        x = denoised + sigmas[i + 1] * eps
    return x


@torch.no_grad()
def sample_heun(model: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor,
                extra_args: dict[str, Any] | None = None, callback: Callback | None = None) -> torch.Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Algorithm 1, no churn).

    Two model calls per step, except the last step to sigma=0, which is Euler
    (the 2nd-order correction would divide by zero).
    """
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        denoised = _call(model, x, sigmas[i], extra_args)
        if callback is not None:
            callback(i, sigmas[i], denoised)
        d = _d(x, denoised, sigmas[i])
        dt = sigmas[i + 1] - sigmas[i]
        x_euler = x + d * dt
        if sigmas[i + 1] == 0:
            x = x_euler
            continue
        d_next = _d(x_euler, _call(model, x_euler, sigmas[i + 1], extra_args), sigmas[i + 1])
        x = x + (d + d_next) / 2 * dt
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: DenoiserFn, x: torch.Tensor, sigmas: torch.Tensor,
                    extra_args: dict[str, Any] | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), multistep, in lambda = -log(sigma).

    First and last steps are first order (the last because sigma_next=0), as in
    diffusers' DPMSolverMultistepScheduler with `final_sigmas_type="zero"`.
    """
    extra_args = extra_args or {}
    old_denoised: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = _call(model, x, sigmas[i], extra_args)
        if callback is not None:
            callback(i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised  # the first-order step to sigma=0 lands on the x0 estimate
            continue
        h = sigmas[i].log() - sigmas[i + 1].log()  # lambda_next - lambda
        if old_denoised is None or h_last is None:
            denoised_d = denoised
        else:
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigmas[i + 1] / sigmas[i]) * x - torch.expm1(-h) * denoised_d
        old_denoised, h_last = denoised, h
    return x


Sampler = Callable[..., torch.Tensor]

SAMPLERS: dict[str, Sampler] = {
    "ddim": sample_ddim,
    "dpmpp-2m": sample_dpmpp_2m,
    "euler": sample_euler,
    "heun": sample_heun,
}
assert tuple(SAMPLERS) == SAMPLER_NAMES, "add the sampler's name to opencanvas.diffusion.names too"

# Model evaluations per step (for throughput accounting; heun's last step is one).
CALLS_PER_STEP: dict[str, int] = {"ddim": 1, "dpmpp-2m": 1, "euler": 1, "heun": 2}


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}") from None
