"""LPIPS loading and distance, the patch discriminator, and autoencoder training with both terms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from opencanvas.components.autoencoder import train_autoencoder
from opencanvas.components.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss
from opencanvas.components.lpips import LPIPS, load_lpips
from opencanvas.training.checkpoint import latest_checkpoint, load_checkpoint
from tests.factories import make_image_subset

FAST = dict(resolution=32, batch_size=4, holdout=0.25)


def random_lpips_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """The documented keys with random values (lin weights non-negative, as LPIPS trains them)."""
    torch.manual_seed(seed)
    weights = LPIPS().state_dict()
    return {k: (v.abs() if k.startswith("lin") else v).contiguous() for k, v in weights.items()}


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lpips") / "lpips_vgg16.safetensors"
    save_file(random_lpips_weights(), path)
    return path


def test_documented_keys_and_loaded_weights_equal_saved(weights_file):
    saved = load_file(weights_file)
    assert sum(k.startswith("features.") for k in saved) == 26                   # 13 convs: weight + bias
    assert [k for k in saved if k.startswith("lin")] == [f"lin{i}.model.1.weight" for i in range(5)]
    loaded = load_lpips(weights_file).state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_distance_is_zero_on_itself_grows_with_noise_and_is_symmetric(weights_file):
    model = load_lpips(weights_file)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    noise = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        same = model(x, x)
        small, large = model(x, x + 0.05 * noise), model(x, x + 0.5 * noise)
        assert same.shape == (2,) and same.abs().max() < 1e-6
        assert (small > 0).all() and (large > small).all()
        torch.testing.assert_close(model(x + 0.5 * noise, x), large)


def test_other_namings_and_pth_files_load(tmp_path, weights_file):
    saved = load_file(weights_file)
    slices = {3: 1, 8: 2, 15: 3, 22: 4, 29: 5}  # torchvision index < boundary -> lpips package slice
    renamed = {}
    for key, value in saved.items():
        if key.startswith("features."):
            index = int(key.split(".")[1])
            slice_no = min(s for bound, s in slices.items() if index <= bound)
            key = f"net.slice{slice_no}.{index}.{key.split('.')[-1]}"
        else:
            key = key.replace("lin", "lins.", 1)
        renamed[f"loss.perceptual_loss.{key}"] = value
    renamed["classifier.0.weight"] = torch.zeros(1)  # ignored
    torch.save(renamed, tmp_path / "lpips.pth")
    loaded = load_lpips(tmp_path / "lpips.pth").state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_bad_files_say_what_is_wrong(tmp_path, weights_file):
    saved = load_file(weights_file)
    save_file({k: v for k, v in saved.items() if k not in ("features.28.bias", "lin4.model.1.weight")},
              tmp_path / "partial.safetensors")
    with pytest.raises(ValueError, match=r"lacks 2 LPIPS-VGG16 key\(s\): features.28.bias, lin4.model.1.weight"):
        load_lpips(tmp_path / "partial.safetensors")
    save_file({**saved, "lin0.model.1.weight": -saved["lin0.model.1.weight"]}, tmp_path / "negative.safetensors")
    with pytest.raises(ValueError, match="negative lin-layer weights"):
        load_lpips(tmp_path / "negative.safetensors")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_lpips(tmp_path / "missing.safetensors")


def test_discriminator_shapes_hinge_and_adaptive_weight():
    torch.manual_seed(0)
    disc = PatchDiscriminator()
    assert disc(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 2, 2)                 # one logit per patch
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)).item() == 0.0
    assert hinge_d_loss(torch.zeros(4), torch.zeros(4)).item() == 1.0
    layer = torch.ones(3, requires_grad=True)
    rec, g = (2 * layer).sum(), (layer / 2).sum()                               # gradient norms 2 sqrt3, sqrt3/2
    assert adaptive_weight(rec, g, layer, 0.5).item() == pytest.approx(0.5 * 4, rel=1e-3)


def test_training_with_lpips_and_discriminator_resumes_exactly(ws, weights_file):
    from typer.testing import CliRunner

    from opencanvas.cli import app

    make_image_subset(ws, "shapes", n=40, size=32)
    options = dict(perceptual_weights=weights_file, perceptual_weight=1.0, disc_weight=0.5, disc_start=1)
    report = train_autoencoder(ws, "shapes", "straight", steps=4, **FAST, **options)
    assert report["perceptual_loss"] == f"lpips-vgg16 from {weights_file}, weight 1"
    assert report["discriminator"] == "patchgan 3 layers, hinge, from step 1, weight 0.5 (adaptive)"
    assert torch.isfinite(torch.tensor([report["loss_first"], report["loss_last"]])).all()
    record = json.loads((ws.autoencoder_dir("straight") / "opencanvas.json").read_text())
    assert record["training"]["loss"] == "l1+kl+lpips+patchgan" and len(record["training"]["lpips_sha256"]) == 64

    # half the steps through the CLI, the rest on resume: the same weights, discriminator included
    args = ["autoencoder", "train", "-w", str(ws.root), "--subset", "shapes", "--name", "resumed", "--steps", "2",
            "--resolution", "32", "--batch-size", "4", "--holdout", "0.25", "--lpips-weights", str(weights_file),
            "--perceptual-weight", "1", "--disc-weight", "0.5", "--disc-start", "1"]
    ok = CliRunner().invoke(app, args)
    assert ok.exit_code == 0, ok.output
    train_autoencoder(ws, "shapes", "resumed", steps=4, **FAST, **options)
    a, b = (load_checkpoint(latest_checkpoint(ws.autoencoder_dir(n))) for n in ("straight", "resumed"))
    assert set(a.extra) == {"discriminator"} and set(a.extra_optimizers) == {"discriminator"}
    torch.testing.assert_close(a.model, b.model, rtol=0, atol=0)
    torch.testing.assert_close(a.extra, b.extra, rtol=0, atol=0)
    torch.testing.assert_close(a.extra_optimizers["discriminator"]["state"],
                               b.extra_optimizers["discriminator"]["state"], rtol=0, atol=0)


def test_discriminator_off_and_not_reached_are_reported(ws, weights_file):
    make_image_subset(ws, "shapes", n=40, size=32)
    report = train_autoencoder(ws, "shapes", "late", steps=1, **FAST, perceptual_weights=weights_file)
    assert report["discriminator"].endswith("from step 250, weight 0.5 (adaptive); not reached: trained 1 steps")
    report = train_autoencoder(ws, "shapes", "nodisc", steps=1, **FAST, perceptual_weights=weights_file,
                               disc_weight=0.0)
    assert report["discriminator"] == "off (--disc-weight 0)"
    assert load_checkpoint(latest_checkpoint(ws.autoencoder_dir("nodisc"))).extra == {}
