"""Export a run as a diffusers StableDiffusionPipeline folder, with a model card.

diffusers' SD pipeline multiplies encoded latents by one scalar `scaling_factor`
and divides by it before decoding; OpenCanvas normalises per channel,
(z - shift) * scale. When shift is ~0 and scale equal on every channel (the SD
VAE) the scalar is exact and the VAE is exported unchanged. Otherwise the
per-channel affine map is folded into the VAE's 1x1 quant_conv/post_quant_conv,
so the exported VAE encodes to, and decodes from, normalised latents with
scaling_factor 1 (the README says so).

The text encoder is exported to give what training saw: SD2's "penultimate
layer" choice becomes a tower with its last block removed (as SD2's own
text_encoder folder is), and it is called with the attention mask, as encode did.

The folder carries the run's cards (`cards/`, copied when `opencanvas card`
has written them) and is recorded in runs/<run>/exports.json, so a later
`opencanvas card` updates the copy. The README states the model's license
(`license:`) and obligations from `opencanvas.model_license`, the same
wording as MODEL_CARD.md.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from opencanvas.model_license import ModelLicense, model_license, obligations
from opencanvas.storage import atomic_write_json, atomic_write_text
from opencanvas.train.checkpoint import load_checkpoint, tensors_hash
from opencanvas.train.config import caption_mix_text
from opencanvas.train.encoders import export_note, refuse_image_export, text_encoder_specs
from opencanvas.train.pipeline import InferencePipeline, load_pipeline
from opencanvas.workspace import Workspace

if TYPE_CHECKING:
    from opencanvas.components.loading import LoadedTextEncoder

EXPORTS_FILE = "exports.json"   # runs/<run>/exports.json: folders export wrote, for `card` to update
CARDS_DIR = "cards"


def uniform_scale(shift: list[float], scale: list[float], tol: float = 1e-6) -> float | None:
    """The scalar scaling_factor when shift ~ 0 and scale is one value on every channel, else None."""
    if any(abs(s) > tol for s in shift) or max(scale) - min(scale) > tol * max(abs(s) for s in scale):
        return None
    return float(scale[0])


@torch.no_grad()
def fold_normalization(vae: Any, shift: list[float], scale: list[float]) -> None:
    """Make `vae` encode to (z - shift) * scale and decode from it, with scaling_factor 1 (in place)."""
    if getattr(vae, "quant_conv", None) is None or getattr(vae, "post_quant_conv", None) is None:
        raise ValueError("this autoencoder has no quant_conv/post_quant_conv to fold a per-channel latent "
                         "normalisation into; export needs shift 0 and one scale for all channels")
    c = len(shift)
    shift_t = torch.tensor(shift, dtype=torch.float32)
    scale_t = torch.tensor(scale, dtype=torch.float32)
    if (scale_t <= 0).any():
        raise ValueError(f"latent scales must be positive to fold them into the VAE, got {scale}")
    q = vae.quant_conv  # h -> (mean, logvar), (2C, C_h, 1, 1)
    q.weight[:c] *= scale_t.view(-1, 1, 1, 1).to(q.weight)
    q.bias[:c] = ((q.bias[:c].float() - shift_t) * scale_t).to(q.bias)
    q.bias[c:] += (2 * scale_t.log()).to(q.bias)  # var' = var * scale^2
    p = vae.post_quant_conv  # z -> decoder input, (C_out, C, 1, 1); z = u / scale + shift
    w = p.weight.float()
    p.bias.copy_((p.bias.float() + w[:, :, 0, 0] @ shift_t).to(p.bias))
    p.weight.copy_((w / scale_t.view(1, -1, 1, 1)).to(p.weight))
    vae.register_to_config(scaling_factor=1.0, shift_factor=None)


def scheduler_for(config: dict[str, Any]) -> Any:
    """DPM-Solver++(2M), the `opencanvas sample` default sampler, with the run's schedule and prediction type."""
    from diffusers import DPMSolverMultistepScheduler

    from opencanvas.diffusion.denoiser import NoiseSchedule

    ns = NoiseSchedule(zero_terminal_snr=bool(config.get("zero_terminal_snr", False)))
    return DPMSolverMultistepScheduler(
        num_train_timesteps=ns.num_train_timesteps, beta_start=ns.beta_start, beta_end=ns.beta_end,
        beta_schedule=ns.beta_schedule, prediction_type=config.get("prediction_type", "epsilon"),
        rescale_betas_zero_snr=ns.zero_terminal_snr, solver_order=2, algorithm_type="dpmsolver++",
        lower_order_final=True, final_sigmas_type="zero", use_karras_sigmas=False, steps_offset=1,
        timestep_spacing="trailing" if ns.zero_terminal_snr else "leading")


def ship_distilled_pipeline(folder: Path) -> None:
    """A guidance-distilled student: its own pipeline class (one UNet call per step, w as an input) in the folder,
    named in model_index.json so that DiffusionPipeline.from_pretrained loads it."""
    from opencanvas.diffusion import distilled_pipeline

    shutil.copyfile(distilled_pipeline.__file__, folder / "pipeline_distilled.py")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = ["pipeline_distilled", "DistilledGuidancePipeline"]
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    # Deterministic DDIM on trailing timesteps to x0 at the end: the grid the student was distilled on.
    # steps_offset only shifts "leading" timesteps; 1 keeps StableDiffusionPipeline from warning that it is outdated.
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
            "rescale_betas_zero_snr")
    ddim = {"_class_name": "DDIMScheduler", **{k: scheduler[k] for k in keep if k in scheduler},
            "timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False, "steps_offset": 1}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(ddim, indent=2, sort_keys=True) + "\n")


def _text_encoder(pipe: InferencePipeline, loaded: LoadedTextEncoder | None = None) -> tuple[Any, Any]:
    loaded = loaded or pipe.text_encoder
    te: Any = copy.deepcopy(loaded.model)  # a transformers CLIPTextModel
    if loaded.layer == "penultimate":
        inner = getattr(te, "text_model", te)  # transformers 5 flattened CLIPTextModel (no .text_model)
        inner.encoder.layers = inner.encoder.layers[:-1]
        te.config.num_hidden_layers -= 1
    te.config.use_attention_mask = True  # the SD pipeline then passes the tokenizer's mask, as encode did
    tokenizer = copy.deepcopy(loaded.tokenizer)
    tokenizer.model_max_length = loaded.max_length
    return te, tokenizer


def refuse_without_diffusers_equivalent(run: str, config: dict[str, Any]) -> None:
    """A one-line error for a conditioning mode that no diffusers UNet2DConditionModel reproduces."""
    refuse_image_export(run, config)
    if config.get("conditioning") == "multi-caption":
        raise ValueError(f"run {run!r} uses --conditioning multi-caption, which has no diffusers equivalent (no "
                         f"per-slot caption embeddings in UNet2DConditionModel): nothing exported; sample it with "
                         f"`opencanvas sample --run {run}`")


def export_notes(config: dict[str, Any]) -> list[str]:
    """One line per thing a user of the exported folder must know that the stock pipeline does not do."""
    note = export_note(config)
    if note:
        return [note]
    names = config.get("class_names")
    if names is None:
        return []
    return [f"the UNet is class-conditioned (num_class_embeds {len(names) + 1}: class_names of opencanvas.json's "
            f"config, {len(names)} = no class); diffusers' stock StableDiffusionPipeline does not pass class_labels"]


def export(ws: Workspace, run: str, out: Path, ema: bool = True, checkpoint: str | int | None = None) -> Path:
    """Write runs/<run>'s newest (or chosen) checkpoint as a diffusers pipeline folder at `out`."""
    from diffusers import StableDiffusionPipeline

    out = Path(out)
    stored = ws.run_dir(run) / "config.json"
    if stored.exists():
        refuse_without_diffusers_equivalent(run, json.loads(stored.read_text()))
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty: pass a new --out directory")
    pipe = load_pipeline(ws, run, ema=ema, device="cpu", checkpoint=checkpoint)
    refuse_without_diffusers_equivalent(run, pipe.config)  # the checkpoint's own config decides
    vae = copy.deepcopy(pipe.autoencoder.vae)
    shift, scale = pipe.autoencoder.shift, pipe.autoencoder.scale
    factor = uniform_scale(shift, scale)
    if factor is not None:
        vae.register_to_config(scaling_factor=factor)
        normalization = f"scaling_factor {factor:g} (shift 0): the autoencoder's weights are unchanged."
    else:
        fold_normalization(vae, shift, scale)
        normalization = ("per-channel (z - shift) * scale, folded into the VAE's quant_conv/post_quant_conv "
                         f"(scaling_factor 1). shift={[round(v, 5) for v in shift]}, "
                         f"scale={[round(v, 5) for v in scale]}.")
    unet: Any = pipe.denoiser.unet  # a diffusers UNet2DConditionModel
    unet.set_default_attn_processor()
    text_encoder, tokenizer = _text_encoder(pipe)
    sd = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                 scheduler=scheduler_for(pipe.config), safety_checker=None,
                                 feature_extractor=None, requires_safety_checker=False)
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    sd.save_pretrained(tmp, safe_serialization=True)
    if pipe.text_encoder_2 is not None:  # beside the stock pipeline's folders (see encoders.export_note)
        text_encoder_2, tokenizer_2 = _text_encoder(pipe, pipe.text_encoder_2)
        text_encoder_2.save_pretrained(tmp / "text_encoder_2", safe_serialization=True)
        tokenizer_2.save_pretrained(tmp / "tokenizer_2")
    if pipe.config.get("distilled"):
        ship_distilled_pipeline(tmp)
    hashes = published_hashes(pipe)
    lic = model_license(*training_licenses(ws, pipe.config["data"]))
    cards = ws.run_dir(run) / CARDS_DIR
    has_cards = cards.is_dir() and any(cards.glob("*.md"))
    if has_cards:
        shutil.copytree(cards, tmp / CARDS_DIR, ignore=shutil.ignore_patterns(".*"))
    atomic_write_text(tmp / "README.md", model_card(ws, run, pipe, normalization, hashes, lic, has_cards))
    (tmp / "opencanvas.json").write_text(json.dumps(
        {"run": run, "checkpoint": pipe.checkpoint.name, "ema": ema, "weights_sha256": pipe.weights_hash,
         "weights_sha256_raw": hashes.get("raw"), "license": lic.license_id, "config": pipe.config},
        indent=2, sort_keys=True) + "\n")
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    record_export(ws, run, out)
    return out


def published_hashes(pipe: InferencePipeline) -> dict[str, str]:
    """sha256 of the exported weights and, when the EMA is exported, of the raw weights too."""
    if not pipe.ema:
        return {"raw": pipe.weights_hash}
    raw = load_checkpoint(pipe.checkpoint, parts=("model",)).model
    return {"ema": pipe.weights_hash, **({"raw": tensors_hash(raw)} if raw else {})}


def training_licenses(ws: Workspace, data: dict[str, Any]) -> tuple[list[str], str]:
    """(license ids in the run's training subset, policy): what the model's license is derived from."""
    import duckdb

    from opencanvas.licenses import POLICIES

    policy = str(data.get("policy") or "unknown")
    path = ws.subset_path(str(data.get("subset"))) if data.get("subset") else None
    if path is None or not path.exists():   # the subset is gone: assume every license the policy admits
        return sorted(POLICIES.get(policy, ())), policy
    con = duckdb.connect()
    try:
        rows = con.execute("SELECT DISTINCT license_id FROM read_parquet(?)", [str(path)]).fetchall()
    finally:
        con.close()
    return sorted(r[0] for r in rows if r[0]), policy


def record_export(ws: Workspace, run: str, out: Path) -> None:
    """Add `out` to runs/<run>/exports.json (relative to the workspace when inside it)."""
    record_path = ws.run_dir(run) / EXPORTS_FILE
    record = json.loads(record_path.read_text()) if record_path.exists() else {"exports": []}
    resolved = out.resolve()
    path = ws.relative(resolved) if resolved.is_relative_to(ws.root) else str(resolved)
    record["exports"] = [e for e in record["exports"] if e["path"] != path] + [{"path": path}]
    atomic_write_json(record_path, record)


def model_card(ws: Workspace, run: str, pipe: InferencePipeline, normalization: str, hashes: dict[str, str],
               lic: ModelLicense, has_cards: bool) -> str:
    cfg, data = pipe.config, pipe.config["data"]
    summary_path = ws.run_dir(run) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    params = sum(p.numel() for p in pipe.denoiser.unet.parameters())
    licenses, policy = training_licenses(ws, data)
    duties = "\n".join(f"  - {o}" for o in obligations(licenses, policy))
    mix = f" (drawn {caption_mix_text(cfg['caption_mix'])})" if cfg.get("caption_mix") else ""
    cards = ("`cards/` holds the data card, model card and attribution list (`ATTRIBUTION.md`, "
             f"`attribution.csv`); `opencanvas card --run {run}` updates them here." if has_cards else
             f"Run `opencanvas card --run {run}` to write the data card, model card and attribution list "
             "(`ATTRIBUTION.md`, `attribution.csv`); it copies them into `cards/` here.")
    published = "EMA" if pipe.ema else "raw"
    note = export_note(cfg)
    second = f"\n- Second text encoder `{text_encoder_specs(data)[1]}` in `text_encoder_2/`: {note}." if note else ""
    hash_lines = f"  - published ({published}) weights sha256 `{pipe.weights_hash}`"
    if pipe.ema and hashes.get("raw"):
        hash_lines += f"\n  - raw weights sha256 `{hashes['raw']}`"
    return f"""---
license: {lic.license_id}
library_name: diffusers
pipeline_tag: text-to-image
tags: [opencanvas, commoncanvas, stable-diffusion, openly-licensed-data]
---

# OpenCanvas run `{run}`

A text-to-image latent diffusion model trained with OpenCanvas (a reproduction of
CommonCanvas, arXiv 2310.16825) only on openly licensed images, with provenance
recorded for every training image.

## License
Released under {lic.name} ({lic.url}), {lic.reason}

## Model
- UNet: diffusers UNet2DConditionModel, preset `{cfg['preset']}`, {params / 1e6:.1f}M parameters,
  {published} weights of checkpoint `{pipe.checkpoint.name}`:
{hash_lines}
- Prediction type: `{cfg['prediction_type']}`; noise schedule: scaled-linear DDPM, 1000 steps,
  zero-terminal-SNR {'on' if cfg.get('zero_terminal_snr') else 'off'}.
- Autoencoder: `{data.get('autoencoder')}`; latent normalisation: {normalization}
- Text encoder: `{data.get('text_encoder')}` ({data.get('text_layer')} layer, {data.get('text_len')} tokens).{second}

## Training data
- Subset `{data.get('subset')}` under license policy `{policy}`, catalog snapshot `{data.get('catalog_hash')}`.
- Captions from: {', '.join(data.get('captioners') or [])}{mix}.
- Obligations that follow from the training data:
{duties}
- {cards}

## Training
- Images seen: {summary.get('images_seen', 'n/a')}; global batch {cfg['batch']}; lr {cfg['lr']} ({cfg['lr_schedule']},
  warmup {cfg['warmup_images']} images); caption dropout {cfg['caption_dropout']}; min-SNR gamma
  {cfg['min_snr_gamma']}; resolutions {cfg['resolutions']}.
- Device: {summary.get('device', 'n/a')} x {summary.get('world_size', 1)}.
- Recipe: {json.dumps(summary.get('recipe', {}))}.

## Use
```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("PATH")
image = pipe("a red circle", num_inference_steps=30, guidance_scale=5.0).images[0]
```
Safety checker: none is included.
"""
