"""Train a diffusers AutoencoderKL on a subset's images (`opencanvas autoencoder train`).

Loss (Rombach et al. 2022, sec. 3 and appendix G):
    L = mean |x - D(z)| + kl_weight * KL(q(z|x) || N(0, I)) / (3 H W),   z ~ q(z|x)
SD sums both terms over pixels; dividing both by 3HW keeps SD's ratio (1e-6)
with a per-pixel L1. With `--lpips-weights` (ImageNet-trained, so only when the
user supplies them) two terms join, as in SD's LPIPSWithDiscriminator (taming,
Esser et al. 2021): perceptual_weight * LPIPS(x, D(z)) in the reconstruction
term L_rec, and from step disc_start an adaptively weighted PatchGAN term
-lambda * mean Disc(D(z)), the discriminator trained with the hinge loss
(components/lpips.py, components/discriminator.py). SD also learns a scalar
log-variance dividing L_rec; it is left out here (fixed at 0). After training, the per-channel mean and std of the
latents over a sample of the subset give the normalisation `(z - mean) / std`
that diffusion trains on (SD's single constant 0.18215 plays this role for its VAE).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from opencanvas.components.discriminator import PatchDiscriminator, adaptive_weight, hinge_d_loss
from opencanvas.components.images import load_subset_images
from opencanvas.components.lpips import LPIPS, load_lpips
from opencanvas.components.metrics import psnr, ssim
from opencanvas.components.presets import AUTOENCODER_PRESETS, get_preset, preset_dict
from opencanvas.components.records import finished_record, publish, subset_metadata, write_record
from opencanvas.components.reports import image_grid, markdown_table, png_bytes, write_report
from opencanvas.components.training import CHECKPOINT_DIR, budget_met, loss_summary, run_training
from opencanvas.licenses import refuse_nd_subset
from opencanvas.pixels import to_pil, to_unit_range
from opencanvas.splits import holdout_split
from opencanvas.storage import sha256_file
from opencanvas.workspace import Workspace

STATS_IMAGES = 512  # images whose latents set the normalisation
GRID_IMAGES = 8


@dataclass
class PerceptualTerms:
    """The LPIPS and PatchGAN terms (on only with user-supplied LPIPS weights)."""
    lpips: LPIPS                                 # frozen
    perceptual_weight: float
    disc: PatchDiscriminator | None              # None when disc_weight is 0
    disc_optimizer: torch.optim.Optimizer | None
    disc_weight: float
    disc_start: int
    source: str                                  # the weights file, for the report

    def describe(self, steps_done: int) -> tuple[str, str]:
        """The report's `perceptual_loss` and `discriminator` fields."""
        perceptual = f"lpips-vgg16 from {self.source}, weight {self.perceptual_weight:g}"
        if self.disc is None:
            return perceptual, "off (--disc-weight 0)"
        disc = (f"patchgan {self.disc.n_layers} layers, hinge, from step {self.disc_start}, weight "
                f"{self.disc_weight:g} (adaptive)")
        return perceptual, disc + ("" if steps_done > self.disc_start else
                                   f"; not reached: trained {steps_done} steps")


def autoencoder_loss(vae: Any, x: torch.Tensor, kl_weight: float, generator: torch.Generator | None = None,
                     terms: PerceptualTerms | None = None, step: int = 0) -> tuple[torch.Tensor, dict[str, float]]:
    """x (B, 3, H, W) in [-1, 1] -> (loss, parts). With `terms` past disc_start, `loss` also holds the
    discriminator's hinge loss: it reaches only the discriminator (it sees D(z) detached) while the
    generator term is taken with the discriminator frozen, so one backward serves both optimizers;
    parts["generator"] is the autoencoder's own loss."""
    posterior = vae.encode(x).latent_dist                      # mean, std: (B, C, H/f, W/f)
    z = posterior.sample(generator=generator)
    reconstruction = vae.decode(z).sample                      # (B, 3, H, W)
    rec = l1 = (reconstruction - x).abs().mean()
    kl = posterior.kl().mean() / x[0].numel()                  # kl(): summed over latent dims, (B,)
    parts = {"l1": l1.item(), "kl": kl.item()}
    if terms is not None:
        perceptual = terms.lpips(x, reconstruction).mean()
        rec = l1 + terms.perceptual_weight * perceptual
        parts["lpips"] = perceptual.item()
    loss = rec + kl_weight * kl
    if terms is not None and terms.disc is not None and step >= terms.disc_start:
        terms.disc.requires_grad_(False)
        g_loss = -terms.disc(reconstruction).mean()
        terms.disc.requires_grad_(True)
        weight = adaptive_weight(rec, g_loss, vae.decoder.conv_out.weight, terms.disc_weight)
        loss = loss + weight * g_loss
        d_loss = hinge_d_loss(terms.disc(x), terms.disc(reconstruction.detach()))
        parts.update(g=g_loss.item(), disc_lambda=weight.item(), discriminator=d_loss.item())
        parts["generator"] = loss.item()
        return loss + d_loss, parts
    parts["generator"] = loss.item()
    return loss, parts


def perceptual_terms(path: Path | str, perceptual_weight: float, disc_weight: float, disc_start: int,
                     learning_rate: float) -> PerceptualTerms:
    """LPIPS from the user's file and a fresh discriminator (seeded by the caller) with its AdamW
    (betas 0.5, 0.9 as in taming)."""
    disc = PatchDiscriminator() if disc_weight > 0 else None
    optimizer = (torch.optim.AdamW(disc.parameters(), lr=learning_rate, betas=(0.5, 0.9), weight_decay=0.0)
                 if disc is not None else None)
    return PerceptualTerms(load_lpips(path), perceptual_weight, disc, optimizer, disc_weight, disc_start,
                           str(path))


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


def _perceptual_identity(path: Path | str | None, perceptual_weight: float | None, disc_weight: float | None,
                         disc_start: int | None, preset_disc_start: int) -> dict[str, Any]:
    """The perceptual/adversarial settings that identify a run ({} when off: older runs keep their identity)."""
    if path is None:
        if (perceptual_weight, disc_weight, disc_start) != (None, None, None):
            raise ValueError("--perceptual-weight, --disc-weight and --disc-start need --lpips-weights PATH")
        return {}
    if not Path(path).is_file():
        raise FileNotFoundError(f"LPIPS weights file {path} not found: give an existing file (see "
                                f"opencanvas/components/lpips.py for how to build one), or train without "
                                f"--lpips-weights (L1 + KL only)")
    settings = {"perceptual_weight": 1.0 if perceptual_weight is None else perceptual_weight,
                "disc_weight": 0.5 if disc_weight is None else disc_weight,
                "disc_start": preset_disc_start if disc_start is None else disc_start}
    if min(settings.values()) < 0:
        raise ValueError("--perceptual-weight, --disc-weight and --disc-start must be >= 0")
    loss = "l1+kl+lpips" + ("+patchgan" if settings["disc_weight"] > 0 else "")
    return {"loss": loss, **settings, "lpips_sha256": sha256_file(Path(path))}


def train_autoencoder(ws: Workspace, subset: str, name: str, preset: str = "tiny", resolution: int | None = None,
                      max_images: int | None = None, *, minutes: float | None = None, steps: int | None = None,
                      batch_size: int | None = None, learning_rate: float | None = None,
                      kl_weight: float | None = None, train_crop: int | None = None,
                      holdout: float = 0.1, seed: int = 0, perceptual_weights: Path | str | None = None,
                      perceptual_weight: float | None = None, disc_weight: float | None = None,
                      disc_start: int | None = None, checkpoint_seconds: float = 60.0) -> dict[str, Any]:
    """Train (or resume, or return the finished) autoencoder `name`; returns the report.
    `perceptual_weights`: an LPIPS-VGG16 file (components/lpips.py) turning on the LPIPS term
    (`perceptual_weight`, default 1.0) and the PatchGAN (`disc_weight`, default 0.5; 0 turns it off)
    from step `disc_start` (default: the preset's)."""
    from diffusers import AutoencoderKL

    refuse_nd_subset(ws.subset_path(subset), "autoencoder train")  # ND licenses forbid derivatives: no training on them
    spec = get_preset(AUTOENCODER_PRESETS, preset, "autoencoder")
    resolution = resolution or spec.resolution
    spec.check_resolution(resolution)
    extra = _perceptual_identity(perceptual_weights, perceptual_weight, disc_weight, disc_start, spec.disc_start)
    out_dir = ws.autoencoder_dir(name)
    identity = {"subset": subset, "preset": preset, "resolution": resolution, "max_images": max_images,
                "batch_size": batch_size or spec.batch_size, "learning_rate": learning_rate or spec.learning_rate,
                "kl_weight": spec.kl_weight if kl_weight is None else kl_weight, "holdout": holdout, "seed": seed,
                "train_crop": min(train_crop or spec.train_crop, resolution), "loss": "l1+kl", **extra}
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
    terms = None if perceptual_weights is None else perceptual_terms(
        perceptual_weights, extra["perceptual_weight"], extra["disc_weight"], extra["disc_start"],
        identity["learning_rate"])
    optimizers = [optimizer] + ([terms.disc_optimizer] if terms is not None and terms.disc_optimizer else [])
    bs, crop = identity["batch_size"], identity["train_crop"]

    def step(index: int, generator: torch.Generator) -> float:
        batch = train_pixels[torch.randint(len(train_pixels), (bs,), generator=generator)]
        top, left = torch.randint(resolution - crop + 1, (2,), generator=generator).tolist()
        x = to_unit_range(batch[:, :, top:top + crop, left:left + crop])         # (B, 3, crop, crop)
        flip = torch.rand(bs, generator=generator) < 0.5                        # horizontal-flip augmentation
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss, parts = autoencoder_loss(vae, x, identity["kl_weight"], generator, terms, index)
        for opt in optimizers:  # the discriminator's has no gradients (so does nothing) before disc_start
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        for opt in optimizers:
            opt.step()
        return parts["generator"]

    checkpointed = {} if terms is None or terms.disc is None else {
        "discriminator": terms.disc, "discriminator_optimizer": terms.disc_optimizer}

    state = run_training(step, vae, optimizer, out_dir, identity, steps=steps, minutes=minutes, batch_size=bs,
                         seed=seed, learning_rate=identity["learning_rate"], warmup_steps=spec.warmup_steps,
                         checkpoint_seconds=checkpoint_seconds, description=f"autoencoder {name}",
                         extra=checkpointed)

    shift, std = latent_statistics(vae, train_pixels[:STATS_IMAGES], seed)
    scale = [1.0 / max(s, 1e-6) for s in std]
    # diffusers convention, so a pipeline that reads the config normalises the same way:
    # (z - latents_mean) * scaling_factor / latents_std
    vae.register_to_config(latents_mean=shift, latents_std=std, scaling_factor=1.0)
    publish(out_dir, vae.save_pretrained)

    held = images.pixels[held_idx]
    metrics, originals, recons = reconstruction_metrics(vae, held, spec.downscale)
    losses = loss_summary(state.losses)
    perceptual, disc = (terms.describe(state.step) if terms is not None else
                        ("off (no --lpips-weights given)", "off (needs --lpips-weights)"))
    report = {
        "name": name, **meta, "preset": preset, "resolution": resolution, "downscale": spec.downscale,
        "latent_channels": spec.latent_channels, "images_train": len(train_idx), "images_heldout": len(held_idx),
        "images_skipped": images.skipped, "steps": state.step, "images_seen": state.images_seen,
        "train_seconds": round(state.seconds, 1), "loss_first": losses["first"], "loss_last": losses["last"],
        "heldout_psnr": metrics["psnr"], "heldout_ssim": metrics["ssim"],
        "heldout_bicubic_psnr": metrics["bicubic_psnr"],
        "perceptual_loss": perceptual, "discriminator": disc,
    }
    markdown = (
        f"# Autoencoder `{name}`\n\nTrained on subset `{subset}` (policy `{meta['policy']}`, catalog "
        f"`{meta['catalog_hash']}`) with preset `{preset}` at {resolution} px: L1 + KL loss; perceptual term: "
        f"{perceptual}; discriminator: {disc}.\n\n"
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
