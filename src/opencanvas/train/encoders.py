"""Training and sampling with two text encoders (eDiff-I, SDXL) and with an image embedding (unCLIP).

Two text encoders: a latent set encoded with `--text-encoder A --text-encoder B` trains on both by
default. Their hidden states are concatenated along the FEATURE axis, (B, L_A, D_A + D_B), B's
padded or truncated to A's length (diffusion.text_encoders): SDXL does this, and it keeps a plain
diffusers `cross_attention_dim`, so the export loads in stock diffusers. Both pooled embeddings,
concatenated (P_A + P_B), go to the timestep embedding through class_embed_type="projection".
Each encoder is dropped on its own with `encoder_dropout` (eDiff-I), so the model also works with
either one alone; CFG's caption dropout drops both (and every other field) together.

`--conditioning text+image`: the CLIP image embedding stored by `encode --image-embeddings` becomes a
few extra tokens through a small projection and is appended to the timestep-embedding vector
(diffusion.conditioning.ConditioningAdapter), with its own `image_dropout`; its null value is zeros.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from opencanvas.diffusion.conditioning import ADAPTER_KEY, NO_IMAGE_CONDITIONING, Conditioning
from opencanvas.diffusion.text_encoders import concat_features, drop_encoder
from opencanvas.encode.store import text_encoders as text_encoder_specs  # older sets and runs name one

TEXT_IMAGE = "text+image"


def two_encoders(data: dict[str, Any]) -> bool:
    """The latent set holds two text encoders."""
    return len(text_encoder_specs(data)) > 1


def uses_second_encoder(data: dict[str, Any], text_encoders: int = 0) -> bool:
    """A run trains on both encoders: the set has two and `--text-encoders` is not 1 (0: all the set has)."""
    return two_encoders(data) and text_encoders != 1


def cross_attention_dim(data: dict[str, Any], text_encoders: int = 0) -> int:
    """The UNet's text width: D_A, or D_A + D_B with two encoders (feature-axis concatenation)."""
    return int(data["text_dim"]) + (int(data["text2_dim"]) if uses_second_encoder(data, text_encoders) else 0)


def load_second_text_encoder(ws: Any, data: dict[str, Any], device: str | torch.device = "cpu",
                             text_encoders: int = 0) -> Any:
    """The run's second text encoder (a LoadedTextEncoder), as the latent set encoded with it; None with one."""
    from opencanvas.components.loading import load_text_encoder

    if not uses_second_encoder(data, text_encoders):
        return None
    spec = text_encoder_specs(data)[1]
    te = load_text_encoder(ws, spec, device, layer=data.get("text2_layer"), max_length=int(data["text2_len"]))
    if te.hidden_size != int(data["text2_dim"]):
        raise ValueError(f"text encoder {spec!r} now has hidden size {te.hidden_size}, the run was trained on "
                         f"{data['text2_dim']}: the component changed since encoding")
    return te


def check_modes(data: dict[str, Any], latents: str, conditioning: str, class_column: str | None,
                text_encoders: int = 0) -> None:
    """One-line errors for a mode the latent set cannot serve (naming the encode flag) or modes that collide."""
    image = conditioning == TEXT_IMAGE
    if text_encoders not in (0, 1, 2):
        raise ValueError(f"--text-encoders must be 1 or 2, got {text_encoders}")
    if text_encoders == 2 and not two_encoders(data):
        raise ValueError(f"--text-encoders 2 needs a second text encoder, and latent set {latents!r} has only "
                         f"{text_encoder_specs(data)[0]!r}: re-encode with `opencanvas encode ... --text-encoder A "
                         "--text-encoder B`")
    if image and not data.get("image_embeddings"):
        raise ValueError(f"--conditioning text+image needs image embeddings, and latent set {latents!r} has none: "
                         f"re-encode with `opencanvas encode ... --image-embeddings CLIP` (a CLIP under clips/, a "
                         f"local CLIP folder or a hub id)")
    second = uses_second_encoder(data, text_encoders)
    if second and conditioning == "multi-caption":
        raise ValueError(f"latent set {latents!r} has two text encoders; --conditioning multi-caption takes one: "
                         "add --text-encoders 1")
    if class_column and (image or second):
        raise ValueError("--class-column and the pooled/image embeddings both feed diffusers' class embedding: "
                         "a run takes one of them")


def encoder_unet(unet: dict[str, Any], data: dict[str, Any], conditioning: str, image_tokens: int,
                 text_encoders: int = 0) -> dict[str, Any]:
    """The UNet config with what two encoders and image conditioning add: the wider cross-attention, the
    projection class embedding of the added vector, and the adapter's image tokens."""
    unet = dict(unet)
    added = 0
    width = cross_attention_dim(data, text_encoders)
    if uses_second_encoder(data, text_encoders):
        unet["cross_attention_dim"] = width
        added += sum(int(p) for p in data["pooled_dims"])
    if conditioning == TEXT_IMAGE:
        added += int(data["image_dim"])
        adapter = dict(unet.get(ADAPTER_KEY) or {"text_dim": width})
        unet[ADAPTER_KEY] = {**adapter, "image_dim": int(data["image_dim"]), "image_tokens": int(image_tokens)}
    if added:
        unet.update(class_embed_type="projection", projection_class_embeddings_input_dim=added)
    return unet


def combine(cond: Conditioning, text2: torch.Tensor | None = None, mask2: torch.Tensor | None = None,
            pooled: torch.Tensor | None = None, pooled2: torch.Tensor | None = None,
            image: torch.Tensor | None = None, use_text_mask: bool = False) -> Conditioning:
    """First-encoder conditioning (text (B, L, D_A), mask) + the second encoder's arrays and the image
    embedding -> the UNet's conditioning: text (B, L, D_A + D_B), added (B, P_A + P_B), image (B, E)."""
    if text2 is not None and mask2 is not None and pooled is not None and pooled2 is not None:
        mask = cond.mask if cond.mask is not None else torch.ones(cond.text.shape[:2], dtype=torch.bool,
                                                                   device=cond.text.device)
        text, both = concat_features(cond.text, mask, text2.to(cond.text), mask2.to(mask.device))
        cond = cond.replace(text=text, mask=both if use_text_mask else None,
                            added=torch.cat([pooled.to(cond.text), pooled2.to(cond.text)], dim=-1))
    if image is not None:
        cond = cond.replace(image=image.to(cond.text))
    return cond


def prompt_extras(config: dict[str, Any], text_encoder: Any, text_encoder_2: Any, prompts: list[str],
                  cond: Conditioning, image: torch.Tensor | None, device: torch.device) -> Conditioning:
    """A run's prompt conditioning `cond` (first encoder) with its second encoder's and its image's fields.

    image: (1, E) or (B, E) of a text+image run (None: the null image, what image dropout trained on).
    """
    arrays: dict[str, torch.Tensor] = {}
    if text_encoder_2 is not None:
        _, _, pooled = text_encoder.encode_pooled(prompts)               # (B, P_A)
        text2, mask2, pooled2 = text_encoder_2.encode_pooled(prompts)    # (B, L_B, D_B), (B, L_B), (B, P_B)
        arrays = {"text2": text2, "mask2": mask2, "pooled": pooled, "pooled2": pooled2}
    if config.get("conditioning") == TEXT_IMAGE:
        null = torch.zeros(1, int(config["data"]["image_dim"]), device=device)
        arrays["image"] = (null if image is None else image.to(device)).expand(len(prompts), -1)
    elif image is not None:
        raise ValueError(NO_IMAGE_CONDITIONING)
    arrays = {name: a.to(device) if name == "mask2" else a.to(device, torch.float32) for name, a in arrays.items()}
    return combine(cond, use_text_mask=bool(config.get("use_text_mask", False)), **arrays)


@dataclass
class ExtraConditioning:
    """The null values of a run's extra inputs, and how a latent batch's arrays join its Conditioning."""

    null: dict[str, torch.Tensor]  # text (L, D_A), mask (L,); text2, mask2, pooled, pooled2; image (E,) zeros
    two_encoders: bool
    image: bool

    @classmethod
    def open(cls, latent_set: Any, device: torch.device, image: bool, second_encoder: bool = True
             ) -> ExtraConditioning | None:
        """None for a run with one encoder and no image (its batches are used as before).

        second_encoder=False (`--text-encoders 1`) trains on the first encoder of a two-encoder set."""
        has_two = len(latent_set.text_arrays) > 0 and second_encoder
        if not has_two and not image:
            return None
        null = {name: torch.from_numpy(value).to(device) for name, value in latent_set.null_conditioning().items()}
        null = {name: value if name.startswith("mask") else value.float() for name, value in null.items()}
        if image:
            null["image"] = torch.zeros(int(latent_set.meta["image_dim"]), device=device)
        return cls(null, has_two, image)

    def draw_drops(self, gen: torch.Generator, b: int, device: torch.device, encoder_dropout: float,
                   image_dropout: float) -> dict[str, torch.Tensor]:
        """Each encoder's own dropout (B, 2) and the image's (B,), from the step's generator."""
        drops = {}
        if self.two_encoders:
            drops["encoder_drop"] = torch.rand((b, 2), generator=gen, device=device) < encoder_dropout
        if self.image:
            drops["image_drop"] = torch.rand(b, generator=gen, device=device) < image_dropout
        return drops

    def batch(self, cond: Conditioning, batch: dict[str, Any], use_text_mask: bool,
              encoder_drop: torch.Tensor | None = None, image_drop: torch.Tensor | None = None) -> Conditioning:
        """A loader batch's conditioning; `cond` is what the run builds from its first-encoder text and mask."""
        device = cond.text.device
        arrays: dict[str, torch.Tensor] = {}
        if self.two_encoders:
            arrays = {name: batch[name].to(device) for name in ("text2", "mask2", "pooled", "pooled2")}
            arrays = {name: a if name == "mask2" else a.float() for name, a in arrays.items()}
        if self.image:
            arrays["image"] = batch["image"].to(device).float()
        if encoder_drop is not None:
            first, second = encoder_drop[:, 0], encoder_drop[:, 1]
            cond = cond.replace(text=drop_encoder(first, cond.text, self.null["text"]),
                                mask=None if cond.mask is None else drop_encoder(first, cond.mask, self.null["mask"]))
            arrays["pooled"] = drop_encoder(first, arrays["pooled"], self.null["pooled"])
            for name in ("text2", "mask2", "pooled2"):
                arrays[name] = drop_encoder(second, arrays[name], self.null[name])
        if image_drop is not None:
            arrays["image"] = drop_encoder(image_drop, arrays["image"], self.null["image"])
        return combine(cond, use_text_mask=use_text_mask, **arrays)

    def null_conditioning(self, base: Conditioning, use_text_mask: bool) -> Conditioning:
        """`base` (the run's null text conditioning, batch 1) with every extra field at its null value:
        the second encoder's empty prompt, both pooled empty prompts, a zero image."""
        names = (("text2", "mask2", "pooled", "pooled2") if self.two_encoders else ()) + (("image",) if self.image
                                                                                          else ())
        return combine(base, use_text_mask=use_text_mask, **{name: self.null[name][None] for name in names})


def refuse_image_export(run: str, config: dict[str, Any]) -> None:
    """text+image has no diffusers equivalent: a one-line error, and nothing is written."""
    if config.get("conditioning") == TEXT_IMAGE:
        raise ValueError(f"run {run!r} uses --conditioning text+image, which has no diffusers equivalent (image "
                         f"tokens appended to the text in UNet2DConditionModel): nothing exported; sample it with "
                         f"`opencanvas sample --run {run} --image REF.png`")


def export_note(config: dict[str, Any]) -> str | None:
    """The one line a user of a two-encoder export must know (the UNet loads; the stock pipeline has one encoder)."""
    if not uses_second_encoder(config["data"], int(config.get("text_encoders") or 0)):
        return None
    return ("two text encoders: the UNet loads in diffusers (cross_attention_dim = both widths, the pooled "
            "embeddings through class_embed_type 'projection'), but the stock StableDiffusionPipeline has one text "
            "encoder: concatenate text_encoder's and text_encoder_2's hidden states per token and pass both pooled "
            "embeddings as class_labels")
