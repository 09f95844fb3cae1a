"""Text-to-image generation: prompts -> noise -> guided sampler -> VAE decode.

Works on anything with the `InferencePipeline` interface of `opencanvas.train`
(`.denoiser`, `.encode_prompts`, `.latent_shape`, `.decode`): a training
run (`load_pipeline`) or an exported diffusers folder (`loading.load_folder_pipeline`).

Determinism: an image gets the noise of `torch.Generator().manual_seed(its seed)`,
drawn on the CPU, so an image depends on its seed only, never on the batch
size, the batch it landed in or the device.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from opencanvas.diffusion.conditioning import Conditioning
from opencanvas.diffusion.distilled import GuidedStudent, distilled_sigmas
from opencanvas.diffusion.guidance import CFGDenoiser
from opencanvas.diffusion.image_conditioning import TextImageCFGDenoiser
from opencanvas.diffusion.samplers import Spacing, get_sampler, get_sigmas, initial_noise_scale
from opencanvas.storage import atomic_write_bytes

GRID_MAX = 64  # images on the contact sheet


class SamplingPipeline(Protocol):
    """What generation needs from a model (a subset of `opencanvas.train.InferencePipeline`)."""

    denoiser: Any            # opencanvas.diffusion.denoiser.Denoiser
    config: dict
    weights_hash: str

    def conditioning(self, prompts: list[str], class_name: str | None = None, *,
                     image: torch.Tensor | None = None) -> Conditioning: ...

    def image_embedding(self, path: Path) -> torch.Tensor: ...

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]: ...

    def decode(self, latents: torch.Tensor) -> list[Image.Image]: ...


@dataclass(frozen=True)
class SampleSettings:
    """Everything besides prompt and seed that decides an image (written into its PNG)."""

    steps: int = 25
    guidance: float = 7.5
    guidance_rescale: float = 0.0
    sampler: str = "dpmpp-2m"
    spacing: Spacing = "leading"
    negative_prompt: str = ""
    width: int = 256
    height: int = 256
    class_name: str | None = None  # a class-conditioned run's class (None: the null class)
    # A reference image (image variations) for a run trained with --conditioning text+image, guided with its
    # own scale: opencanvas.diffusion.image_conditioning.TextImageCFGDenoiser.
    image: str | None = None
    image_guidance: float = 3.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SampleSpec:
    """One image to make."""

    index: int
    prompt: str
    seed: int


def plan(prompts: Sequence[str], n: int, seed: int) -> list[SampleSpec]:
    """n images per prompt, prompt-major; the seeds restart for every prompt: image j of each prompt has
    seed `seed + j`, so adding, removing or reordering prompts never changes another prompt's images."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not prompts:
        raise ValueError("no prompts: give at least one prompt (an empty string samples unconditionally)")
    return [SampleSpec(i * n + j, p, seed + j) for i, p in enumerate(prompts) for j in range(n)]


def initial_noise(shape: tuple[int, int, int], seeds: Sequence[int]) -> torch.Tensor:
    """Unit Gaussian noise (B, C, h, w), one CPU generator per seed."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def _device(pipeline: SamplingPipeline) -> torch.device:
    return next(pipeline.denoiser.parameters()).device


@torch.no_grad()
def sample_latents(pipeline: SamplingPipeline, prompts: Sequence[str], seeds: Sequence[int],
                   settings: SampleSettings, on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """One batch: normalised latents (B, C, h, w) for prompts[i] with seeds[i]; `on_step` after each
    denoising step (for progress)."""
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds differ in length")
    device = _device(pipeline)
    # The pipeline decides what the UNet sees (a text mask or not, class labels...): it must match training.
    image = None if settings.image is None else pipeline.image_embedding(Path(settings.image))  # (1, E)
    cond = pipeline.conditioning(list(prompts), settings.class_name, image=image).to(device)  # text (B, L, D), ...
    # Unconditional: every field at its null value together (the negative prompt, the null class), as trained.
    uncond = pipeline.conditioning([settings.negative_prompt] * len(prompts)).to(device)
    distilled = (getattr(pipeline, "config", None) or {}).get("distilled")
    model: torch.nn.Module
    sampler = settings.sampler
    if distilled:  # a guidance-distilled student: one UNet call per step on its own DDIM grid
        sigmas = distilled_sigmas(pipeline.denoiser, int(distilled["base_steps"]), int(distilled["steps"]),
                                  settings.steps).to(device)
        model, sampler = GuidedStudent(pipeline.denoiser, settings.guidance), "ddim"
    else:
        sigmas = get_sigmas(pipeline.denoiser, settings.steps, settings.spacing).to(device)
        model = CFGDenoiser(pipeline.denoiser, settings.guidance, settings.guidance_rescale)
    extra = {"cond": cond, "uncond": uncond}
    if image is not None:  # text and image guided with their own scales (InstructPix2Pix's Eq. 3)
        if distilled:
            raise ValueError("--image needs a run trained with --conditioning text+image, not a distilled student")
        model = TextImageCFGDenoiser(pipeline.denoiser, settings.guidance, settings.image_guidance)
        extra["image_cond"] = pipeline.conditioning([settings.negative_prompt] * len(prompts), image=image).to(device)
    shape = pipeline.latent_shape(settings.height, settings.width)          # (C, h, w)
    x = initial_noise(shape, seeds).to(device) * initial_noise_scale(sigmas)
    callback = None if on_step is None else (lambda i, sigma, denoised: on_step())
    return get_sampler(sampler)(model, x, sigmas, extra_args=extra, callback=callback)


def generate_specs(pipeline: SamplingPipeline, specs: Sequence[SampleSpec], settings: SampleSettings,
                   batch_size: int = 8, on_batch: Callable[[list[SampleSpec], list[Image.Image]], None] | None = None,
                   keep: bool = True, on_step: Callable[[], None] | None = None) -> list[Image.Image]:
    """Images for `specs`, batched; `on_batch` sees each finished batch (to save as it goes), `on_step`
    each denoising step of a batch.

    keep=False returns nothing, so a long run that saves as it goes holds one batch in memory.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    images: list[Image.Image] = []
    for start in range(0, len(specs), batch_size):
        batch = list(specs[start:start + batch_size])
        latents = sample_latents(pipeline, [s.prompt for s in batch], [s.seed for s in batch], settings, on_step)
        decoded = pipeline.decode(latents)
        if on_batch is not None:
            on_batch(batch, decoded)
        if keep:
            images.extend(decoded)
    return images


def generate(pipeline: SamplingPipeline, prompts: Sequence[str], n: int = 1, steps: int = 25,
             guidance: float = 7.5, sampler: str = "dpmpp-2m", seed: int = 0, negative_prompt: str = "",
             size: tuple[int, int] | None = None, guidance_rescale: float = 0.0, batch_size: int = 8,
             spacing: Spacing | None = None) -> list[Image.Image]:
    """n images per prompt (prompt-major order); size is (width, height), default the model's resolution;
    spacing defaults to `default_spacing`."""
    width, height = size or default_size(pipeline)
    settings = SampleSettings(steps=steps, guidance=guidance, guidance_rescale=guidance_rescale, sampler=sampler,
                              spacing=spacing or default_spacing(pipeline), negative_prompt=negative_prompt,
                              width=width, height=height)
    return generate_specs(pipeline, plan(prompts, n, seed), settings, batch_size=batch_size)


def default_spacing(pipeline: SamplingPipeline) -> Spacing:
    """trailing for zero-terminal-SNR schedules (so the first step is at the pure-noise timestep,
    Lin et al. 2023, Sec. 3.3), else SD's leading."""
    return "trailing" if pipeline.denoiser.schedule.zero_terminal_snr else "leading"


DEFAULT_STEPS = 25


def default_steps(pipeline: SamplingPipeline) -> int:
    """A guidance-distilled student's own step count (it was distilled for exactly that), else 25."""
    distilled = (getattr(pipeline, "config", None) or {}).get("distilled")
    return int(distilled["steps"]) if distilled else DEFAULT_STEPS


def model_sampler(pipeline: SamplingPipeline, sampler: str) -> str:
    """The sampler that actually runs: a distilled student always steps its own DDIM grid."""
    return "ddim" if (getattr(pipeline, "config", None) or {}).get("distilled") else sampler


def default_size(pipeline: SamplingPipeline) -> tuple[int, int]:
    """The resolution the model trained at last (run config `resolutions`: [(res, from_images), ...])."""
    phases = pipeline.config.get("resolutions")
    res = phases[-1][0] if phases else pipeline.config.get("resolution", 256)
    return int(res), int(res)


def sample_metadata(spec: SampleSpec, settings: SampleSettings, model: str, weights_hash: str,
                    provenance: dict[str, str]) -> dict[str, Any]:
    """The PNG metadata of one image (see pngmeta.REQUIRED_KEYS)."""
    return {"prompt": spec.prompt, "negative_prompt": settings.negative_prompt, "seed": spec.seed,
            "sampler": settings.sampler, "steps": settings.steps, "guidance": settings.guidance,
            "guidance_rescale": settings.guidance_rescale, "spacing": settings.spacing,
            "size": f"{settings.width}x{settings.height}", "model": model, "weights_hash": weights_hash,
            "license_policy": provenance.get("license_policy", "unknown"),
            "catalog_hash": provenance.get("catalog_hash", "unknown"),
            **({} if settings.class_name is None else {"class": settings.class_name})}


def sample_to_dir(pipeline: SamplingPipeline, specs: Sequence[SampleSpec], settings: SampleSettings, out: Path,
                  model: str, provenance: dict[str, str], batch_size: int = 8, fmt: str = "png") -> list[Path]:
    """Write `<index>-s<seed>.png` (or .jpg/.webp by `fmt`) per spec (with metadata, marked) and `grid.png`
    (the first GRID_MAX); resumable.

    An existing PNG whose metadata matches is kept, so a killed run re-run with
    the same command only makes what is missing.
    """
    from opencanvas.progress import progress_bar
    from opencanvas.sample.grid import contact_sheet
    from opencanvas.sample.pngmeta import IMAGE_FORMATS, read_image_meta, save_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {s.index: out / f"{s.index:05d}-s{s.seed}.{IMAGE_FORMATS[fmt]}" for s in specs}
    metas = {s.index: sample_metadata(s, settings, model, pipeline.weights_hash, provenance) for s in specs}

    def done(spec: SampleSpec) -> bool:
        path = paths[spec.index]
        try:
            return path.exists() and read_image_meta(path) == metas[spec.index]
        except (ValueError, OSError):
            return False

    todo = [s for s in specs if not done(s)]
    with progress_bar() as bar:
        # Counted in denoising steps: a batch of images is one long wait, its steps are not.
        batches = -(-len(todo) // batch_size)
        task = bar.add_task(f"sample 0/{len(todo)} images", total=batches * settings.steps, unit="step")
        saved = 0

        def save(batch: list[SampleSpec], images: list[Image.Image]) -> None:
            nonlocal saved
            for spec, image in zip(batch, images, strict=True):
                save_image(paths[spec.index], image, metas[spec.index])
            saved += len(batch)
            bar.update(task, description=f"sample {saved}/{len(todo)} images")

        generate_specs(pipeline, todo, settings, batch_size=batch_size, on_batch=save, keep=False,
                       on_step=lambda: bar.advance(task))
    shown = specs[:GRID_MAX]
    images = [Image.open(paths[s.index]).convert("RGB") for s in shown]
    sheet = contact_sheet(images, [f"{s.prompt} (seed {s.seed})" for s in shown])
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(out / "grid.png", buf.getvalue())
    return [paths[s.index] for s in specs]
