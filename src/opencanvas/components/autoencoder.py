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
from opencanvas.components.presets import AUTOENCODER_PRESETS, AutoencoderPreset, get_preset, preset_dict
from opencanvas.components.records import finished_record, publish, subset_metadata, write_record
from opencanvas.components.reports import image_grid, markdown_table, png_bytes, write_report
from opencanvas.components.training import (
    CHECKPOINT_DIR,
    CPU,
    Budget,
    check_same_training,
    finished_images,
    normalized,
    step_seed_generator,
    stored_config,
    train_component,
)
from opencanvas.licenses import refuse_nd_subset
from opencanvas.pixels import to_pil, to_unit_range
from opencanvas.splits import holdout_split
from opencanvas.storage import sha256_file
from opencanvas.training.checkpoint import TrainState
from opencanvas.training.loop import DEFAULT_CHECKPOINT_MINUTES, DEFAULT_KEEP, TrainTask
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
                      max_images: int | None = None, *, images: int | None = None, minutes: float | None = None,
                      steps: int | None = None, batch_size: int | None = None, learning_rate: float | None = None,
                      kl_weight: float | None = None, train_crop: int | None = None,
                      holdout: float = 0.1, seed: int = 0, perceptual_weights: Path | str | None = None,
                      perceptual_weight: float | None = None, disc_weight: float | None = None,
                      disc_start: int | None = None, checkpoint_every: int | None = None,
                      checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES,
                      keep: int = DEFAULT_KEEP) -> dict[str, Any]:
    """Train (or resume, or return the finished) autoencoder `name`; returns the report.

    Budget: `images`, `steps` (of `batch_size` images) and/or `minutes` (converted to images
    once, from a measured warm-up), whichever is least. `perceptual_weights`: an LPIPS-VGG16
    file (components/lpips.py) turning on the LPIPS term (`perceptual_weight`, default 1.0) and
    the PatchGAN (`disc_weight`, default 0.5; 0 turns it off) from step `disc_start` (default:
    the preset's). Checkpoints: every `checkpoint_every` images (default: a twentieth of the run)
    or `checkpoint_minutes`, whichever first; the newest `keep` are kept.
    """
    refuse_nd_subset(ws.subset_path(subset), "autoencoder train")  # ND licenses forbid derivatives
    spec = get_preset(AUTOENCODER_PRESETS, preset, "autoencoder")
    identity = autoencoder_identity(spec, subset, preset, resolution, max_images, batch_size, learning_rate,
                                    kl_weight, train_crop, holdout, seed, perceptual_weights, perceptual_weight,
                                    disc_weight, disc_start)
    budget = Budget(images, steps, minutes)
    out_dir = ws.autoencoder_dir(name)
    record = finished_record(out_dir)
    if record is not None:
        check_same_training(out_dir, "an autoencoder", record.get("training"), normalized(identity))
        if finished_images(record, budget, identity["batch_size"]):
            return json.loads((out_dir / "report.json").read_text())
    check_same_training(out_dir, "an autoencoder", (stored_config(out_dir) or {}).get("training"),
                        normalized(identity))

    meta = subset_metadata(ws, subset)
    loaded = load_subset_images(ws, subset, identity["resolution"], max_images)
    train_idx, held_idx = holdout_split(loaded.keys, holdout)
    task = AutoencoderTask.build(spec, identity, loaded.pixels[train_idx], perceptual_weights)
    trained = train_component(task, out_dir, identity, budget, label=f"autoencoder {name}",
                              batch=identity["batch_size"], lr=identity["learning_rate"],
                              warmup_steps=spec.warmup_steps, checkpoint_every=checkpoint_every,
                              checkpoint_minutes=checkpoint_minutes, keep=keep)
    vae = task.model
    shift, std = latent_statistics(vae, task.train_pixels[:STATS_IMAGES], seed)
    # diffusers convention, so a pipeline that reads the config normalises the same way:
    # (z - latents_mean) * scaling_factor / latents_std
    vae.register_to_config(latents_mean=shift, latents_std=std, scaling_factor=1.0)
    publish(out_dir, vae.save_pretrained)
    metrics, originals, recons = reconstruction_metrics(vae, loaded.pixels[held_idx], spec.downscale)
    perceptual, disc = (task.terms.describe(trained.state.steps) if task.terms is not None else
                        ("off (no --lpips-weights given)", "off (needs --lpips-weights)"))
    report = {
        "name": name, **meta, "preset": preset, "resolution": identity["resolution"], "downscale": spec.downscale,
        "latent_channels": spec.latent_channels, "images_train": len(train_idx), "images_heldout": len(held_idx),
        "images_skipped": loaded.skipped, "steps": trained.state.steps, "images_seen": trained.state.images_seen,
        "train_seconds": round(trained.state.wall_seconds, 1), "loss_first": trained.losses["first"],
        "loss_last": trained.losses["last"], "heldout_psnr": metrics["psnr"], "heldout_ssim": metrics["ssim"],
        "heldout_bicubic_psnr": metrics["bicubic_psnr"], "perceptual_loss": perceptual, "discriminator": disc,
    }
    write_report(out_dir, report, autoencoder_markdown(report, subset, meta["policy"], meta["catalog_hash"]),
                 {"reconstructions.png": png_bytes(image_grid([originals[:GRID_IMAGES], recons[:GRID_IMAGES]]))})
    write_record(out_dir, {
        "component": "autoencoder", "name": name, **meta, "preset": preset_dict(spec), "training": identity,
        "steps": trained.state.steps, "images_seen": trained.state.images_seen,
        "train_seconds": trained.state.wall_seconds, "images": trained.config["images"], "minutes": minutes,
        "measured_images_per_s": trained.config["measured_images_per_s"], "losses": trained.losses,
        "latent_shift": shift,
        "latent_scale": [1.0 / max(s, 1e-6) for s in std], "latent_std": std,
        "latent_stats_images": int(min(STATS_IMAGES, len(task.train_pixels))),
        "heldout_keys": [loaded.keys[i] for i in held_idx], "report": {k: report[k] for k in
                                                                      ("heldout_psnr", "heldout_ssim")},
        "checkpoint": CHECKPOINT_DIR,
    })
    return report


def autoencoder_identity(spec: AutoencoderPreset, subset: str, preset: str, resolution: int | None,
                         max_images: int | None, batch_size: int | None, learning_rate: float | None,
                         kl_weight: float | None, train_crop: int | None, holdout: float, seed: int,
                         perceptual_weights: Path | str | None, perceptual_weight: float | None,
                         disc_weight: float | None, disc_start: int | None) -> dict[str, Any]:
    """The resolved settings that identify a training (a resume must repeat them)."""
    resolution = resolution or spec.resolution
    spec.check_resolution(resolution)
    extra = _perceptual_identity(perceptual_weights, perceptual_weight, disc_weight, disc_start, spec.disc_start)
    identity: dict[str, Any] = {"subset": subset, "preset": preset, "resolution": resolution, "max_images": max_images,
                "batch_size": batch_size or spec.batch_size, "learning_rate": learning_rate or spec.learning_rate,
                "kl_weight": spec.kl_weight if kl_weight is None else kl_weight, "holdout": holdout, "seed": seed,
                "train_crop": min(train_crop or spec.train_crop, resolution), "loss": "l1+kl", **extra}
    if identity["train_crop"] % spec.downscale:
        raise ValueError(f"--train-crop must be a multiple of the downscale {spec.downscale}")
    return identity


class AutoencoderTask(TrainTask):
    """One step: a random crop and flip of a random batch, autoencoder_loss, AdamW (and the discriminator's)."""

    model: Any  # diffusers AutoencoderKL

    def __init__(self, vae: Any, optimizer: torch.optim.Optimizer, terms: PerceptualTerms | None,
                 train_pixels: torch.Tensor, identity: dict[str, Any]) -> None:
        self.env, self.model, self.optimizer, self.ema = CPU, vae, optimizer, None
        self.terms, self.train_pixels, self.identity = terms, train_pixels, identity   # pixels uint8 (N, 3, H, W)
        self.extra = {} if terms is None or terms.disc is None or terms.disc_optimizer is None else {
            "discriminator": (terms.disc, terms.disc_optimizer)}

    @classmethod
    def build(cls, spec: AutoencoderPreset, identity: dict[str, Any], train_pixels: torch.Tensor,
              perceptual_weights: Path | str | None) -> AutoencoderTask:
        """The seeded AutoencoderKL of the preset, its AdamW and the perceptual terms (if any)."""
        from diffusers import AutoencoderKL

        torch.manual_seed(identity["seed"])
        vae = AutoencoderKL(**spec.diffusers_config(identity["resolution"]))
        if spec.initial_logvar is not None:
            with torch.no_grad():  # quant_conv outputs (mean, logvar) per latent channel
                vae.quant_conv.bias[spec.latent_channels:].fill_(spec.initial_logvar)
        optimizer = torch.optim.AdamW(vae.parameters(), lr=identity["learning_rate"], betas=(0.9, 0.99),
                                      weight_decay=0.0)
        terms = None if perceptual_weights is None else perceptual_terms(
            perceptual_weights, identity["perceptual_weight"], identity["disc_weight"], identity["disc_start"],
            identity["learning_rate"])
        return cls(vae, optimizer, terms, train_pixels, identity)

    def gradients(self, state: TrainState) -> dict[str, float]:
        generator = step_seed_generator(self.identity["seed"], state.images_seen)
        bs, crop, resolution = self.identity["batch_size"], self.identity["train_crop"], self.identity["resolution"]
        batch = self.train_pixels[torch.randint(len(self.train_pixels), (bs,), generator=generator)]
        top, left = torch.randint(resolution - crop + 1, (2,), generator=generator).tolist()
        x = to_unit_range(batch[:, :, top:top + crop, left:left + crop])         # (B, 3, crop, crop)
        flip = torch.rand(bs, generator=generator) < 0.5                        # horizontal-flip augmentation
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        # The discriminator's optimizer has no gradients (so does nothing) before disc_start.
        loss, parts = autoencoder_loss(self.model, x, self.identity["kl_weight"], generator, self.terms, state.steps)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0))
        return {**parts, "loss": parts["generator"] if torch.isfinite(loss) else float("nan"),
                "grad_norm": grad_norm}


def autoencoder_markdown(report: dict[str, Any], subset: str, policy: str, catalog_hash: str) -> str:
    r = report
    return (
        f"# Autoencoder `{r['name']}`\n\nTrained on subset `{subset}` (policy `{policy}`, catalog "
        f"`{catalog_hash}`) with preset `{r['preset']}` at {r['resolution']} px: L1 + KL loss; perceptual term: "
        f"{r['perceptual_loss']}; discriminator: {r['discriminator']}.\n\n"
        + markdown_table([("held-out PSNR (dB)", r["heldout_psnr"]), ("held-out SSIM", r["heldout_ssim"]),
                          (f"bicubic x{r['downscale']} down/up PSNR (baseline)", r["heldout_bicubic_psnr"]),
                          ("train / held-out images", f"{r['images_train']} / {r['images_heldout']}"),
                          ("steps", r["steps"]), ("images seen", r["images_seen"]),
                          ("train seconds", r["train_seconds"]),
                          ("loss first / last", f"{r['loss_first']:.4f} / {r['loss_last']:.4f}")])
        + "\n\n![originals (top) vs reconstructions (bottom)](reconstructions.png)\n")
