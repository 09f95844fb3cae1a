"""Loading a model to sample from: a training run, or an exported diffusers folder.

A diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/) is
wrapped into `FolderPipeline`, which shares the base class `opencanvas.train.pipeline.ModelPipeline`
with a run's `InferencePipeline`, so generation and evaluation never care where a model came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from opencanvas.dtypes import parse_dtype
from opencanvas.pixels import to_pil
from opencanvas.train.pipeline import ModelPipeline
from opencanvas.workspace import Workspace

FOLDER_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


def decode_latents(vae: Any, shift: torch.Tensor, scale: torch.Tensor, latents: torch.Tensor) -> list[Image.Image]:
    """Normalised latents (B, C, h, w) -> RGB images; normalised latents are (z - shift) * scale."""
    dtype = next(vae.parameters()).dtype
    z = latents / scale.to(latents) + shift.to(latents)
    return to_pil(vae.decode(z.to(dtype)).sample)                   # (B, 3, H, W) in [-1, 1]


@dataclass
class FolderTextEncoder:
    """CLIP text encoder + tokenizer of a diffusers folder; `.encode` as `LoadedTextEncoder`."""

    tokenizer: Any
    model: Any
    max_length: int

    @torch.no_grad()
    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> hidden (B, L, D), padding mask (B, L)."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True,
                                return_tensors="pt")
        device = next(self.model.parameters()).device
        # As diffusers' SD pipeline: the text model sees the padding mask only if its config asks for it.
        mask = tokens.attention_mask.to(device) if getattr(self.model.config, "use_attention_mask", False) else None
        hidden = self.model(tokens.input_ids.to(device), attention_mask=mask).last_hidden_state.float()
        return hidden, tokens.attention_mask.bool().to(device)


@dataclass
class FolderAutoencoder:
    vae: Any
    shift: torch.Tensor   # (C, 1, 1)
    scale: torch.Tensor   # (C, 1, 1)
    downscale: int


@dataclass
class FolderPipeline(ModelPipeline):
    """A diffusers pipeline folder behind the `ModelPipeline` interface."""

    denoiser: Any
    autoencoder: FolderAutoencoder
    text_encoder: FolderTextEncoder
    config: dict[str, Any]
    weights_hash: str
    name: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, None]:
        """Hidden states (B, L, D); no mask, since diffusers' SD pipelines pass none to the UNet."""
        return self.text_encoder.encode(prompts)[0], None

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        f = self.autoencoder.downscale
        if height % f or width % f:
            raise ValueError(f"size {width}x{height} must be a multiple of {f} (the autoencoder's downscale)")
        return int(self.autoencoder.vae.config.latent_channels), height // f, width // f

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return decode_latents(self.autoencoder.vae, self.autoencoder.shift, self.autoencoder.scale, latents)


def load_folder_pipeline(path: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> FolderPipeline:
    """Load an exported diffusers folder (no network: local files only)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
    from opencanvas.storage import sha256_file

    path = Path(path)
    missing = [p for p in FOLDER_PARTS if not (path / p).is_dir()]
    if missing:
        raise FileNotFoundError(f"{path} is not a diffusers pipeline folder: missing {', '.join(missing)}/ "
                                "(make one with `opencanvas export`)")
    if (path / "text_encoder_2").is_dir():  # the UNet reads both encoders' states and pooled embeddings
        raise ValueError(f"{path} holds a model on two text encoders (text_encoder_2/), which this folder loader "
                         "does not combine: sample the run itself with --run RUN")
    sched = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    schedule = NoiseSchedule(num_train_timesteps=sched.get("num_train_timesteps", 1000),
                             beta_start=sched.get("beta_start", 0.00085), beta_end=sched.get("beta_end", 0.012),
                             beta_schedule=sched.get("beta_schedule", "scaled_linear"),
                             zero_terminal_snr=bool(sched.get("rescale_betas_zero_snr", False)))
    unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=dtype, local_files_only=True)
    vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=dtype, local_files_only=True)
    text_model = CLIPTextModel.from_pretrained(path / "text_encoder", torch_dtype=dtype, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer", local_files_only=True)
    denoiser = Denoiser(unet.eval(), schedule, sched.get("prediction_type", "epsilon")).to(device)
    vae = vae.eval().to(device)
    text_model = text_model.eval().to(device)
    channels = vae.config.latent_channels
    scale = torch.full((channels, 1, 1), float(vae.config.scaling_factor or 1.0))
    shift = torch.full((channels, 1, 1), float(getattr(vae.config, "shift_factor", None) or 0.0))
    max_length = min(int(tokenizer.model_max_length), int(text_model.config.max_position_embeddings))
    weights = sorted((path / "unet").glob("*.safetensors"))
    provenance = json.loads((path / "opencanvas.json").read_text()) if (path / "opencanvas.json").exists() else {}
    return FolderPipeline(
        denoiser=denoiser,
        autoencoder=FolderAutoencoder(vae, shift, scale, 2 ** (len(vae.config.block_out_channels) - 1)),
        text_encoder=FolderTextEncoder(tokenizer, text_model, max_length),
        # `opencanvas export` writes opencanvas.json: run, weights_sha256 and the run's resolved config.
        config={"resolution": int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1),
                **provenance.get("config", {})},
        weights_hash=provenance.get("weights_sha256") or (sha256_file(weights[0]) if weights else "unknown"),
        name=str(provenance.get("run", path.name)),
        provenance=provenance,
    )


def load_model(ws: Workspace, run: str | None, pipeline_dir: Path | None, ema: bool = True,
               device: str = "cpu", dtype: str = "float32") -> ModelPipeline:
    """`--run NAME` (via opencanvas.train.load_pipeline) or `--pipeline DIR`; exactly one.

    dtype: any name `opencanvas.dtypes.parse_dtype` takes (bf16, bfloat16, fp16, ..., auto).
    """
    if (run is None) == (pipeline_dir is None):
        raise ValueError("give exactly one of --run NAME or --pipeline DIR")
    torch_dtype = parse_dtype(dtype, device)
    if pipeline_dir is not None:
        return load_folder_pipeline(pipeline_dir, device=device, dtype=torch_dtype)
    assert run is not None  # exactly one of the two was given
    from opencanvas.train.pipeline import load_pipeline

    if not ws.run_dir(run).is_dir():
        raise FileNotFoundError(f"no run {run!r} under {ws.run_dir(run).parent}; train one with `opencanvas train`")
    return load_pipeline(ws, run, ema=ema, device=device, dtype=torch_dtype)


def model_name(pipeline: object, run: str | None) -> str:
    return run or getattr(pipeline, "name", None) or "unknown"


def training_provenance(pipeline: object) -> dict[str, str]:
    """License policy and catalog hash of the training data, from the run config."""
    data = (getattr(pipeline, "config", {}) or {}).get("data", {})
    return {"license_policy": str(data.get("policy") or "unknown"),
            "catalog_hash": str(data.get("catalog_hash") or "unknown")}
