"""Training inputs: latent batches by resolution phase, and the per-step random draws.

Every random number of a micro-batch comes from one generator seeded by
(seed, micro * world + rank, images seen): opencanvas.training.seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from opencanvas.diffusion.conditioning import Conditioning
from opencanvas.train.encoders import ExtraConditioning
from opencanvas.training.seeds import step_generator, step_seed
from opencanvas.workspace import Workspace

__all__ = ["LatentStream", "phase_resolution", "step_generator", "step_seed", "stream_conditioning",
           "training_inputs"]


def phase_resolution(resolutions: tuple[tuple[int, int], ...], images_seen: int) -> int:
    """The resolution trained at `images_seen`: the last phase that has started."""
    return [res for res, start in resolutions if start <= images_seen][-1]


def read_key_filter(ws: Workspace, path: str) -> frozenset[str]:
    """The `key` column of a workspace-relative Parquet file (a study's data fraction, or a subset file)."""
    import pyarrow.parquet as pq

    full = ws.root / path
    if not full.exists():
        raise FileNotFoundError(f"key filter {path!r} does not exist under {ws.root}: pass a Parquet file with a "
                                "`key` column (e.g. subsets/<name>.parquet)")
    return frozenset(pq.read_table(full, columns=["key"]).column("key").to_pylist())


def stream_conditioning(ws: Workspace, config: dict[str, Any]) -> dict[str, Any]:
    """What `LatentStream.open` needs for a run config's conditioning mode: caption slots (multi-caption),
    the key -> class map with the null class (class conditioning, read from the catalog), whether the
    image embeddings join (text+image) and whether a second text encoder does (`--text-encoders`)."""
    from opencanvas.encode import open_latents
    from opencanvas.train.classes import class_labels, key_values
    from opencanvas.train.config import caption_slots

    multi = config.get("conditioning") == "multi-caption"
    out: dict[str, Any] = {"slots": caption_slots(config["data"], config.get("max_captions")) if multi else 0,
                           "class_of": None, "null_class": None, "image": config.get("conditioning") == "text+image",
                           "second_encoder": config.get("text_encoders") != 1}
    names, column = config.get("class_names"), config.get("class_column")
    if names is not None and column is not None:
        keys = {k for res, _ in config["resolutions"] for k in open_latents(ws, config["latents"], int(res)).keys()}
        out.update(class_of=class_labels(key_values(ws, keys, column), names), null_class=len(names))
    return out


@dataclass
class LatentStream:
    """Endless micro-batches of one resolution's latent set, resumable from (epoch, start)."""

    resolution: int
    latent_set: Any  # opencanvas.encode LatentSet
    loader: Any  # opencanvas.encode LatentLoader
    shift: torch.Tensor  # (1, C, 1, 1)
    scale: torch.Tensor  # (1, C, 1, 1)
    null_text: torch.Tensor  # (L, D) float32
    null_mask: torch.Tensor  # (L,) bool
    slots: int = 0  # multi-caption: captions per image, concatenated along the sequence (0: one caption)
    class_of: dict[str, int] | None = None  # key -> class label (class conditioning)
    null_class: int | None = None  # the label of "no class" (CFG, images without one)
    extra: ExtraConditioning | None = None  # a second text encoder, an image embedding (opencanvas.train.encoders)

    @classmethod
    def open(cls, ws: Workspace, latents: str, resolution: int, micro_batch: int, seed: int, rank: int,
             world: int, device: torch.device, position: dict[str, int] | None = None,
             workers: int = 0, holdout: float = 0.0, key_filter: str | None = None,
             caption_mix: dict[str, float] | None = None, slots: int = 0,
             class_of: dict[str, int] | None = None, null_class: int | None = None,
             image: bool = False, second_encoder: bool = True) -> LatentStream:
        from opencanvas.encode import LatentLoader, open_latents
        from opencanvas.train.config import caption_weights

        latent_set = open_latents(ws, latents, resolution)
        keys = read_key_filter(ws, key_filter) if key_filter else None
        epoch, start = 0, 0
        if position and position.get("resolution") == resolution:
            epoch, start = int(position["epoch"]), int(position["start"])
        loader = LatentLoader(latent_set, micro_batch, seed, rank=rank, world=world, epoch=epoch,
                              start=start, workers=workers, holdout=holdout, keys=keys,
                              caption_weights=caption_weights(caption_mix, list(latent_set.meta["captioners"])),
                              captions_per_record=slots)
        meta = latent_set.meta
        null_text, null_mask = latent_set.null_text()
        view = (1, -1, 1, 1)
        return cls(resolution, latent_set, loader,
                   torch.tensor(meta["shift"], dtype=torch.float32, device=device).view(view),
                   torch.tensor(meta["scale"], dtype=torch.float32, device=device).view(view),
                   torch.from_numpy(null_text).float().to(device), torch.from_numpy(null_mask).to(device),
                   slots, class_of, null_class, ExtraConditioning.open(latent_set, device, image,
                                                                                    second_encoder))

    def __post_init__(self) -> None:
        self._it = iter(self.loader)

    def null_conditioning(self, use_text_mask: bool) -> Conditioning:
        """The unconditional value of every field, batch 1: what caption dropout puts in.

        Multi-caption: the empty prompt in every slot, (1, S*L, D).
        """
        repeats = max(self.slots, 1)
        labels = None if self.class_of is None else torch.tensor([self.null_class], device=self.null_text.device)
        null = Conditioning(self.null_text.repeat(repeats, 1)[None],
                            self.null_mask.repeat(repeats)[None] if use_text_mask else None, class_labels=labels)
        return null if self.extra is None else self.extra.null_conditioning(null, use_text_mask)

    def conditioning(self, batch: dict[str, Any], device: torch.device, use_text_mask: bool,
                     **drops: torch.Tensor) -> Conditioning:
        """The conditioning of a loader batch, on `device` (text as float32); `drops` are the extra inputs'
        own dropouts (ExtraConditioning.draw_drops).

        Multi-caption batches hold (B, S, L, D): the slots are concatenated along the sequence, (B, S*L, D).
        """
        text, mask = batch["text"].to(device, torch.float32), batch["mask"].to(device)  # (B, [S,] L, D), (B, [S,] L)
        if self.slots:
            text, mask = text.flatten(1, 2), mask.flatten(1, 2)
        labels = None
        if self.class_of is not None:
            labels = torch.tensor([self.class_of.get(k, self.null_class) for k in batch["keys"]], device=device)
        cond = Conditioning(text, mask if use_text_mask else None, class_labels=labels)
        return cond if self.extra is None else self.extra.batch(cond, batch, use_text_mask, **drops)

    def next_batch(self) -> dict[str, Any]:
        try:
            return next(self._it)
        except StopIteration:  # end of an epoch: the loader has moved on to the next one
            self._it = iter(self.loader)
            return next(self._it)

    def position(self) -> dict[str, int]:
        """Where the next batch starts (the checkpoint's data position)."""
        epoch, start = self.loader.position
        return {"resolution": self.resolution, "epoch": int(epoch), "start": int(start)}


def training_inputs(batch: dict[str, Any], stream: LatentStream, gen: torch.Generator, device: torch.device, *,
                    num_timesteps: int, caption_dropout: float, offset_noise: float,
                    use_text_mask: bool, slot_dropout: float = 0.0, encoder_dropout: float = 0.0,
                    image_dropout: float = 0.0) -> dict[str, Any]:
    """Draw the latents, caption dropout, timesteps and noise of one micro-batch.

    Returns x0, noise, timesteps (tensors) and cond (a Conditioning, every field dropped together).
    """
    mean = batch["mean"].to(device, torch.float32)  # (B, C, h, w)
    std = batch["std"].to(device, torch.float32)
    b = mean.shape[0]
    z = mean + std * torch.randn(mean.shape, generator=gen, device=device)  # a sample of the posterior
    x0 = (z - stream.shift) * stream.scale  # normalised, unit-variance latents
    # A second encoder's and an image's own dropouts: drawn only by runs that have them (older runs keep their draws).
    drops = {} if stream.extra is None else stream.extra.draw_drops(gen, b, device, encoder_dropout, image_dropout)
    cond = stream.conditioning(batch, device, use_text_mask, **drops)
    null = stream.null_conditioning(use_text_mask)
    drop = torch.rand(b, generator=gen, device=device) < caption_dropout  # (B,)
    if stream.slots:  # each caption its own dropout, then (below) all of them together for CFG
        drop_slot = torch.rand((b, stream.slots), generator=gen, device=device) < slot_dropout  # (B, S)
        cond = drop_caption_slots(cond, null, drop_slot)
    cond = cond.where(drop, null)
    timesteps = torch.randint(0, num_timesteps, (b,), generator=gen, device=device)
    noise = torch.randn(x0.shape, generator=gen, device=device)
    if offset_noise:
        noise = noise + offset_noise * torch.randn((b, x0.shape[1], 1, 1), generator=gen, device=device)
    return {"x0": x0, "noise": noise, "timesteps": timesteps, "cond": cond}


def drop_caption_slots(cond: Conditioning, null: Conditioning, drop: torch.Tensor) -> Conditioning:
    """Replace caption slot s of image b by the empty prompt where drop[b, s]; text (B, S*L, D), drop (B, S)."""
    length = cond.text.shape[1] // drop.shape[1]
    tokens = drop.repeat_interleave(length, dim=1)  # (B, S*L)
    text = torch.where(tokens[..., None], null.text.expand_as(cond.text), cond.text)
    mask = None if cond.mask is None or null.mask is None else \
        torch.where(tokens, null.mask.expand_as(cond.mask), cond.mask)
    return cond.replace(text=text, mask=mask)
