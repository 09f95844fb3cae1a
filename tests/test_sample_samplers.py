"""Sampler contract tests (every sampler), schedules, guidance, and agreement with diffusers.

The diffusers loops are run by hand (`set_timesteps` / `scale_model_input` / `step`)
on the same tiny UNet and the same initial noise as our pure samplers.
"""

from __future__ import annotations

import math

import pytest
import torch

from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.diffusion.guidance import CFGDenoiser, rescale_guidance
from opencanvas.diffusion.samplers import SAMPLERS, get_sampler, get_sigmas, initial_noise_scale
from opencanvas.sample.tiny import TEXT_DIM, tiny_unet

SCHEDULE_KW = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


class GaussianDenoiser(torch.nn.Module):
    """The exact denoiser of data ~ N(0, s_d^2): D(x, sigma) = x * s_d^2 / (s_d^2 + sigma^2)."""

    def __init__(self, s_d: float) -> None:
        super().__init__()
        self.s_d = s_d
        self.sigmas = Denoiser(torch.nn.Linear(1, 1)).sigmas

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1)
        return x * self.s_d**2 / (self.s_d**2 + s**2)


@pytest.fixture(scope="module")
def unet_denoiser() -> Denoiser:
    return Denoiser(tiny_unet(seed=0), NoiseSchedule(), "epsilon").eval()


@pytest.fixture(scope="module")
def text() -> torch.Tensor:
    return torch.randn(2, 16, TEXT_DIM, generator=torch.Generator().manual_seed(1))  # (B, L, D)


# ---- the contract every sampler holds ------------------------------------------------

@pytest.mark.parametrize("name", list(SAMPLERS))
def test_constant_denoiser_lands_exactly_on_x0(name: str) -> None:
    target = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = get_sigmas(GaussianDenoiser(1.0), 7, "karras")
    x = torch.randn(3, 4, 8, 8) * initial_noise_scale(sigmas)
    out = get_sampler(name)(lambda x, sigma: target.clone(), x, sigmas)
    torch.testing.assert_close(out, target, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_converges_to_the_exact_ode_solution(name: str) -> None:
    """For Gaussian data the PF-ODE has x(0) = x_T * s_d / sqrt(s_d^2 + sigma_T^2)."""
    model = GaussianDenoiser(0.5)
    x_t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 10
    errors = []
    for steps in (10, 50):
        sigmas = get_sigmas(model, steps, "karras").double()
        exact = x_t.double() * 0.5 / math.sqrt(0.25 + float(sigmas[0]) ** 2)
        out = get_sampler(name)(model, x_t.double(), sigmas)
        errors.append(float((out - exact).abs().max() / exact.abs().max()))
    assert errors[1] < errors[0], errors          # more steps, less error
    assert errors[1] < (0.05 if name in ("euler", "ddim") else 0.002), errors


def test_second_order_samplers_beat_euler_at_equal_steps() -> None:
    model = GaussianDenoiser(0.5)
    x_t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).double() * 10
    sigmas = get_sigmas(model, 50, "karras").double()
    exact = x_t * 0.5 / math.sqrt(0.25 + float(sigmas[0]) ** 2)
    err = {n: float((SAMPLERS[n](model, x_t, sigmas) - exact).abs().max()) for n in SAMPLERS}
    assert err["heun"] < err["euler"] / 20 and err["dpmpp-2m"] < err["euler"] / 20, err
    assert err["ddim"] == pytest.approx(err["euler"], rel=1e-6)  # DDIM(eta=0) is Euler in sigma space


def test_unknown_sampler_and_bad_steps_fail_clearly() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        get_sampler("plms")
    with pytest.raises(ValueError, match="steps"):
        get_sigmas(GaussianDenoiser(1.0), 0)


# ---- schedules against diffusers --------------------------------------------------------

@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("leading", 7), ("trailing", 10), ("karras", 12)])
def test_sigmas_match_diffusers_euler(spacing: str, steps: int) -> None:
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(**SCHEDULE_KW, steps_offset=1, use_karras_sigmas=spacing == "karras",
                                   # diffusers' Karras range is that of the spaced timesteps: linspace spans all.
                                   timestep_spacing="linspace" if spacing == "karras" else spacing)
    sched.set_timesteps(steps)
    ours = get_sigmas(Denoiser(torch.nn.Linear(1, 1)), steps, spacing)
    torch.testing.assert_close(ours, sched.sigmas.float(), rtol=2e-5, atol=1e-6)


# ---- whole sampling loops against diffusers' schedulers -----------------------------------

def _diffusers_loop(sched, unet, noise: torch.Tensor, ehs: torch.Tensor, steps: int) -> torch.Tensor:
    sched.set_timesteps(steps)
    latents = noise * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(sched.scale_model_input(latents, t), t, encoder_hidden_states=ehs).sample
            latents = sched.step(eps, t, latents).prev_sample
    return latents


def _scheduler(name: str, spacing: str):
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

    common = dict(**SCHEDULE_KW, timestep_spacing=spacing, steps_offset=1 if spacing == "leading" else 0)
    if name == "euler":
        return EulerDiscreteScheduler(**common)
    if name == "heun":
        return HeunDiscreteScheduler(**common)
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True)
    return DPMSolverMultistepScheduler(**common, solver_order=2, algorithm_type="dpmsolver++",
                                       use_karras_sigmas=False, lower_order_final=True, final_sigmas_type="zero")


@pytest.mark.parametrize("name,spacing", [("euler", "leading"), ("euler", "trailing"), ("heun", "leading"),
                                          ("ddim", "leading"), ("ddim", "trailing"), ("dpmpp-2m", "trailing")])
def test_agrees_with_diffusers_scheduler(name: str, spacing: str, unet_denoiser: Denoiser,
                                         text: torch.Tensor) -> None:
    steps = 10
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))  # (B, C, h, w)
    sched = _scheduler(name, spacing)
    theirs = _diffusers_loop(sched, unet_denoiser.unet, noise, text, steps)
    sigmas = get_sigmas(unet_denoiser, steps, spacing)
    # Both start from the same x: diffusers' VP-space latents times sqrt(sigma0^2 + 1) (1 for Euler/Heun).
    x = noise * (sched.init_noise_sigma if name in ("euler", "heun") else initial_noise_scale(sigmas))
    ours = SAMPLERS[name](unet_denoiser, x, sigmas, extra_args={"cond": text})
    assert theirs.abs().mean() > 0.1  # a non-trivial result
    torch.testing.assert_close(ours, theirs, rtol=2e-4, atol=2e-4)


# ---- guidance --------------------------------------------------------------------------

def test_cfg_is_linear_and_rescale_matches_diffusers(unet_denoiser: Denoiser, text: torch.Tensor) -> None:
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 5
    sigma = torch.full((2,), 4.0)
    cond, uncond = text, torch.zeros_like(text)
    args = dict(cond=cond, cond_mask=None, uncond=uncond, uncond_mask=None)
    d_c, d_u = unet_denoiser(x, sigma, cond), unet_denoiser(x, sigma, uncond)
    torch.testing.assert_close(CFGDenoiser(unet_denoiser, 1.0)(x, sigma, **args), d_c)
    torch.testing.assert_close(CFGDenoiser(unet_denoiser, 0.0)(x, sigma, **args), d_u)
    torch.testing.assert_close(CFGDenoiser(unet_denoiser, 7.5)(x, sigma, **args), d_u + 7.5 * (d_c - d_u),
                               rtol=1e-4, atol=1e-4)
    eps_c, eps_u = (x - d_c) / 4.0, (x - d_u) / 4.0
    expected_eps = rescale_noise_cfg(eps_u + 7.5 * (eps_c - eps_u), eps_c, guidance_rescale=0.7)
    got = CFGDenoiser(unet_denoiser, 7.5, guidance_rescale=0.7)(x, sigma, **args)
    torch.testing.assert_close(got, x - 4.0 * expected_eps, rtol=1e-4, atol=1e-4)
    assert rescale_guidance(eps_c, eps_u, 0.0) is eps_c


def test_zero_terminal_snr_runs_default_to_trailing_spacing() -> None:
    """Trailing spacing starts at the last (infinite-noise) timestep; leading would skip it."""
    from types import SimpleNamespace

    from opencanvas.sample.generate import default_spacing

    zsnr = Denoiser(torch.nn.Linear(1, 1), NoiseSchedule(zero_terminal_snr=True), "v_prediction")
    assert default_spacing(SimpleNamespace(denoiser=zsnr)) == "trailing"
    assert default_spacing(SimpleNamespace(denoiser=Denoiser(torch.nn.Linear(1, 1)))) == "leading"
    sigmas = get_sigmas(zsnr, 10, "trailing")
    assert float(sigmas[0]) == pytest.approx(zsnr.sigma_max) and zsnr.sigma_max > 1000


def test_dpmpp_2m_leading_differs_from_diffusers_only_in_its_timesteps(unet_denoiser: Denoiser,
                                                                         text: torch.Tensor) -> None:
    """diffusers' DPMSolverMultistep spaces "leading" as 1000 // (steps + 1) (not 1000 // steps like
    Euler/DDIM), so its timesteps differ from get_sigmas(leading); on its own sigmas the loops agree."""
    steps = 10
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sched = _scheduler("dpmpp-2m", "leading")
    theirs = _diffusers_loop(sched, unet_denoiser.unet, noise, text, steps)
    assert not torch.allclose(sched.sigmas.float(), get_sigmas(unet_denoiser, steps, "leading"))
    sigmas = sched.sigmas.float()
    ours = SAMPLERS["dpmpp-2m"](unet_denoiser, noise * initial_noise_scale(sigmas), sigmas,
                                extra_args={"cond": text})
    torch.testing.assert_close(ours, theirs, rtol=2e-4, atol=2e-4)
