"""The demo-quality levers of issue 20: EDM log-normal training timesteps and the low-attention tiny preset."""

from __future__ import annotations

import json
import math

import pytest
import torch

from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule, lognormal_timesteps
from opencanvas.encode.synthetic import write_random_latents
from opencanvas.train import loop
from opencanvas.train.presets import build_unet, get_preset


def test_lognormal_timesteps_have_edm_sigmas():
    denoiser = Denoiser(torch.nn.Linear(1, 1), NoiseSchedule(zero_terminal_snr=True), "v_prediction")
    t = lognormal_timesteps(denoiser, 20_000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    log_sigma = denoiser.log_sigmas[t]
    # ln(sigma) ~ N(-1.2, 1.2^2), up to rounding to the chain's steps (about 0.01 apart in ln sigma mid-chain)
    assert abs(float(log_sigma.median()) + 1.2) < 0.05
    assert abs(float(log_sigma.std()) - 1.2) < 0.05
    # uniform timesteps put 10% of the batch in the last hundred steps (sigma > 7); EDM almost none
    assert float((t >= 900).float().mean()) < 0.01
    same = lognormal_timesteps(denoiser, 20_000, torch.Generator().manual_seed(0))
    assert torch.equal(t, same)


def test_lognormal_timesteps_map_to_the_nearest_step_in_log_sigma():
    denoiser = Denoiser(torch.nn.Linear(1, 1))
    gen = torch.Generator().manual_seed(1)
    t = lognormal_timesteps(denoiser, 2_000, gen)
    # redraw the same sigmas and compare with a brute-force nearest neighbour
    log_sigma = -1.2 + 1.2 * torch.randn(2_000, generator=torch.Generator().manual_seed(1))
    nearest = (log_sigma[:, None] - denoiser.log_sigmas).abs().argmin(dim=1)
    inside = (log_sigma > denoiser.log_sigmas[0]) & (log_sigma < denoiser.log_sigmas[-1])
    assert torch.equal(t[inside], nearest[inside])
    # sigmas beyond the chain (sigma_max is 14.6 without zero-terminal SNR) clamp to its ends
    assert bool((t[log_sigma >= denoiser.log_sigmas[-1]] == 999).all())
    assert bool((t[log_sigma <= denoiser.log_sigmas[0]] == 0).all())
    assert math.isclose(float(denoiser.sigmas[int(t.max())]), denoiser.sigma_max) and float(log_sigma.max()) > 2.7


def test_training_with_lognormal_timesteps_records_them_and_changes_the_steps(ws):
    write_random_latents(ws, "lat", 8, resolution=64, shard_size=8, text_len=8, text_dim=32)
    common = dict(images=16, batch=8, prediction_type="v_prediction", zero_terminal_snr=True)
    loop.train(ws, "lat", "tiny", "uniform", **common)
    loop.train(ws, "lat", "tiny", "edm", timestep_sampling="lognormal", **common)
    config = json.loads((ws.run_dir("edm") / "config.json").read_text())
    assert config["timestep_sampling"] == "lognormal" and config["lognormal_mean"] == -1.2

    def first_loss(run: str) -> float:
        return json.loads((ws.run_dir(run) / "metrics.jsonl").read_text().splitlines()[0])["loss"]

    assert first_loss("edm") != first_loss("uniform")   # same images and noise, other timesteps
    with pytest.raises(ValueError, match="timestep-sampling"):
        loop.train(ws, "lat", "tiny", "bad", timestep_sampling="cosine", **common)


def test_tiny_lowattn_attends_only_at_the_lowest_resolution():
    config = get_preset("tiny-lowattn").unet.unet_config(4, 32, 16)
    unet = build_unet(config)
    with_attention = [hasattr(b, "attentions") for b in unet.down_blocks]
    assert with_attention == [False, True]   # 16x16 plain, 8x8 attends
    assert [hasattr(b, "attentions") for b in unet.up_blocks] == [True, False]
    out = unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), encoder_hidden_states=torch.randn(2, 8, 32))
    assert out.sample.shape == (2, 4, 16, 16)


def test_a_run_stored_before_a_field_existed_resumes_with_its_default(ws):
    write_random_latents(ws, "lat", 8, resolution=64, shard_size=8, text_len=8, text_dim=32)
    loop.train(ws, "lat", "tiny", "old", images=8, batch=8)
    path = ws.run_dir("old") / "config.json"
    stored = json.loads(path.read_text())
    for key in ("timestep_sampling", "lognormal_mean", "lognormal_std"):   # as written before they existed
        del stored[key]
    path.write_text(json.dumps(stored))
    summary = loop.train(ws, "lat", "tiny", "old", images=16, batch=8)   # resumes: uniform was the default
    assert summary["images_seen"] == 16
    with pytest.raises(ValueError, match="timestep_sampling: 'uniform' -> 'lognormal'"):
        loop.train(ws, "lat", "tiny", "old", images=24, batch=8, timestep_sampling="lognormal")
