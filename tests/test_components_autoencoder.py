"""Autoencoder training: loss, latent statistics, records, resume and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from opencanvas.components.autoencoder import autoencoder_loss, channel_statistics, train_autoencoder
from opencanvas.components.images import load_subset_images
from opencanvas.components.loading import load_autoencoder
from opencanvas.components.metrics import psnr, ssim
from opencanvas.components.presets import AUTOENCODER_PRESETS
from opencanvas.pixels import to_unit_range
from opencanvas.training.checkpoint import latest_checkpoint, load_checkpoint
from opencanvas.training.metrics_log import read_rows
from tests.factories import make_image_subset

FAST = dict(resolution=32, batch_size=4, holdout=0.25)


def checkpoint_weights(directory) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(directory)).model


def test_channel_statistics_match_numpy():
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(10, 4, 5, 6)) * np.array([1, 2, 3, 4])[None, :, None, None] \
        + np.array([-1, 0, 1, 5])[None, :, None, None]
    mean, std = channel_statistics(torch.from_numpy(latents).float())
    np.testing.assert_allclose(mean, latents.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std, latents.std(axis=(0, 2, 3)), rtol=1e-5)


def test_metrics_on_known_images():
    ref = torch.rand(2, 3, 16, 16)
    assert ssim(ref, ref).tolist() == pytest.approx([1.0, 1.0])
    noisy = (ref + 0.1).clamp(0, 1)
    expected = 10 * np.log10(1 / ((noisy - ref) ** 2).flatten(1).mean(1).numpy())
    np.testing.assert_allclose(psnr(noisy, ref).numpy(), expected, rtol=1e-5)
    assert (ssim(torch.rand(2, 3, 16, 16), ref) < 0.5).all()


def test_tiny_preset_overfits_a_fixed_batch(ws):
    from diffusers import AutoencoderKL

    make_image_subset(ws, "shapes", n=4, size=32, shard_size=4)
    x = to_unit_range(load_subset_images(ws, "shapes", 32).pixels)          # (4, 3, 32, 32)
    torch.manual_seed(0)
    vae = AutoencoderKL(**AUTOENCODER_PRESETS["tiny"].diffusers_config(32))
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    losses = []
    for step in range(25):
        loss, parts = autoencoder_loss(vae, x, 1e-6, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert parts["kl"] > 0
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_train_record_report_and_round_trip(ws):
    make_image_subset(ws, "shapes", n=40, size=32)
    report = train_autoencoder(ws, "shapes", "ae", steps=3, **FAST)
    out = ws.autoencoder_dir("ae")
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "report.md", "reconstructions.png"):
        assert (out / name).exists(), name
    record = json.loads((out / "opencanvas.json").read_text())
    assert record["finished"] and record["policy"] == "commercial" and record["catalog_hash"] == "test"
    assert record["steps"] == 3 and record["images_seen"] == 12 and len(record["latent_scale"]) == 4
    assert report["images_train"] + report["images_heldout"] == 40 and 0 < report["heldout_ssim"] <= 1
    assert json.loads((out / "report.json").read_text()) == report

    ae = load_autoencoder(ws, "ae")
    assert ae.provenance["origin"] == "workspace" and ae.provenance["subset"] == "shapes"
    assert ae.downscale == 4 and ae.shift == record["latent_shift"] and ae.scale == record["latent_scale"]
    # the saved weights are exactly the trained ones (checkpoint of the last step)
    trained = checkpoint_weights(out)
    for key, value in ae.vae.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    # normalised latents of the statistics sample are standardised per channel
    train_keys = set(load_subset_images(ws, "shapes", 32).keys) - set(record["heldout_keys"])
    pixels = load_subset_images(ws, "shapes", 32, keys=sorted(train_keys)).pixels
    mean, std = ae.encode(to_unit_range(pixels))
    z = ae.normalize(mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1)))
    m, s = channel_statistics(z)
    assert np.allclose(m, 0, atol=0.15) and np.allclose(s, 1, atol=0.15), (m, s)


def test_resume_is_the_uninterrupted_run(ws):
    make_image_subset(ws, "shapes", n=40, size=32)
    train_autoencoder(ws, "shapes", "straight", steps=4, **FAST)
    train_autoencoder(ws, "shapes", "resumed", steps=2, **FAST)
    before = (ws.autoencoder_dir("resumed") / "opencanvas.json").stat().st_mtime_ns
    assert train_autoencoder(ws, "shapes", "resumed", steps=2, **FAST)["steps"] == 2  # finished: no work
    assert (ws.autoencoder_dir("resumed") / "opencanvas.json").stat().st_mtime_ns == before
    assert train_autoencoder(ws, "shapes", "resumed", steps=4, **FAST)["steps"] == 4  # more budget: trains on
    a, b = checkpoint_weights(ws.autoencoder_dir("straight")), checkpoint_weights(ws.autoencoder_dir("resumed"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="other settings"):
        train_autoencoder(ws, "shapes", "resumed", steps=4, **{**FAST, "batch_size": 8})


@pytest.mark.slow
def test_killed_training_resumes_without_losing_or_repeating_steps(ws):
    make_image_subset(ws, "shapes", n=40, size=32)
    script = textwrap.dedent(f"""
        from opencanvas.workspace import Workspace
        from opencanvas.components.autoencoder import train_autoencoder
        train_autoencoder(Workspace.open({str(ws.root)!r}), "shapes", "ae", steps=100000, resolution=32,
                          batch_size=4, holdout=0.25, checkpoint_every=4)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stderr=subprocess.DEVNULL)
    out = ws.autoencoder_dir("ae")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        newest = latest_checkpoint(out)
        if newest is not None and int(newest.name[5:17]) >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(latest_checkpoint(out)).state.steps
    assert done >= 2
    report = train_autoencoder(ws, "shapes", "ae", steps=done + 2, **FAST)
    assert report["steps"] == done + 2 and report["images_seen"] == 4 * (done + 2)
    # each step logged once, however many the kill made it redo
    assert [r["images_seen"] for r in read_rows(out)] == list(range(4, 4 * (done + 2) + 1, 4))


def test_bad_input_says_what_to_do(ws):
    with pytest.raises(FileNotFoundError, match="opencanvas catalog subset"):
        train_autoencoder(ws, "nope", "ae", steps=1, **FAST)
    with pytest.raises(ValueError, match="takes resolutions"):
        train_autoencoder(ws, "nope", "ae", steps=1, resolution=50)
    with pytest.raises(FileNotFoundError, match="without --lpips-weights"):
        train_autoencoder(ws, "nope", "ae", steps=1, perceptual_weights="lpips.pth")
    with pytest.raises(ValueError, match="need --lpips-weights"):
        train_autoencoder(ws, "nope", "ae", steps=1, disc_weight=0.1)
    make_image_subset(ws, "few", n=6, size=32, shard_size=6)
    with pytest.raises(ValueError, match="too few images"):
        train_autoencoder(ws, "few", "ae", steps=1, **FAST)


def test_cli_trains_and_reports_errors(ws):
    from typer.testing import CliRunner

    from opencanvas.cli import app

    make_image_subset(ws, "shapes", n=40, size=32)
    runner = CliRunner()
    ok = runner.invoke(app, ["autoencoder", "train", "-w", str(ws.root), "--subset", "shapes", "--name", "cli",
                             "--steps", "2", "--resolution", "32", "--batch-size", "4", "--holdout", "0.25"])
    assert ok.exit_code == 0, ok.output
    assert "held-out PSNR" in ok.output and (ws.autoencoder_dir("cli") / "report.json").exists()
    bad = runner.invoke(app, ["autoencoder", "train", "-w", str(ws.root), "--subset", "shapes", "--name", "x",
                              "--resolution", "36"])
    assert bad.exit_code == 2 and "takes resolutions" in bad.output
