"""Load an autoencoder, a text encoder or a CLIP evaluator from a spec.

A spec is, in this order: a component trained in this workspace
(`autoencoders/<name>/`, `clips/<name>/`); a local directory (a diffusers
pipeline folder with `vae/`, `text_encoder/` + `tokenizer/` subfolders, or the
component folder itself); or a hub id (`stabilityai/stable-diffusion-2-base`).
Every loaded component carries a `provenance` dict for the model card.

Latent normalisation: diffusion runs on `(z - shift) * scale`, per channel.
SD's VAE uses shift 0 and scale `scaling_factor` (0.18215) on every channel;
autoencoders trained here store per-channel mean and 1/std of their latents
(opencanvas.json, and `latents_mean`/`latents_std` in the diffusers config).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from opencanvas.storage import weights_sha256
from opencanvas.workspace import Workspace, is_name

if TYPE_CHECKING:
    from diffusers import AutoencoderKL
    from PIL import Image
    from transformers import CLIPModel, CLIPTextModel, PreTrainedTokenizerBase

RECORD_FILE = "opencanvas.json"        # provenance + latent normalisation of components trained here
TextLayer = Literal["last", "penultimate"]
# OpenAI CLIP preprocessing constants (used when a CLIP dir has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ComponentNotFoundError(FileNotFoundError):
    """A spec that is no trained name, no usable directory and no reachable hub model."""


@dataclass(frozen=True)
class ComponentSource:
    """Where a component's files are: a directory, or a hub id (+ subfolder)."""

    origin: Literal["workspace", "local", "hub"]
    spec: str
    path: Path | None = None
    hub_id: str | None = None
    subfolder: str | None = None

    def describe(self, ws: Workspace | None) -> dict[str, Any]:
        out: dict[str, Any] = {"spec": self.spec, "origin": self.origin}
        if self.path is not None:
            try:
                out["path"] = ws.relative(self.path) if ws and self.origin == "workspace" else str(self.path)
            except ValueError:
                out["path"] = str(self.path)
            out["weights_sha256"] = weights_sha256(self.path)
        else:
            out.update(hub_id=self.hub_id, subfolder=self.subfolder,
                       training_data="not recorded here: see the hub model card")
        return out


def read_record(directory: Path) -> dict[str, Any]:
    """The opencanvas.json of a component trained here ({} for other components)."""
    path = Path(directory) / RECORD_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def resolve(ws: Workspace | None, spec: str, trained_dir: Path | None, subfolder: str,
            what: str) -> ComponentSource:
    """Turn a spec into a source: trained name, then local directory, then hub id."""
    if trained_dir is not None and trained_dir.is_dir() and "/" not in spec:
        return ComponentSource("workspace", spec, path=trained_dir)
    local = Path(spec).expanduser()
    if local.is_dir():
        local = local.resolve()
        return ComponentSource("local", spec, path=local / subfolder if (local / subfolder).is_dir() else local)
    if _HUB_ID.match(spec) and "/" in spec:
        return ComponentSource("hub", spec, hub_id=spec, subfolder=subfolder)
    where = f" (no {trained_dir} either)" if trained_dir is not None else ""
    raise ComponentNotFoundError(
        f"{what} {spec!r} is not a name trained in this workspace{where}, not a directory, "
        f"and not a hub id (owner/name): train one, or pass a local directory or a hub id")


@contextlib.contextmanager
def quiet_hub_logs() -> Iterator[None]:
    """Silence 'unexpected keys' tables and weight-loading bars (a CLIP dir holds both towers)."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    t_level, d_level = tlog.get_verbosity(), dlog.get_verbosity()
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")  # diffusers -> hub
            yield
    finally:
        tlog.set_verbosity(t_level)
        dlog.set_verbosity(d_level)
        tlog.enable_progress_bar()


def from_source(loader: Any, source: ComponentSource, what: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained` on a source, with an error that says how to get the files offline."""
    with quiet_hub_logs():
        if source.path is not None:
            if not (source.path / "config.json").exists() and not (source.path / "tokenizer.json").exists() \
                    and not (source.path / "tokenizer_config.json").exists():
                raise ComponentNotFoundError(
                    f"{source.path} has no config.json: pass a diffusers pipeline folder (with a "
                    f"{source.subfolder or 'component'} subfolder) or the {what} folder itself")
            return loader.from_pretrained(source.path, **kwargs)
        errors = []
        for sub in (source.subfolder, None):  # pipeline repo first, then a bare component repo
            try:
                return loader.from_pretrained(source.hub_id, **({"subfolder": sub} if sub else {}), **kwargs)
            except (OSError, ValueError) as err:
                errors.append(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
        raise ComponentNotFoundError(
            f"cannot load {what} {source.hub_id!r} from the hub ({'; '.join(errors)}). Offline, download it "
            f"where there is internet, e.g. `huggingface-cli download {source.hub_id} --include "
            f"'{source.subfolder}/*' --local-dir DIR`, copy DIR here and pass the directory instead")


def on_device(model: Any, device: str | torch.device, dtype: torch.dtype) -> Any:
    """Frozen, eval-mode model on `device`; cast only when needed (diffusers warns on no-op casts)."""
    if next(model.parameters()).dtype != dtype:
        model = model.to(dtype=dtype)
    return model.to(device=device).eval().requires_grad_(False)


# ---- autoencoder ------------------------------------------------------------------

@dataclass
class LoadedAutoencoder:
    vae: AutoencoderKL
    shift: list[float]     # per latent channel; normalised latents are (z - shift) * scale
    scale: list[float]
    provenance: dict[str, Any]
    downscale: int         # pixels per latent cell along a side (8 for SD)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1)
        return (torch.tensor(self.shift, device=z.device, dtype=z.dtype).view(shape),
                torch.tensor(self.scale, device=z.device, dtype=z.dtype).view(shape))

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        shift, scale = self._stats(z)
        return (z - shift) * scale

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        shift, scale = self._stats(latents)
        return latents / scale + shift

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels (B, 3, H, W) in [-1, 1] -> raw posterior mean and std, each (B, C, H/f, W/f)."""
        p = next(self.vae.parameters())
        dist = self.vae.encode(pixels.to(p.device, p.dtype)).latent_dist
        return dist.mean, dist.std

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, C, h, w) -> pixels (B, 3, h*f, w*f) in [-1, 1] (not clamped)."""
        p = next(self.vae.parameters())
        return self.vae.decode(self.denormalize(latents.to(p.device, p.dtype))).sample


def latent_normalization(config: Any, record: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(shift, scale) per channel: the stored statistics, else the diffusers config's constants."""
    channels = int(config.latent_channels)
    if "latent_shift" in record and "latent_scale" in record:
        return [float(v) for v in record["latent_shift"]], [float(v) for v in record["latent_scale"]]
    factor = float(getattr(config, "scaling_factor", None) or 1.0)
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:  # diffusers: (z - mean) * scaling_factor / std
        return [float(m) for m in mean], [factor / float(s) for s in std]
    shift = float(getattr(config, "shift_factor", None) or 0.0)  # SD3/Flux style scalar shift
    return [shift] * channels, [factor] * channels


def load_autoencoder(ws: Workspace | None, spec: str, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> LoadedAutoencoder:
    """An AutoencoderKL (eval mode) with its latent normalisation and provenance."""
    from diffusers import AutoencoderKL

    source = resolve(ws, spec, ws.autoencoder_dir(spec) if ws and is_name(spec) else None, "vae", "autoencoder")
    vae = from_source(AutoencoderKL, source, "autoencoder")
    vae = on_device(vae, device, dtype)
    record = read_record(source.path) if source.path is not None else {}
    shift, scale = latent_normalization(vae.config, record)
    provenance = {"component": "autoencoder", **source.describe(ws), **record,
                  "latent_shift": shift, "latent_scale": scale}
    downscale = 2 ** (len(vae.config.block_out_channels) - 1)
    return LoadedAutoencoder(vae, shift, scale, provenance, downscale)


# ---- text encoder -------------------------------------------------------------------

@dataclass
class LoadedTextEncoder:
    tokenizer: PreTrainedTokenizerBase
    model: CLIPTextModel
    max_length: int
    hidden_size: int
    layer: TextLayer      # which hidden states condition the UNet (recorded in provenance)
    provenance: dict[str, Any] = field(default_factory=dict)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, each (B, max_length), padded and truncated."""
        batch = self.tokenizer(list(texts), padding="max_length", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> hidden states (B, L, D) in the model's dtype and mask (B, L) bool (True = token)."""
        hidden, mask, _ = self.encode_pooled(texts)
        return hidden, mask

    @torch.no_grad()
    def encode_pooled(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`encode` plus the pooled embedding (B, D): the final layer's EOS-token state, as SDXL adds
        to the timestep embedding (the last layer whatever `layer` says, as in SDXL)."""
        ids, attention = self.tokenize(texts)
        device = next(self.model.parameters()).device
        ids, attention = ids.to(device), attention.to(device)
        # Causal CLIP text towers: padding never changes the tokens before it, so
        # the mask is for the UNet's cross-attention, as in SD.
        out = self.model(input_ids=ids, attention_mask=attention,
                         output_hidden_states=self.layer == "penultimate")
        if self.layer == "last":
            hidden = out.last_hidden_state                                  # (B, L, D), final layer norm applied
        else:  # SD2's choice (penultimate layer + final layer norm)
            hidden = self.model.final_layer_norm(out.hidden_states[-2])     # (B, L, D)
        return hidden, attention.bool(), out.pooler_output                  # pooled (B, D)


def _max_length(tokenizer: Any, config: Any, requested: int | None) -> int:
    positions = int(config.max_position_embeddings)
    if requested is not None:
        if requested > positions:
            raise ValueError(f"max_length {requested} is over the text encoder's {positions} positions")
        return requested
    from_tokenizer = int(getattr(tokenizer, "model_max_length", positions) or positions)
    return min(positions, from_tokenizer)


def load_tokenizer(source: ComponentSource) -> PreTrainedTokenizerBase:
    """The tokenizer beside a text encoder: a `tokenizer/` sibling folder, else the same folder."""
    from transformers import AutoTokenizer

    if source.path is not None:
        sibling = source.path.parent / "tokenizer"
        tok_source = ComponentSource(source.origin, source.spec,
                                     path=sibling if source.path.name == "text_encoder" and sibling.is_dir()
                                     else source.path, subfolder="tokenizer")
    else:
        tok_source = ComponentSource("hub", source.spec, hub_id=source.hub_id, subfolder="tokenizer")
    return from_source(AutoTokenizer, tok_source, "tokenizer")


def load_text_encoder(ws: Workspace | None, spec: str, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, *, layer: TextLayer | None = None,
                      max_length: int | None = None) -> LoadedTextEncoder:
    """A CLIP text tower + tokenizer. `layer` defaults to the one recorded with the component, else
    "last": SD2's text_encoder folder already drops the final block (23 of 24 layers), so its last
    hidden state *is* the penultimate layer of OpenCLIP ViT-H/14."""
    from transformers import CLIPTextModel

    source = resolve(ws, spec, ws.clip_dir(spec) if ws and is_name(spec) else None, "text_encoder", "text encoder")
    model = from_source(CLIPTextModel, source, "text encoder")
    model = on_device(model, device, dtype)
    tokenizer = load_tokenizer(source)
    record = read_record(source.path) if source.path is not None else {}
    layer = layer or record.get("text_layer", "last")
    if layer not in ("last", "penultimate"):
        raise ValueError(f"text layer must be 'last' or 'penultimate', got {layer!r}")
    length = _max_length(tokenizer, model.config, max_length)
    provenance = {"component": "text_encoder", **source.describe(ws), **record,
                  "text_layer": layer, "max_length": length}
    return LoadedTextEncoder(tokenizer, model, length, int(model.config.hidden_size), layer, provenance)


# ---- CLIP evaluator ------------------------------------------------------------------

class ClipEvaluator:
    """CLIP features and scores for evaluation, near-duplicate search and reports."""

    def __init__(self, model: CLIPModel, tokenizer: PreTrainedTokenizerBase, name: str,
                 provenance: dict[str, Any], mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, batch_size: int = 64) -> None:
        self.model, self.tokenizer, self.name, self.provenance = model, tokenizer, name, provenance
        self.image_size = int(model.config.vision_config.image_size)
        self.max_length = _max_length(tokenizer, model.config.text_config, None)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def image_pixels(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> (3, S, S) uint8: alpha flattened, center crop, resize (CLIP's view of it)."""
        from opencanvas.pixels import center_crop_resize, flatten_alpha, to_uint8_chw

        return to_uint8_chw(center_crop_resize(flatten_alpha(image), self.image_size))

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images -> CLIP input (N, 3, S, S): center crop, resize, normalise."""
        return self.normalize_pixels(np.stack([self.image_pixels(im) for im in images]))

    def normalize_pixels(self, pixels: np.ndarray) -> torch.Tensor:
        """(N, 3, S, S) uint8 from `image_pixels` -> CLIP input (N, 3, S, S) float."""
        return (torch.from_numpy(pixels).float() / 255.0 - self.mean) / self.std

    @torch.no_grad()
    def pixel_features(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) uint8 from `image_pixels` -> (N, D) float32, L2-normalised (one forward pass)."""
        values = self.normalize_pixels(pixels).to(self.device, self.model.dtype)
        return _unit_rows([self.model.get_image_features(pixel_values=values).pooler_output.float()],
                          int(self.model.config.projection_dim))

    @torch.no_grad()
    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32, L2-normalised."""
        dim = int(self.model.config.projection_dim)
        out = [self.pixel_features(np.stack([self.image_pixels(im) for im in images[i:i + self.batch_size]]))
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, L2-normalised."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(list(texts[i:i + self.batch_size]), padding="max_length", truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            out.append(self.model.get_text_features(input_ids=batch["input_ids"],
                                                    attention_mask=batch["attention_mask"]).pooler_output.float())
        return _unit_rows(out, int(self.model.config.projection_dim))

    def clip_score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """Per pair: 100 * max(cos(image, text), 0), as torchmetrics' CLIPScore. (N,)"""
        if len(images) != len(texts):
            raise ValueError(f"clip_score pairs images with texts: got {len(images)} and {len(texts)}")
        cos = (self.image_features(images) * self.text_features(texts)).sum(axis=1)
        return 100.0 * np.clip(cos, 0.0, None)


def _unit_rows(chunks: list[torch.Tensor], dim: int) -> np.ndarray:
    if not chunks:
        return np.zeros((0, dim), np.float32)
    feats = torch.cat(chunks)
    return torch.nn.functional.normalize(feats, dim=-1).cpu().numpy().astype(np.float32)


def load_clip_evaluator(ws: Workspace | None, spec: str, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32) -> ClipEvaluator:
    """A CLIPModel + tokenizer (+ the preprocessing stored beside them) from a spec."""
    from transformers import AutoTokenizer, CLIPModel

    source = resolve(ws, spec, ws.clip_dir(spec) if ws and is_name(spec) else None, "clip", "CLIP")
    model = on_device(from_source(CLIPModel, source, "CLIP"), device, dtype)
    tok_source = source
    if source.path is not None and (source.path / "tokenizer").is_dir():
        tok_source = ComponentSource(source.origin, spec, path=source.path / "tokenizer")
    tokenizer = from_source(AutoTokenizer, tok_source, "tokenizer")
    record = read_record(source.path) if source.path is not None else {}
    mean, std = CLIP_MEAN, CLIP_STD
    if source.path is not None and (source.path / "preprocessor_config.json").exists():
        pre = json.loads((source.path / "preprocessor_config.json").read_text())
        mean, std = pre.get("image_mean", mean), pre.get("image_std", std)
    provenance = {"component": "clip", **source.describe(ws), **record}
    return ClipEvaluator(model, tokenizer, spec, provenance, mean, std)
