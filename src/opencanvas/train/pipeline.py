"""A trained run as an inference pipeline: denoiser + autoencoder + text encoder.

This is what sampling, evaluation and export consume. The UNet is rebuilt from
the config stored in the checkpoint and loaded with the EMA (default) or raw
weights; the autoencoder and text encoder are loaded from the specs the latent
set was encoded with, so prompts are embedded exactly as in training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from opencanvas.diffusion.conditioning import NO_IMAGE_CONDITIONING, Conditioning
from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.train.checkpoint import (
    CHECKPOINT_RE,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    tensors_hash,
)
from opencanvas.workspace import Workspace

if TYPE_CHECKING:
    from PIL import Image

    from opencanvas.components.loading import LoadedAutoencoder, LoadedTextEncoder


class ModelPipeline(ABC):
    """What sampling and evaluation use of a model, wherever it came from.

    Two kinds: a training run's checkpoint (`InferencePipeline`, here) and an exported
    diffusers folder (`opencanvas.sample.loading.FolderPipeline`). `opencanvas.sample.loading.load_model`
    returns one or the other as this type.
    """

    denoiser: Denoiser  # x0-prediction in sigma space (opencanvas.diffusion)
    config: dict[str, Any]  # the run's resolved TrainConfig, or what an export recorded of it
    weights_hash: str  # sha256 identifying the UNet weights sampled from

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states (B, L, D) float32 on the model's device, and the text mask the UNet expects (or None)."""

    def conditioning(self, prompts: list[str], class_name: str | None = None, *,
                     image: torch.Tensor | None = None) -> Conditioning:
        """The UNet's conditioning for one prompt per image (B rows), on the model's device.

        class_name: the class of a class-conditioned run (None: the null class). A multi-caption
        run's prompt may hold one caption per slot, joined by SLOT_SEPARATOR (see `prompt_conditioning`).
        image: (1, E) or (B, E) image embedding (`image_embedding`) of a text+image run; None: the null image.
        """
        cond = prompt_conditioning(self.encode_prompts, self.config, prompts, class_name)
        return self.with_extras(prompts, cond, image)

    def with_extras(self, prompts: list[str], cond: Conditioning, image: torch.Tensor | None) -> Conditioning:
        """A second text encoder's and an image's fields (InferencePipeline); nothing for other models."""
        if image is not None:
            raise ValueError(NO_IMAGE_CONDITIONING)
        return cond

    def image_embedding(self, path: Path) -> torch.Tensor:
        """(1, E) the reference image's embedding, for a run trained with image conditioning."""
        raise ValueError(NO_IMAGE_CONDITIONING)

    @abstractmethod
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents for an image of height x width pixels."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Normalised latents (B, C, h, w) -> PIL images."""


SLOT_SEPARATOR = " || "  # between the captions of one multi-caption prompt ("A || B"), as in PNG metadata

PromptEncoder = Callable[[list[str]], tuple[torch.Tensor, "torch.Tensor | None"]]


def caption_slot_count(config: dict[str, Any]) -> int:
    """Caption slots of a multi-caption run's UNet (0 for one caption)."""
    from opencanvas.diffusion.conditioning import ADAPTER_KEY

    return int(config["unet"][ADAPTER_KEY]["slots"]) if config.get("conditioning") == "multi-caption" else 0


def split_slots(prompt: str, slots: int) -> list[str]:
    """The S slot captions of a multi-caption prompt.

    One caption fills every slot (each image trains with all its captioners' captions, so that is
    the input the model knows best); "A || B" fills slots 0 and 1 and leaves the rest empty (the
    empty prompt, which per-caption dropout trains on).
    """
    parts = [p.strip() for p in prompt.split(SLOT_SEPARATOR.strip())] if SLOT_SEPARATOR.strip() in prompt \
        else [prompt]
    if len(parts) > slots:
        raise ValueError(f"{len(parts)} captions for a run with {slots} caption slots: give at most {slots} "
                         "--prompt values")
    return parts * slots if len(parts) == 1 else parts + [""] * (slots - len(parts))


def check_image_input(config: dict[str, Any]) -> None:
    """A one-line error, before any work, for a reference image (`sample --image`) on a run trained without
    image conditioning: one whose `conditioning` mode does not name an image (e.g. text+image)."""
    from opencanvas.diffusion.conditioning import NO_IMAGE_CONDITIONING

    if "image" not in str(config.get("conditioning") or "text"):
        raise ValueError(NO_IMAGE_CONDITIONING)


def prompt_conditioning(encode: PromptEncoder, config: dict[str, Any], prompts: list[str],
                        class_name: str | None = None) -> Conditioning:
    """A run's conditioning for `prompts` (B rows): text (multi-caption: S slots along the sequence),
    mask and, for a class-conditioned run, the class label of `class_name` for every row."""
    from opencanvas.train.classes import label_for

    slots = caption_slot_count(config)
    if slots:
        flat = [part for prompt in prompts for part in split_slots(prompt, slots)]
        text, mask = encode(flat)  # (B*S, L, D), (B*S, L) | None
        text = text.reshape(len(prompts), -1, text.shape[-1])  # (B, S*L, D)
        mask = None if mask is None else mask.reshape(len(prompts), -1)
    else:
        text, mask = encode(prompts)
    names = config.get("class_names")
    labels = None
    if names is not None:
        labels = torch.full((len(prompts),), label_for(class_name, names), dtype=torch.long, device=text.device)
    elif class_name is not None:
        raise ValueError("this run was trained without class conditioning: leave out --class (or train a run "
                         "with --class-column)")
    return Conditioning(text, mask, class_labels=labels)


@dataclass
class InferencePipeline(ModelPipeline):
    denoiser: Denoiser  # x0-prediction in sigma space (opencanvas.diffusion)
    autoencoder: LoadedAutoencoder
    text_encoder: LoadedTextEncoder
    config: dict[str, Any]  # the run's resolved TrainConfig (as stored in the checkpoint)
    weights_hash: str  # sha256 over the loaded UNet tensors (names, dtypes, bytes)
    checkpoint: Path
    ema: bool
    text_encoder_2: LoadedTextEncoder | None = None  # a run on two text encoders (opencanvas.train.encoders)
    workspace: Workspace | None = None  # where the image-embedding CLIP of a text+image run resolves
    # Reference images already embedded (path -> (1, E)): sampling asks once per batch, the CLIP loads once.
    image_embeddings: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def use_text_mask(self) -> bool:
        return bool(self.config.get("use_text_mask", False))

    def with_extras(self, prompts: list[str], cond: Conditioning, image: torch.Tensor | None) -> Conditioning:
        """Both encoders' hidden states and pooled embeddings (feature axis, as trained), and the image."""
        from opencanvas.train.encoders import prompt_extras

        return prompt_extras(self.config, self.text_encoder, self.text_encoder_2, prompts, cond, image, self.device)

    def image_embedding(self, path: Path) -> torch.Tensor:
        """(1, E) the CLIP image embedding of the picture at `path`, with the CLIP the latent set used."""
        from opencanvas.components.loading import load_clip_evaluator
        from opencanvas.fetch.decode import load_rgb
        from opencanvas.train.encoders import TEXT_IMAGE

        if self.config.get("conditioning") != TEXT_IMAGE:
            raise ValueError(NO_IMAGE_CONDITIONING)
        key = str(Path(path).resolve())
        if key not in self.image_embeddings:
            try:
                image = load_rgb(Path(path).read_bytes())
            except (OSError, ValueError) as err:
                raise ValueError(f"--image {path} is not an image this can read ({type(err).__name__}: {err})") \
                    from err
            clip = load_clip_evaluator(self.workspace, str(self.config["data"]["image_embeddings"]), self.device)
            features = clip.image_features([image])  # (1, E), L2-normalised as encode stored them
            self.image_embeddings[key] = torch.from_numpy(features).to(self.device)
        return self.image_embeddings[key]

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the latents for an image of height x width pixels."""
        f = self.autoencoder.downscale
        if height % f or width % f:
            raise ValueError(f"height and width must be multiples of {f} (the autoencoder's downscale)")
        return int(self.config["unet"]["in_channels"]), height // f, width // f

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states (B, L, D) float32 and the mask the UNet was trained with (None: no mask)."""
        hidden, mask = self.text_encoder.encode(prompts)
        return hidden.float().to(self.device), (mask.to(self.device) if self.use_text_mask else None)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Normalised latents (B, C, h, w) -> PIL images."""
        from opencanvas.pixels import to_pil

        return to_pil(self.autoencoder.decode(latents))


def find_checkpoint(run_dir: Path, checkpoint: str | int | None = None) -> Path:
    """The newest checkpoint, or the one at `checkpoint` images (or a file name / path)."""
    if checkpoint is None:
        path = latest_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(f"run {run_dir.name!r} has no checkpoint in {run_dir}/checkpoints: "
                                    "train it first (opencanvas train --run ...)")
        return path
    if isinstance(checkpoint, int) or str(checkpoint).isdigit():
        path = run_dir / "checkpoints" / f"ckpt-{int(checkpoint):012d}.safetensors"
    else:
        path = Path(checkpoint)
        path = path if path.is_absolute() or path.exists() else run_dir / "checkpoints" / path
    if not path.exists() or not CHECKPOINT_RE.match(path.name):
        have = ", ".join(p.name for p in list_checkpoints(run_dir)) or "none"
        raise FileNotFoundError(f"no checkpoint {checkpoint!r} in run {run_dir.name!r} (have: {have})")
    return path


def load_denoiser(config: dict[str, Any], weights: dict[str, torch.Tensor], device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> Denoiser:
    """A Denoiser around a UNet rebuilt from a run config and loaded with `weights`."""
    from opencanvas.train.presets import build_unet

    unet = build_unet(config["unet"], int(config.get("seed", 0)))
    unet.load_state_dict(weights)
    unet.to(device=device, dtype=dtype).eval().requires_grad_(False)
    schedule = NoiseSchedule(zero_terminal_snr=bool(config.get("zero_terminal_snr", False)))
    return Denoiser(unet, schedule, config.get("prediction_type", "epsilon")).to(device)


def load_pipeline(ws: Workspace, run: str, ema: bool = True, device: str | torch.device = "cpu",
                  checkpoint: str | int | None = None, dtype: torch.dtype = torch.float32) -> InferencePipeline:
    """The run's newest (or chosen) checkpoint as an InferencePipeline, in eval mode on `device`."""
    run_dir = ws.run_dir(run)
    path = find_checkpoint(run_dir, checkpoint)
    part = "ema" if ema else "model"
    ckpt = load_checkpoint(path, parts=(part,))
    weights = ckpt.ema if ema else ckpt.model
    config = ckpt.config
    denoiser = load_denoiser(config, weights, device, dtype)
    text_encoder, autoencoder = load_components(ws, config, device)
    from opencanvas.train.encoders import load_second_text_encoder

    text_encoder_2 = load_second_text_encoder(ws, config["data"], device, int(config.get("text_encoders") or 0))
    return InferencePipeline(denoiser=denoiser, autoencoder=autoencoder, text_encoder=text_encoder, config=config,
                             weights_hash=tensors_hash(weights), checkpoint=path, ema=ema,
                             text_encoder_2=text_encoder_2, workspace=ws)


def load_components(ws: Workspace, config: dict[str, Any], device: str | torch.device = "cpu"
                    ) -> tuple[LoadedTextEncoder, LoadedAutoencoder]:
    """The text encoder and autoencoder a run's latent set was encoded with, checked against the run."""
    from opencanvas.components.loading import load_autoencoder, load_text_encoder

    data = config["data"]
    te = load_text_encoder(ws, data["text_encoder"], device, layer=data.get("text_layer"),
                           max_length=int(data["text_len"]))
    ae = load_autoencoder(ws, data["autoencoder"], device)
    if te.hidden_size != int(data["text_dim"]):
        raise ValueError(f"text encoder {data['text_encoder']!r} now has hidden size {te.hidden_size}, the run "
                         f"was trained on {data['text_dim']}: the component changed since encoding")
    if ae.latent_channels != int(config["unet"]["in_channels"]):
        raise ValueError(f"autoencoder {data['autoencoder']!r} has {ae.latent_channels} latent channels, the "
                         f"UNet {config['unet']['in_channels']}: the component changed since encoding")
    if data.get("shift") is not None:
        # The UNet learnt latents normalised with the latent set's constants: decode with the same.
        ae.shift, ae.scale = [float(v) for v in data["shift"]], [float(v) for v in data["scale"]]
    return te, ae
