"""The resolved training configuration: one frozen dataclass, written to the run dir.

Every option of `opencanvas train` is a field here. Options not given take the
preset's value (lr, batch, warmup, EMA decay, parallelism) or the field default;
an option this module does not know is an error, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from opencanvas.train.classes import DEFAULT_MAX_CLASSES
from opencanvas.train.presets import Preset
from opencanvas.training import DEFAULT_CHECKPOINT_MINUTES

LrSchedule = Literal["constant", "cosine"]
ConditioningMode = Literal["text", "multi-caption", "text+image"]
CONDITIONING_MODES = ("text", "multi-caption", "text+image")

# Fields that may change between a run and its resumption (they do not change the math).
RESUMABLE_CHANGES = frozenset({
    "images", "minutes", "measured_images_per_s", "checkpoint_every", "checkpoint_minutes", "keep",
    "validate_every", "log_every", "workers", "max_bad_steps", "validation_prompts", "device", "bf16", "sdpa",
    "low_precision_norms", "channels_last", "fused_adamw", "compile",
})

# What a run records of its latent set: enough to rebuild the pipeline and write the model card.
DATA_KEYS = ("autoencoder", "text_encoder", "text_layer", "text_len", "text_dim", "shift", "scale",
             "latent_channels", "downscale", "captioners", "subset", "policy", "catalog_hash", "resolutions",
             # a second text encoder and image embeddings (issue 14; absent from older latent sets)
             "text_encoders", "text2_len", "text2_dim", "text2_layer", "pooled_dims", "image_embeddings",
             "image_dim", "image_size")


@dataclass(frozen=True)
class TrainConfig:
    run: str
    latents: str
    preset: str
    images: int  # total training images (counted globally, over all ranks)
    batch: int  # global batch per optimizer step
    micro_batch: int  # per-rank batch per forward; batch = micro_batch * world * accumulation
    lr: float
    warmup_images: int
    ema_decay: float
    parallel: Literal["ddp", "fsdp"]
    unet: dict[str, Any]  # UNet2DConditionModel kwargs, resolved against the latent set
    resolutions: tuple[tuple[int, int], ...]  # (resolution, from images seen), ascending
    data: dict[str, Any]  # the latent set's provenance and shapes (see DATA_KEYS)
    lr_schedule: LrSchedule = "constant"
    # A budget in minutes instead of images: converted once, at the start, from a measured warm-up; the rate is
    # recorded here so that the same command again trains exactly as far (`images` is then the result).
    minutes: float | None = None
    measured_images_per_s: float | None = None
    weight_decay: float = 0.01
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    prediction_type: Literal["epsilon", "v_prediction"] = "epsilon"
    min_snr_gamma: float = 5.0  # Hang et al. 2023; 0 for plain MSE
    zero_terminal_snr: bool = False  # Lin et al. 2023 (pairs with v-prediction)
    # How training timesteps are drawn: "uniform" over the chain, or "lognormal" sigmas (EDM, Karras et al. 2022)
    # with ln(sigma) ~ N(lognormal_mean, lognormal_std^2).
    timestep_sampling: Literal["uniform", "lognormal"] = "uniform"
    lognormal_mean: float = -1.2
    lognormal_std: float = 1.2
    offset_noise: float = 0.0  # Guttenberg 2023: adds offset * N(0,1) per (sample, channel)
    caption_dropout: float = 0.1  # share of captions replaced by the empty prompt (for CFG)
    # Captioner -> weight of its captions in the per-image draw (DALL-E 3 trains on ~95% long synthetic captions
    # and ~5% short ones); captioners left out are never drawn. None: uniform among an image's captions.
    caption_mix: dict[str, float] | None = None
    # What the UNet is conditioned on besides one caption (opencanvas.diffusion.conditioning). multi-caption:
    # up to `max_captions` captioner slots of each image at once (None: all of the latent set's), each caption
    # dropped on its own with `slot_dropout`, all together with `caption_dropout` (for CFG). text+image: the
    # latent set's CLIP image embedding as `image_tokens` extra tokens and in the timestep embedding
    # (opencanvas.train.encoders), dropped on its own with `image_dropout`.
    conditioning: ConditioningMode = "text"
    max_captions: int | None = None
    slot_dropout: float = 0.1
    # A catalog column as a class label (opencanvas.train.classes): the vocabulary, built when the run starts,
    # is `class_names`; label len(class_names) is the null class (CFG, images without a value).
    class_column: str | None = None
    max_classes: int = DEFAULT_MAX_CLASSES
    class_names: tuple[str, ...] | None = None
    # Images whose key hash fraction is below this are never trained on: the held-out split that
    # the components and `eval --prompts heldout` use (splits.key_fraction).
    holdout: float = 0.1
    # A workspace-relative Parquet with a `key` column: train only on those latents (a study's data
    # fraction reads one shared latent set through it). None: every latent.
    key_filter: str | None = None
    # Stable Diffusion pipelines attend to padding tokens; with a mask the exported diffusers
    # pipeline (which passes none) would see a different model, so the default is off.
    use_text_mask: bool = False
    # A latent set with two text encoders trains on both (opencanvas.train.encoders); each is dropped on its
    # own with this probability (eDiff-I), so the model also works with either alone.
    encoder_dropout: float = 0.1
    text_encoders: int = 0  # 0: every encoder of the latent set; 1: the first only; 2: both (an error with one)
    image_dropout: float = 0.1
    image_tokens: int = 4
    seed: int = 0
    # Checkpoints every checkpoint_every images (None: a twentieth of the run; 0: only at the end) or
    # checkpoint_minutes of wall time (0: off), whichever comes first, so a killed run resumes by default.
    checkpoint_every: int | None = None
    checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES
    keep: int = 3  # checkpoints kept (the newest); 0 keeps all
    validate_every: int = 0  # images; 0: no validation grids
    validation_prompts: tuple[str, ...] = ("a red circle", "a blue square", "a green triangle", "a yellow circle")
    log_every: int = 0  # images; 0: every optimizer step
    max_bad_steps: int = 5  # consecutive non-finite steps before the run stops
    workers: int = 0  # loader worker processes
    device: str = "auto"
    # The recipe (None: on where the device supports it; see recipe.resolve_recipe).
    bf16: bool | None = None
    sdpa: bool | None = None
    low_precision_norms: bool | None = None
    channels_last: bool | None = None
    fused_adamw: bool | None = None
    compile: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        check_known(values, cls)
        values = dict(values)
        values["resolutions"] = tuple(tuple(r) for r in values["resolutions"])
        values["adam_betas"] = tuple(values.get("adam_betas", (0.9, 0.999)))
        for name in ("validation_prompts", "class_names"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)

    def accumulation(self, world: int) -> int:
        """Micro-batches per optimizer step on each of `world` ranks."""
        return self.batch // (self.micro_batch * world)

    def validate(self, world: int) -> TrainConfig:
        """Check values and the batch arithmetic for `world` ranks; returns self."""
        per_step = self.micro_batch * world
        if self.batch % per_step:
            raise ValueError(
                f"--batch {self.batch} must be a multiple of --micro-batch {self.micro_batch} x {world} ranks; "
                f"pick e.g. --batch {per_step * max(1, self.batch // per_step)}")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError(f"--caption-dropout must be in [0, 1), got {self.caption_dropout}")
        if self.images <= 0:
            raise ValueError("--images must be positive")
        if self.prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"--prediction must be epsilon or v_prediction, got {self.prediction_type!r}")
        if self.caption_mix is not None:
            check_caption_mix(self.caption_mix, list(self.data.get("captioners") or []))
        if self.timestep_sampling not in ("uniform", "lognormal"):
            raise ValueError(f"--timestep-sampling must be uniform or lognormal, got {self.timestep_sampling!r}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"--lr-schedule must be constant or cosine, got {self.lr_schedule!r}")
        self._validate_conditioning()
        return self

    def _validate_conditioning(self) -> None:
        from opencanvas.train.encoders import check_modes

        if self.conditioning not in CONDITIONING_MODES:
            raise ValueError(f"--conditioning must be one of {', '.join(CONDITIONING_MODES)}, "
                             f"got {self.conditioning!r}")
        for name in ("slot_dropout", "encoder_dropout", "image_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.image_tokens < 1:
            raise ValueError(f"--image-tokens must be >= 1, got {self.image_tokens}")
        check_modes(self.data, self.latents, self.conditioning, self.class_column, self.text_encoders)
        if self.conditioning == "multi-caption":
            if self.caption_mix is not None:
                raise ValueError("--caption-mix draws one caption per image and --conditioning multi-caption uses "
                                 "several at once: give one of them")
            caption_slots(self.data, self.max_captions)
        elif self.max_captions is not None:
            raise ValueError("--max-captions is for --conditioning multi-caption")
        if self.max_classes < 1:
            raise ValueError(f"--max-classes must be >= 1, got {self.max_classes}")
        if (self.class_column is None) != (self.class_names is None):
            raise ValueError("class_names is set from --class-column when a run starts, never on its own")


def check_known(options: dict[str, Any], cls: type = TrainConfig) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"unknown training option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")


def parse_caption_mix(text: str) -> dict[str, float]:
    """'metadata=0.05,blip2=0.95' -> {'metadata': 0.05, 'blip2': 0.95} (weights, not necessarily summing to 1)."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, value = (s.strip() for s in part.partition("="))
        try:
            weight = float(value) if eq and name else math.nan
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"bad --caption-mix part {part!r}: use CAPTIONER=WEIGHT with a weight >= 0, "
                             "e.g. metadata=0.05,blip2=0.95")
        if name in mix:
            raise ValueError(f"--caption-mix names {name!r} twice")
        mix[name] = weight
    if not mix:
        raise ValueError("empty --caption-mix: use e.g. metadata=0.05,blip2=0.95")
    return mix


def check_caption_mix(mix: dict[str, float], captioners: list[str]) -> None:
    """A mix must name only captioners of the latent set, with weights summing to a positive number."""
    unknown = sorted(set(mix) - set(captioners))
    if unknown:
        raise ValueError(f"--caption-mix names captioner(s) {', '.join(map(repr, unknown))} that the latent set "
                         f"does not have (it has {', '.join(captioners)}): re-encode with --captioners that include "
                         "them, or leave them out of the mix")
    if not sum(mix.values()) > 0:
        raise ValueError(f"--caption-mix weights {mix} sum to {sum(mix.values())}: give at least one positive weight")


def caption_mix_text(mix: dict[str, float]) -> str:
    """{'metadata': 0.05, 'blip2': 0.95} -> 'blip2 95%, metadata 5%' (shares of the total weight), for cards."""
    total = sum(mix.values())
    return ", ".join(f"{name} {weight / total:.0%}" for name, weight in sorted(mix.items(), key=lambda kv: -kv[1]))


def caption_weights(mix: dict[str, float] | None, captioners: list[str]) -> np.ndarray | None:
    """(K,) weight per captioner slot of the latent set (0 for one the mix leaves out); None for uniform."""
    if mix is None:
        return None
    check_caption_mix(mix, captioners)
    return np.array([mix.get(c, 0.0) for c in captioners], dtype=np.float64)


def caption_slots(data: dict[str, Any], max_captions: int | None) -> int:
    """The caption slots K of a multi-caption run on a latent set with `data["captioners"]`."""
    captioners = list(data.get("captioners") or [])
    if len(captioners) < 2:
        raise ValueError(f"--conditioning multi-caption needs a latent set with several captioners, this one has "
                         f"{', '.join(captioners) or 'none'}: re-encode with `opencanvas encode --captioners A,B`")
    if max_captions is None:
        return len(captioners)
    if not 1 <= max_captions <= len(captioners):
        raise ValueError(f"--max-captions {max_captions} must be in 1..{len(captioners)} (the latent set's "
                         f"captioners: {', '.join(captioners)})")
    return max_captions


def conditioned_unet(unet: dict[str, Any], conditioning: str, max_captions: int | None,
                     class_names: tuple[str, ...] | None, data: dict[str, Any], image_tokens: int = 4,
                     text_encoders: int = 0) -> dict[str, Any]:
    """The UNet config with everything a run's conditioning adds: class embeddings (N classes + the null
    class, diffusers `num_class_embeds`), the adapter's settings (per-slot caption embeddings, image
    tokens), and a second encoder's wider cross-attention and pooled input (opencanvas.train.encoders)."""
    from opencanvas.diffusion.conditioning import ADAPTER_KEY
    from opencanvas.train.encoders import encoder_unet  # torch, only when a run is configured

    unet = dict(unet)
    if class_names is not None:
        unet["num_class_embeds"] = len(class_names) + 1
    if conditioning == "multi-caption":
        unet[ADAPTER_KEY] = {"text_dim": int(data["text_dim"]), "slots": caption_slots(data, max_captions)}
    return encoder_unet(unet, data, conditioning, image_tokens, text_encoders)


def parse_resolutions(text: str) -> tuple[tuple[int, int], ...]:
    """'256,512@1000000' -> ((256, 0), (512, 1000000)): 512 px from one million images on."""
    phases: list[tuple[int, int]] = []
    for i, part in enumerate(p.strip() for p in text.split(",") if p.strip()):
        res, _, start = part.partition("@")
        try:
            phase = (int(res), int(start) if start else 0)
        except ValueError:
            raise ValueError(f"bad resolution schedule {text!r}: use e.g. '256' or '256,512@1000000'") from None
        if i == 0 and phase[1] != 0:
            raise ValueError(f"the first resolution of {text!r} must start at 0 images")
        if i > 0 and phase[1] <= phases[-1][1]:
            raise ValueError(f"resolution phases of {text!r} must start at increasing image counts (res@images)")
        phases.append(phase)
    if not phases:
        raise ValueError("empty resolution schedule")
    return tuple(phases)


def resolve_config(*, run: str, latents: str, preset: Preset, latent_meta: dict[str, Any],
                   resolutions: tuple[tuple[int, int], ...], images: int,
                   options: dict[str, Any], world: int = 1) -> TrainConfig:
    """Merge preset defaults, the latent set's shapes and user options into a TrainConfig."""
    reserved = {"run", "latents", "preset", "images", "unet", "resolutions"}
    bad = sorted(set(options) & reserved)
    if bad:
        raise ValueError(f"option(s) {bad} are set by their own arguments, not as options")
    check_known(options)
    options = {k: v for k, v in options.items() if v is not None}
    batch = options.pop("batch", preset.batch)
    micro_batch = options.pop("micro_batch", None) or max(1, batch // world)
    data = {k: latent_meta[k] for k in DATA_KEYS if k in latent_meta}
    unet = preset.unet.unet_config(int(latent_meta["latent_channels"]), int(latent_meta["text_dim"]),
                                   int(latent_meta["latent_size"]))
    cfg = TrainConfig(
        run=run, latents=latents, preset=preset.name, images=images, batch=batch, micro_batch=micro_batch,
        lr=options.pop("lr", preset.lr), warmup_images=options.pop("warmup_images", preset.warmup_images),
        ema_decay=options.pop("ema_decay", preset.ema_decay), parallel=options.pop("parallel", preset.parallel),
        unet=unet, resolutions=resolutions, data=data, **options,
    )
    cfg._validate_conditioning()  # before the UNet config reads the slots and the latent set's extra dimensions
    return dataclasses.replace(cfg, unet=conditioned_unet(unet, cfg.conditioning, cfg.max_captions, cfg.class_names,
                                                          data, cfg.image_tokens, cfg.text_encoders))


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Fields that differ between a stored and a new config and may not change on resume.

    A field newer than the stored config counts as its default there (a run from before it resumes).
    """
    defaults = {f.name: json.loads(json.dumps(f.default)) for f in dataclasses.fields(TrainConfig)
                if f.default is not dataclasses.MISSING}
    return {k: (old.get(k, defaults.get(k)), new.get(k)) for k in sorted(set(old) | set(new))
            if k not in RESUMABLE_CHANGES and old.get(k, defaults.get(k)) != new.get(k)}
