"""Sampling throughput: images/s and s/image per sampler and step count, with classifier-free guidance.

Times the guided sampling loop (CFG doubles the UNet batch; Heun makes two UNet
calls per step) on a UNet of a training preset with random weights and random
text embeddings; VAE decode and text encoding are excluded (they run once per
image, not per step). Wall time and process CPU time are both recorded because
the sandbox's cores are shared with other jobs.

CPU, tiny preset (64 px images = 8x8x4 latents):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sample_throughput.py --batch 4
GPU, sd2-base at 512 px (64x64x4 latents), bf16, SDPA, channels-last, torch.compile:
    .venv/bin/python benchmarks/sample_throughput.py --preset sd2-base --device cuda --bf16 --compile \\
        --channels-last --latent-size 64 --text-dim 1024 --text-len 77 --batch 1,8
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.diffusion.guidance import CFGDenoiser
from opencanvas.diffusion.samplers import CALLS_PER_STEP, SAMPLERS, get_sigmas, initial_noise_scale
from opencanvas.train.presets import build_unet, get_preset


def build_denoiser(args: argparse.Namespace) -> Denoiser:
    cfg = get_preset(args.preset).unet.unet_config(latent_channels=4, text_dim=args.text_dim,
                                                   latent_size=args.latent_size)
    unet = build_unet(cfg).eval().requires_grad_(False)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    unet = unet.to(args.device, dtype)
    if args.channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    unet.set_attn_processor(AttnProcessor2_0())  # torch SDPA attention
    if args.compile:
        unet = torch.compile(unet, mode="max-autotune-no-cudagraphs", fullgraph=False)
    return Denoiser(unet, NoiseSchedule(), "epsilon").to(args.device)


def time_sampler(denoiser: Denoiser, name: str, steps: int, batch: int, args: argparse.Namespace) -> dict:
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(batch, args.text_len, args.text_dim, generator=g).to(args.device)   # (B, L, D)
    uncond = torch.zeros_like(cond)
    sigmas = get_sigmas(denoiser, steps, "leading").to(args.device)
    shape = (batch, 4, args.latent_size, args.latent_size)
    model = CFGDenoiser(denoiser, args.guidance)
    extra = {"cond": cond, "cond_mask": None, "uncond": uncond, "uncond_mask": None}

    def once() -> None:
        x = torch.randn(shape, generator=g).to(args.device) * initial_noise_scale(sigmas)
        SAMPLERS[name](model, x, sigmas, extra_args=extra)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    best_wall, cpu = float("inf"), 0.0
    for _ in range(args.repeats):
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        once()
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        if wall < best_wall:
            best_wall, cpu = wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    # Model calls per image: steps * calls/step, minus Heun's single-call last step.
    calls = steps * CALLS_PER_STEP[name] - (1 if name == "heun" else 0)
    return {"sampler": name, "steps": steps, "batch": batch, "unet_calls_per_image": calls,
            "images_per_s": round(batch / best_wall, 2), "s_per_image": round(best_wall / batch, 4),
            "cpu_s_per_image": round(cpu / batch, 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="UNet preset of opencanvas.train.presets")
    p.add_argument("--device", default="cpu")
    p.add_argument("--latent-size", type=int, default=8, help="latent side (image side / 8 for SD VAEs)")
    p.add_argument("--text-dim", type=int, default=32)
    p.add_argument("--text-len", type=int, default=8)
    p.add_argument("--batch", default="8", help="comma-separated batch sizes")
    p.add_argument("--steps", default="10,25,50")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--repeats", type=int, default=1, help="timed runs per case; the fastest counts")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--channels-last", action="store_true")
    args = p.parse_args()
    torch.manual_seed(0)
    denoiser = build_denoiser(args)
    rows = []
    with torch.inference_mode():
        for batch in [int(b) for b in args.batch.split(",")]:  # warm-up (compile, allocator, caches)
            time_sampler(denoiser, "euler", 2, batch, args)
        for batch in [int(b) for b in args.batch.split(",")]:
            for steps in [int(s) for s in args.steps.split(",")]:
                for name in args.samplers.split(","):
                    rows.append(time_sampler(denoiser, name, steps, batch, args))
                    print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"preset": args.preset, "device": args.device, "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "machine": platform.machine(), "guidance": args.guidance,
                      "latent": [4, args.latent_size, args.latent_size]}))


if __name__ == "__main__":
    main()
