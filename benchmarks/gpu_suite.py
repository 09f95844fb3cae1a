"""The GPU suite: every GPU figure of the project in one call of at most 8 minutes on one H100/H200.

GPU time comes in short, rare slots, so one prepared run measures, with random weights on models built
from configs at their real sizes (the arithmetic equals the trained models'; nothing is downloaded):

- UNet training (sd2-base, 865M) images/s, peak memory and MFU at 256 and 512 px: the recipe (bf16,
  SDPA, low-precision norms, channels-last, fused AdamW, torch.compile) against naive fp32, side by side;
- SD2-size autoencoder (AutoencoderKL 128-256-512-512) encode images/s at 512 px;
- BLIP-2 OPT-2.7B-size captioning images/s at batch 64 (30 new tokens, bf16, SDPA);
- dpmpp-2m sampling images/s (25 steps, classifier-free guidance, 512 px);
- MFU from a FLOP count (torch's FlopCounterMode, x3 for training) over the device's dense bf16 peak.

Sections run in the order UNet 256 px, autoencoder, captioning, sampling, UNet 512 px (the cheap ones
before the larger compile), and the report is rewritten after each one, so a run cut short still leaves
every finished figure; a section that fails is reported with its error and the rest go on; sections that
would start after --budget-s are skipped.
`--dry-run` runs the same code on CPU with tiny sizes (the test suite does, in well under a minute).

    bash benchmarks/gpu_suite.sh                 # on the GPU machine: benchmarks/results/gpu-<date>.md
    bash benchmarks/gpu_suite.sh --dry-run --out /tmp/suite
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the single-purpose benchmarks this suite reuses

import caption_throughput  # noqa: E402
import sample_throughput  # noqa: E402
import train_throughput  # noqa: E402
from opencanvas.storage import atomic_write_text  # noqa: E402
from opencanvas.train.metrics import memory_gb, peak_flops, train_flops_per_image  # noqa: E402
from opencanvas.train.recipe import autocast, resolve_recipe  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the real run and the CPU dry run."""

    unet_preset: str
    train: tuple[tuple[int, int], tuple[int, int]]  # (image side in px, batch): the two resolutions
    train_warmup: int                        # untimed steps (compilation happens here)
    train_steps: int                         # timed steps
    text_len: int
    text_dim: int
    vae_blocks: tuple[int, ...]              # AutoencoderKL block_out_channels
    vae_groups: int                          # GroupNorm groups (32 in SD's VAE)
    encode_side: int
    encode_batch: int
    caption_batch: int
    caption_tokens: int
    sample_side: int
    sample_batch: int
    sample_steps: int
    repeats: int                             # timed repeats where a median or best is taken


FULL = Sizes(unet_preset="sd2-base", train=((256, 64), (512, 16)), train_warmup=2, train_steps=5,
             text_len=77, text_dim=1024, vae_blocks=(128, 256, 512, 512), vae_groups=32, encode_side=512,
             encode_batch=32, caption_batch=64, caption_tokens=30, sample_side=512, sample_batch=8,
             sample_steps=25, repeats=2)
DRY = Sizes(unet_preset="tiny", train=((32, 2), (64, 2)), train_warmup=1, train_steps=1, text_len=8, text_dim=32,
            vae_blocks=(8, 16), vae_groups=8, encode_side=32, encode_batch=2, caption_batch=2, caption_tokens=3,
            sample_side=32, sample_batch=1, sample_steps=3, repeats=1)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sig(x: float) -> float:
    """Three significant digits, so that tiny dry-run figures are not rounded to 0."""
    return float(f"{x:.3g}")


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---- sections -------------------------------------------------------------------------------------

def unet_training(sizes: Sizes, device: torch.device, compile_unet: bool, side: int,
                  batch: int) -> list[dict[str, Any]]:
    """UNet training steps on random latents and text embeddings at one resolution, naive fp32 vs the recipe."""
    rows = []
    for path in ("naive", "recipe"):
        recipe = train_throughput.NAIVE if path == "naive" else \
            resolve_recipe(device, compile=compile_unet and device.type == "cuda")
        reset_memory(device)
        try:
            rows.append({"px": side, "batch": batch, "path": path, **train_path(sizes, device, recipe, side, batch)})
        except torch.cuda.OutOfMemoryError:
            rows.append({"px": side, "batch": batch, "path": path, "error": "out of memory"})
        reset_memory(device)
    return rows


def train_path(sizes: Sizes, device: torch.device, recipe: Any, side: int, batch: int) -> dict[str, Any]:
    latent = side // 8
    denoiser, opt = train_throughput.make_trainer(sizes.unet_preset, recipe, device, latent, sizes.text_dim)

    def loss_fn(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return denoiser.loss(x0, noise, t, text, None, 5.0)

    loss = torch.compile(loss_fn) if recipe.compile else loss_fn
    x0 = torch.randn(batch, 4, latent, latent, device=device)  # (B, 4, H/8, W/8): precomputed latents
    text = torch.randn(batch, sizes.text_len, sizes.text_dim, device=device)  # (B, L, D)
    t0 = time.perf_counter()
    for _ in range(sizes.train_warmup):
        train_throughput.step(denoiser, opt, recipe, device, x0, text, loss)
    sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(sizes.train_steps):
        train_throughput.step(denoiser, opt, recipe, device, x0, text, loss)
    sync(device)
    wall = time.perf_counter() - t0
    rate = batch * sizes.train_steps / wall
    with autocast(device, recipe):
        flops = train_flops_per_image(denoiser.unet, (4, latent, latent), (sizes.text_len, sizes.text_dim), device)
    peak = peak_flops(device, True)  # MFU against the bf16 peak for both paths: the hardware's best
    return {"images_per_s": round(rate, 2), "s_per_step": round(wall / sizes.train_steps, 3),
            "warmup_s": round(warmup_s, 1), "peak_gib": round(memory_gb(device), 1),
            "train_tflop_per_image": sig(flops / 1e12), "tflop_per_s": sig(flops * rate / 1e12),
            "mfu": round(flops * rate / peak, 3) if peak else None,
            "recipe": ",".join(k for k, v in recipe.to_dict().items() if v) or "fp32 eager"}


def autoencoder_encode(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """SD2-size AutoencoderKL encoder: images/s for the latent mean and std (what `opencanvas encode` stores)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    n = len(sizes.vae_blocks)
    vae = AutoencoderKL(block_out_channels=sizes.vae_blocks, down_block_types=("DownEncoderBlock2D",) * n,
                        up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=2, latent_channels=4,
                        norm_num_groups=sizes.vae_groups)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    vae = vae.to(device, dtype).eval().requires_grad_(False)
    if device.type == "cuda":
        vae = vae.to(memory_format=torch.channels_last)
    pixels = torch.rand(sizes.encode_batch, 3, sizes.encode_side, sizes.encode_side, device=device, dtype=dtype)
    reset_memory(device)
    rates = []
    with torch.inference_mode():
        for i in range(sizes.repeats + 1):
            t0 = time.perf_counter()
            dist = vae.encode(pixels).latent_dist
            _ = dist.mean, dist.std  # (B, 4, H/8, W/8) each
            sync(device)
            if i:  # the first call warms up kernels and the allocator
                rates.append(sizes.encode_batch / (time.perf_counter() - t0))
    return [{"px": sizes.encode_side, "batch": sizes.encode_batch, "dtype": str(dtype).removeprefix("torch."),
             "params_m": sig(sum(p.numel() for p in vae.encoder.parameters()) / 1e6),
             "images_per_s": round(max(rates), 1), "peak_gib": round(memory_gb(device), 1)}]


def captioning(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """BLIP-2 generate() at a fixed number of new tokens (caption_throughput's `full` and `tiny` modes)."""
    if device.type == "cuda":
        args = argparse.Namespace(device=str(device), dtype="bf16", text_model="opt-2.7b",
                                  batch_sizes=[sizes.caption_batch], new_tokens=sizes.caption_tokens,
                                  repeats=sizes.repeats)
        return caption_throughput.bench_full(args)
    args = argparse.Namespace(threads=torch.get_num_threads(), batch_sizes=[sizes.caption_batch],
                              new_tokens=sizes.caption_tokens, repeats=sizes.repeats)
    return caption_throughput.bench_tiny(args)


def sampling(sizes: Sizes, device: torch.device) -> list[dict[str, Any]]:
    """dpmpp-2m with classifier-free guidance on the sd2-base UNet (sample_throughput's loop)."""
    cuda = device.type == "cuda"
    args = argparse.Namespace(preset=sizes.unet_preset, device=str(device), latent_size=sizes.sample_side // 8,
                              text_dim=sizes.text_dim, text_len=sizes.text_len, guidance=7.5,
                              repeats=sizes.repeats, bf16=cuda, compile=False, channels_last=cuda)
    torch.manual_seed(0)
    denoiser = sample_throughput.build_denoiser(args)
    reset_memory(device)
    with torch.inference_mode():
        sample_throughput.time_sampler(denoiser, "dpmpp-2m", 2, sizes.sample_batch, args)  # warm-up
        row = sample_throughput.time_sampler(denoiser, "dpmpp-2m", sizes.sample_steps, sizes.sample_batch, args)
    return [{"px": sizes.sample_side, **row, "dtype": "bf16" if cuda else "fp32",
             "peak_gib": round(memory_gb(device), 1)}]


# ---- the report -----------------------------------------------------------------------------------

def environment(device: torch.device) -> dict[str, Any]:
    import diffusers
    import transformers

    env = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "device": str(device),
           "python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
           "transformers": transformers.__version__}
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   bf16_peak_tflops=(peak_flops(device, True) or 0) / 1e12)
    return env


def markdown(title: str, env: dict[str, Any], sizes: Sizes, sections: dict[str, dict[str, Any]]) -> str:
    lines = [f"# {title}", "", "Written by `benchmarks/gpu_suite.sh` (benchmarks/gpu_suite.py); random weights, "
             "real architectures.", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in env.items()]
    lines += ["", f"Sizes: `{json.dumps(asdict(sizes))}`", ""]
    for name, section in sections.items():
        lines += [f"## {name}", "", section["what"], ""]
        if "error" in section:
            lines += [f"Failed after {section['seconds']:.0f} s: `{section['error']}`", ""]
            continue
        rows = section["rows"]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
        lines += ["", f"({section['seconds']:.0f} s)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: checks the code, not the speed")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for gpu-<date>.md and .json (default: benchmarks/results; dry run: a temp dir)")
    parser.add_argument("--budget-s", type=float, default=450.0,
                        help="sections that would start after this many seconds are skipped (the script's "
                             "own timeout is 480 s)")
    parser.add_argument("--no-compile", action="store_true", help="the recipe without torch.compile (faster start)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU visible to torch: run on the GPU machine, or pass --dry-run")
    sizes = DRY if args.dry_run else FULL
    if args.dry_run:
        torch.set_num_threads(1)
    default_out = Path(os.environ.get("TMPDIR", "/tmp")) / "opencanvas-gpu-suite" if args.dry_run else \
        Path(__file__).resolve().parent / "results"
    out = args.out or default_out
    stem = f"gpu-{'dry-run-' if args.dry_run else ''}{datetime.now(UTC):%Y-%m-%d}"
    env = environment(device)
    compile_unet = not args.no_compile
    training = (f"{sizes.unet_preset} UNet, one optimizer step per batch on random latents and text embeddings; "
                "naive = fp32, classic attention, per-tensor AdamW, eager. MFU over the dense bf16 peak.")
    (low, low_batch), (high, high_batch) = sizes.train
    # Cheap sections sit between the two resolutions: a slow compile at the larger one cannot cost them.
    plan: list[tuple[str, str, Callable[[], list[dict[str, Any]]]]] = [
        (f"UNet training, {low} px", training, lambda: unet_training(sizes, device, compile_unet, low, low_batch)),
        ("Autoencoder encode", "SD2-size AutoencoderKL encoder (mean and std of the posterior).",
         lambda: autoencoder_encode(sizes, device)),
        ("Captioning", f"BLIP-2 generate(), exactly {sizes.caption_tokens} new tokens per image "
         "(OPT-2.7B language model on the GPU; the tiny BLIP-2 in a dry run).",
         lambda: captioning(sizes, device)),
        ("Sampling", f"dpmpp-2m, {sizes.sample_steps} steps, CFG 7.5 (two UNet passes per step), "
         "VAE decode and text encoding excluded.", lambda: sampling(sizes, device)),
        (f"UNet training, {high} px", training, lambda: unet_training(sizes, device, compile_unet, high, high_batch)),
    ]
    sections: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    for name, what, run in plan:
        if time.perf_counter() - start > args.budget_s:
            sections[name] = {"what": what, "error": f"skipped: past the {args.budget_s:.0f} s budget", "seconds": 0}
            continue
        t0 = time.perf_counter()
        try:
            sections[name] = {"what": what, "rows": run()}
        except Exception as e:  # noqa: BLE001 -- one failed section must not lose the others' figures
            sections[name] = {"what": what, "error": f"{type(e).__name__}: {e}"[:500]}
        sections[name]["seconds"] = time.perf_counter() - t0
        reset_memory(device)
        print(json.dumps({"section": name, **sections[name]}, default=str), flush=True)
        out.mkdir(parents=True, exist_ok=True)
        title = f"GPU suite{' (dry run, CPU, tiny sizes)' if args.dry_run else ''}, {env['date'][:10]}"
        atomic_write_text(out / f"{stem}.md", markdown(title, env, sizes, sections))
        atomic_write_text(out / f"{stem}.json", json.dumps({"env": env, "sizes": asdict(sizes),
                                                             "sections": sections}, indent=1, default=str))
    print(f"wrote {out / stem}.md in {time.perf_counter() - start:.0f} s")
    if any("error" in s for s in sections.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
