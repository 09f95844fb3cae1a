"""What the UNet is conditioned on, as one typed object that training, guidance and samplers pass along.

`Conditioning` holds every input besides the noisy latents and the timestep: text hidden states
(with their mask), class labels, vectors added to the timestep embedding and an image embedding.
Classifier-free guidance batches conditional and unconditional halves with `Conditioning.cat`;
caption dropout swaps rows for the null conditioning with `where`; so a new field is handled by
every path at once. Unconditional means each field replaced by its null value: the empty prompt's
hidden states, the null class, zeros for vectors (whatever the latent set or run defines).

Learned parameters that a mode needs besides the UNet's own (per-slot caption embeddings now,
image projections later) live in `ConditioningAdapter`, registered as the submodule
`conditioning_adapter` of the diffusers UNet rather than in a wrapper around it. That keeps one
module tree: checkpoints, EMA, resume, DDP and the optimizer see the adapter's parameters through
`unet.parameters()` / `unet.state_dict()` unchanged, and a run without one has exactly the old
state dict (old checkpoints load, bits stay identical). The adapter runs in a forward pre-hook of the
UNet, i.e. inside the UNet's call, so under FSDP2 its parameters are gathered with the UNet's root unit
(a wrapper module would have needed its own FSDP unit and its own export path). The adapter's
settings travel in the UNet config under ADAPTER_KEY, which `build_unet` pops before diffusers sees it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from opencanvas.diffusion.image_conditioning import ImageTokens

ADAPTER_KEY = "conditioning_adapter"  # UNet-config key (and submodule name) of the adapter
FIELDS = ("text", "mask", "class_labels", "added", "image")
NO_IMAGE_CONDITIONING = ("this run was trained without image conditioning: leave out --image, or train a run "
                         "with --conditioning text+image")


@dataclass(frozen=True)
class Conditioning:
    """A batch of conditioning inputs; every tensor's first axis is the batch (B)."""

    text: torch.Tensor                        # (B, L, D) text hidden states (float)
    mask: torch.Tensor | None = None          # (B, L) bool, the text mask the UNet sees (None: attend all)
    class_labels: torch.Tensor | None = None  # (B,) long, diffusers `num_class_embeds` input
    added: torch.Tensor | None = None         # (B, P) float, added to the timestep embedding
    image: torch.Tensor | None = None         # (B, E) float image embedding (read by the adapter)

    @property
    def batch_size(self) -> int:
        return int(self.text.shape[0])

    def present(self) -> tuple[str, ...]:
        """Names of the fields that are set."""
        return tuple(name for name in FIELDS if getattr(self, name) is not None)

    def replace(self, **fields: Any) -> Conditioning:
        return dataclasses.replace(self, **fields)

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Concatenate along the batch; every item must set the same fields."""
        present = {item.present() for item in items}
        if len(present) != 1:
            raise ValueError(f"cannot batch conditionings with different fields: {sorted(present)}")
        return Conditioning(**{name: torch.cat([getattr(item, name) for item in items])
                               for name in next(iter(present))})

    def expand(self, batch: int) -> Conditioning:
        """A batch-1 conditioning (a null value) repeated to `batch` rows (a view, no copy)."""
        fields: dict[str, Any] = {name: _expand(getattr(self, name), batch) for name in FIELDS}
        return Conditioning(**fields)

    def where(self, drop: torch.Tensor, null: Conditioning, fields: Iterable[str] | None = None) -> Conditioning:
        """Rows where `drop` (B,) is true take `null`'s value (batch 1 or B), for `fields` (default: all set).

        Caption dropout for CFG drops every field together; a mode with its own dropout per input
        (an image, a second encoder) passes that input's name with its own `drop`.
        """
        names = self.present() if fields is None else tuple(fields)
        changed: dict[str, Any] = {}
        for name in names:
            value, null_value = getattr(self, name), getattr(null, name)
            if value is None:
                continue
            if null_value is None:
                raise ValueError(f"no null value for conditioning field {name!r}, so it cannot be dropped")
            keep_shape = (-1,) + (1,) * (value.ndim - 1)
            changed[name] = torch.where(drop.view(keep_shape), null_value.expand_as(value), value)
        return self.replace(**changed)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        """Move to `device`; `dtype` applies to the float fields only (labels and masks keep theirs)."""
        moved: dict[str, Any] = {}
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None:
                value = value.to(device, dtype if (dtype is not None and value.is_floating_point()) else None)
            moved[name] = value
        return Conditioning(**moved)

    def repeat_interleave(self, repeats: int) -> Conditioning:
        """Each row `repeats` times in a row (several seeds per prompt)."""
        fields: dict[str, Any] = {name: None if getattr(self, name) is None
                                  else getattr(self, name).repeat_interleave(repeats, dim=0) for name in FIELDS}
        return Conditioning(**fields)


def _expand(value: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    if value is None:
        return None
    if value.shape[0] == batch:
        return value
    if value.shape[0] != 1:
        raise ValueError(f"cannot expand a batch of {value.shape[0]} to {batch}")
    return value.expand(batch, *value.shape[1:])


def as_conditioning(cond: Conditioning | torch.Tensor, mask: torch.Tensor | None = None) -> Conditioning:
    """A Conditioning from itself, or from plain text hidden states (B, L, D) and their mask."""
    if isinstance(cond, Conditioning):
        if mask is not None:
            raise ValueError("pass the text mask inside the Conditioning, not beside it")
        return cond
    return Conditioning(cond, mask)


class ConditioningAdapter(nn.Module):
    """The learned parameters a conditioning mode adds to the UNet; maps a Conditioning to the UNet's inputs.

    multi-caption (`slots` K > 1): text is K captions' hidden states concatenated along the sequence,
    (B, K*L, D); a learned embedding per slot (K, D) is added to each caption's tokens, so cross-attention
    can tell the captioners apart (as positional embeddings tell tokens apart).

    text+image (`image_dim` E > 0): the image embedding (B, E) becomes `image_tokens` extra tokens after
    the text ones (image_conditioning.ImageTokens) and is appended to the `added` vector, which
    diffusers adds to the timestep embedding (class_embed_type="projection").
    """

    def __init__(self, text_dim: int, slots: int = 1, image_dim: int = 0, image_tokens: int = 0) -> None:
        super().__init__()
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.text_dim, self.slots = int(text_dim), int(slots)
        self.image_dim, self.image_token_count = int(image_dim), int(image_tokens)
        # Small init: at the start each slot reads (almost) as the single-caption model would.
        self.slot_embedding = nn.Parameter(torch.randn(self.slots, self.text_dim) * 0.02) if self.slots > 1 else None
        self.image_tokens = ImageTokens(self.image_dim, self.text_dim, self.image_token_count) \
            if self.image_dim and self.image_token_count else None

    def settings(self) -> dict[str, Any]:
        """What `build_adapter` needs to rebuild this module (stored in the UNet config)."""
        return {"text_dim": self.text_dim, "slots": self.slots, "image_dim": self.image_dim,
                "image_tokens": self.image_token_count}

    def forward(self, cond: Conditioning) -> Conditioning:
        text = cond.text
        if self.slot_embedding is not None:
            b, length, d = text.shape
            if length % self.slots:
                raise ValueError(f"multi-caption text of {length} tokens is not {self.slots} equal slots")
            per_slot = text.view(b, self.slots, length // self.slots, d) + self.slot_embedding.to(text)[:, None, :]
            text = per_slot.view(b, length, d)
        if self.image_tokens is None or cond.image is None:
            # An image embedding is left in place: unet_inputs refuses one that nothing consumed.
            return cond.replace(text=text)
        image = cond.image.to(text.dtype)  # (B, E)
        tokens = self.image_tokens(image).to(text.dtype)  # (B, N, D)
        mask = cond.mask
        if mask is not None:  # the image tokens are always attended
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], tokens.shape[1])], dim=1)
        added = image if cond.added is None else torch.cat([cond.added, image.to(cond.added.dtype)], dim=-1)
        return cond.replace(text=torch.cat([text, tokens], dim=1), mask=mask, added=added, image=None)


def build_adapter(settings: dict[str, Any] | None) -> ConditioningAdapter | None:
    return None if not settings else ConditioningAdapter(**settings)


def attach_adapter(unet: nn.Module, adapter: ConditioningAdapter | None) -> nn.Module:
    """Register `adapter` as the UNet's `conditioning_adapter` submodule (nothing for None); returns `unet`.

    The adapter runs in a forward pre-hook of the UNet, so inside the UNet's call: under FSDP2 its
    parameters belong to the UNet's root unit, which the (prepended) FSDP hook has gathered by then.
    """
    if adapter is not None:
        unet.add_module(ADAPTER_KEY, adapter)
        unet.register_forward_pre_hook(_adapt_inputs, with_kwargs=True)
    return unet


def _adapt_inputs(unet: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook: a `conditioning=` keyword (see `unet_inputs`) becomes the diffusers keywords."""
    if CONDITIONING_KWARG in kwargs:
        kwargs = dict(kwargs)
        cond = getattr(unet, ADAPTER_KEY)(kwargs.pop(CONDITIONING_KWARG))
        kwargs.update(_diffusers_kwargs(cond))
    return args, kwargs


CONDITIONING_KWARG = "conditioning"  # what an adapted UNet takes in place of the diffusers keywords


def unet_inputs(unet: nn.Module, cond: Conditioning, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The keyword arguments of the UNet's forward for `cond`.

    dtype: cast float inputs to the UNet's dtype (sampling in bf16); None keeps them (training,
    where autocast decides). A field is passed only when set, so a text-only call is the old call.
    A UNet with an adapter gets the Conditioning itself, which its pre-hook adapts (`attach_adapter`).
    """
    if dtype is not None:
        cond = cond.to(dtype=dtype)
    if getattr(unet, ADAPTER_KEY, None) is not None:
        return {CONDITIONING_KWARG: cond}
    return _diffusers_kwargs(cond)


def _diffusers_kwargs(cond: Conditioning) -> dict[str, Any]:
    """UNet2DConditionModel.forward keywords: text, mask and class labels (or added vectors)."""
    if cond.image is not None:  # nothing consumed it
        raise ValueError(NO_IMAGE_CONDITIONING)
    kwargs: dict[str, Any] = {"encoder_hidden_states": cond.text, "encoder_attention_mask": cond.mask}
    if cond.class_labels is not None and cond.added is not None:
        raise ValueError("class labels and added vectors both feed diffusers' class_labels input: a UNet takes "
                         "one of them")
    if cond.class_labels is not None:
        kwargs["class_labels"] = cond.class_labels
    if cond.added is not None:  # class_embed_type="projection": class_labels is a float vector
        kwargs["class_labels"] = cond.added
    return kwargs
