"""Train a diffusers AutoencoderKL on a subset's images (`opencanvas autoencoder train`).

Loss (Rombach et al. 2022, without the optional perceptual and GAN terms):
    L = mean |x - D(z)| + kl_weight * KL(q(z|x) || N(0, I)) / (3 H W),   z ~ q(z|x)
SD sums both terms over pixels; dividing both by 3HW keeps SD's ratio (1e-6)
with a per-pixel L1. After training, the per-channel mean and std of the
latents over a sample of the subset give the normalisation `(z - mean) / std`
that diffusion trains on (SD's single constant 0.18215 plays this role for its VAE).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from opencanvas.components.images import holdout_split, load_subset_images, to_pil, to_unit_range
from opencanvas.components.metrics import psnr, ssim
from opencanvas.components.presets import AUTOENCODER_PRESETS, get_preset, preset_dict
from opencanvas.components.records import finished_record, publish, subset_metadata, write_record
from opencanvas.components.reports import image_grid, markdown_table, png_bytes, write_report
from opencanvas.components.training import CHECKPOINT_DIR, budget_met, loss_summary, run_training
from opencanvas.workspace import Workspace

STATS_IMAGES = 512  # images whose latents set the normalisation
GRID_IMAGES = 8


def autoencoder_loss(vae: Any, x: torch.Tensor, kl_weight: float,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """x (B, 3, H, W) in [-1, 1] -> (loss, parts)."""
    posterior = vae.encode(x).latent_dist                      # mean, std: (B, C, H/f, W/f)
    z = posterior.sample(generator=generator)
    reconstruction = vae.decode(z).sample                      # (B, 3, H, W)
    l1 = (reconstruction - x).abs().mean()
    kl = posterior.kl().mean() / x[0].numel()                  # kl(): summed over latent dims, (B,)
    return l1 + kl_weight * kl, {"l1": l1.item(), "kl": kl.item()}


def channel_statistics(latents: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std of latents (N, C, h, w)."""
    per_channel = latents.transpose(0, 1).flatten(1).double()  # (C, N*h*w)
    return per_channel.mean(1).tolist(), per_channel.std(1, unbiased=False).tolist()


@torch.no_grad()
def latent_statistics(vae: Any, pixels: torch.Tensor, seed: int,
                      batch_size: int = 32) -> tuple[list[float], list[float]]:
    """Mean and std per channel of sampled latents z ~ q(z|x) over uint8 `pixels` (N, 3, H, W)."""
    generator = torch.Generator().manual_seed(seed)
    chunks = [vae.encode(to_unit_range(pixels[i:i + batch_size])).latent_dist.sample(generator=generator)
              for i in range(0, len(pixels), batch_size)]
    return channel_statistics(torch.cat(chunks))


@torch.no_grad()
def reconstruction_metrics(vae: Any, pixels: torch.Tensor, downscale: int,
                           batch_size: int = 32) -> tuple[dict[str, float], list[Image.Image], list[Image.Image]]:
    """PSNR/SSIM of decode(mean of q(z|x)) on uint8 `pixels`, and of a bicubic down/up baseline at
    the same downscale (what the latent grid would keep with no learning)."""
    ours_psnr, ours_ssim, base_psnr, recons = [], [], [], []
    for i in range(0, len(pixels), batch_size):
        x = to_unit_range(pixels[i:i + batch_size])
        rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        ref, out = (x + 1) / 2, (rec + 1) / 2                                # [0, 1]
        ours_psnr.append(psnr(out, ref))
        ours_ssim.append(ssim(out, ref))
        h = x.shape[-1] // downscale
        small = torch.nn.functional.interpolate(ref, size=(h, h), mode="bicubic", antialias=True)
        base = torch.nn.functional.interpolate(small, size=ref.shape[-2:], mode="bicubic").clamp(0, 1)
        base_psnr.append(psnr(base, ref))
        recons.extend(to_pil(rec))
    metrics = {"psnr": float(torch.cat(ours_psnr).mean()), "ssim": float(torch.cat(ours_ssim).mean()),
               "bicubic_psnr": float(torch.cat(base_psnr).mean())}
    return metrics, to_pil(to_unit_range(pixels)), recons


def _finished_report(out_dir: Path, identity: dict[str, Any], steps: int | None, minutes: float | None) -> dict | None:
    """The stored report when this exact training already finished within the asked budget."""
    record = finished_record(out_dir)
    if record is None:
        return None
    if record.get("training") != json.loads(json.dumps(identity, default=str)):
        raise ValueError(f"{out_dir} holds an autoencoder trained with other settings: "
                         f"choose another --name, or delete the directory to retrain")
    if not budget_met(record["steps"], record["train_seconds"], steps, minutes):
        return None  # a bigger budget than last time: train on from the checkpoint
    return json.loads((out_dir / "report.json").read_text())


def train_autoencoder(ws: Workspace, subset: str, name: str, preset: str = "tiny", resolution: int | None = None,
                      max_images: int | None = None, *, minutes: float | None = None, steps: int | None = None,
                      batch_size: int | None = None, learning_rate: float | None = None,
                      kl_weight: float | None = None, train_crop: int | None = None,
                      holdout: float = 0.1, seed: int = 0,
                      perceptual_weights: Path | None = None, checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Train (or resume, or return the finished) autoencoder `name`; returns the report."""
    from diffusers import AutoencoderKL

    spec = get_preset(AUTOENCODER_PRESETS, preset, "autoencoder")
    resolution = resolution or spec.resolution
    spec.check_resolution(resolution)
    if perceptual_weights is not None:
        raise NotImplementedError(
            "the LPIPS + patch-discriminator terms are not implemented yet: train without --lpips-weights "
            "(L1 + KL only)")
    out_dir = ws.autoencoder_dir(name)
    identity = {"subset": subset, "preset": preset, "resolution": resolution, "max_images": max_images,
                "batch_size": batch_size or spec.batch_size, "learning_rate": learning_rate or spec.learning_rate,
                "kl_weight": spec.kl_weight if kl_weight is None else kl_weight, "holdout": holdout, "seed": seed,
                "train_crop": min(train_crop or spec.train_crop, resolution), "loss": "l1+kl"}
    if identity["train_crop"] % spec.downscale:
        raise ValueError(f"--train-crop must be a multiple of the downscale {spec.downscale}")
    if (report := _finished_report(out_dir, identity, steps, minutes)) is not None:
        return report

    meta = subset_metadata(ws, subset)
    images = load_subset_images(ws, subset, resolution, max_images)
    train_idx, held_idx = holdout_split(images.keys, holdout)
    train_pixels = images.pixels[train_idx]                                    # uint8 (N, 3, H, W)
    torch.manual_seed(seed)
    vae = AutoencoderKL(**spec.diffusers_config(resolution))
    if spec.initial_logvar is not None:
        with torch.no_grad():  # quant_conv outputs (mean, logvar) per latent channel
            vae.quant_conv.bias[spec.latent_channels:].fill_(spec.initial_logvar)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=identity["learning_rate"], betas=(0.9, 0.99),
                                  weight_decay=0.0)
    bs, crop = identity["batch_size"], identity["train_crop"]

    def step(index: int, generator: torch.Generator) -> float:
        batch = train_pixels[torch.randint(len(train_pixels), (bs,), generator=generator)]
        top, left = torch.randint(resolution - crop + 1, (2,), generator=generator).tolist()
        x = to_unit_range(batch[:, :, top:top + crop, left:left + crop])         # (B, 3, crop, crop)
        flip = torch.rand(bs, generator=generator) < 0.5                        # horizontal-flip augmentation
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss, _ = autoencoder_loss(vae, x, identity["kl_weight"], generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    state = run_training(step, vae, optimizer, out_dir, identity, steps=steps, minutes=minutes, batch_size=bs,
                         seed=seed, learning_rate=identity["learning_rate"], warmup_steps=spec.warmup_steps,
                         checkpoint_seconds=checkpoint_seconds, description=f"autoencoder {name}")

    shift, std = latent_statistics(vae, train_pixels[:STATS_IMAGES], seed)
    scale = [1.0 / max(s, 1e-6) for s in std]
    # diffusers convention, so a pipeline that reads the config normalises the same way:
    # (z - latents_mean) * scaling_factor / latents_std
    vae.register_to_config(latents_mean=shift, latents_std=std, scaling_factor=1.0)
    publish(out_dir, vae.save_pretrained)

    held = images.pixels[held_idx]
    metrics, originals, recons = reconstruction_metrics(vae, held, spec.downscale)
    losses = loss_summary(state.losses)
    report = {
        "name": name, **meta, "preset": preset, "resolution": resolution, "downscale": spec.downscale,
        "latent_channels": spec.latent_channels, "images_train": len(train_idx), "images_heldout": len(held_idx),
        "images_skipped": images.skipped, "steps": state.step, "images_seen": state.images_seen,
        "train_seconds": round(state.seconds, 1), "loss_first": losses["first"], "loss_last": losses["last"],
        "heldout_psnr": metrics["psnr"], "heldout_ssim": metrics["ssim"],
        "heldout_bicubic_psnr": metrics["bicubic_psnr"],
        "perceptual_loss": "off (no LPIPS weights given; not implemented yet)", "discriminator": "off",
    }
    markdown = (
        f"# Autoencoder `{name}`\n\nTrained on subset `{subset}` (policy `{meta['policy']}`, catalog "
        f"`{meta['catalog_hash']}`) with preset `{preset}` at {resolution} px: L1 + KL loss, no perceptual or "
        f"adversarial term.\n\n"
        + markdown_table([("held-out PSNR (dB)", metrics["psnr"]), ("held-out SSIM", metrics["ssim"]),
                          (f"bicubic x{spec.downscale} down/up PSNR (baseline)", metrics["bicubic_psnr"]),
                          ("train / held-out images", f"{len(train_idx)} / {len(held_idx)}"),
                          ("steps", state.step), ("images seen", state.images_seen),
                          ("train seconds", round(state.seconds, 1)),
                          ("loss first / last", f"{losses['first']:.4f} / {losses['last']:.4f}")])
        + "\n\n![originals (top) vs reconstructions (bottom)](reconstructions.png)\n")
    grid = image_grid([originals[:GRID_IMAGES], recons[:GRID_IMAGES]])
    write_report(out_dir, report, markdown, {"reconstructions.png": png_bytes(grid)})
    write_record(out_dir, {
        "component": "autoencoder", "name": name, **meta, "preset": preset_dict(spec), "training": identity,
        "steps": state.step, "images_seen": state.images_seen, "train_seconds": state.seconds,
        "losses": losses, "latent_shift": shift, "latent_scale": scale, "latent_std": std,
        "latent_stats_images": int(min(STATS_IMAGES, len(train_pixels))),
        "heldout_keys": [images.keys[i] for i in held_idx], "report": {k: report[k] for k in
                                                                      ("heldout_psnr", "heldout_ssim")},
        "checkpoint": CHECKPOINT_DIR,
    })
    return report
