"""Training images/s: the naive path vs the efficient recipe, same UNet and data, one process.

naive:  fp32, classic attention processor, every step encodes the images with the
        autoencoder and the captions with the text encoder, plain (per-tensor) AdamW, eager.
recipe: precomputed latent mean/std and text embeddings (opencanvas encode), the
        z = mean + std * eps draw at train time, SDPA attention, fused AdamW, and
        where the device supports them bf16 autocast, low-precision norms,
        channels-last and torch.compile (opencanvas.train.recipe decides).

The autoencoder and text encoder have the real SD2 architectures (AutoencoderKL
128-256-512-512; OpenCLIP ViT-H text tower, 23 layers x 1024) with random
weights: their cost is what matters here, not their outputs. MFU is printed where
the device's peak is known (GPUs); elsewhere achieved UNet TFLOP/s.

    # CPU (what benchmarks/results/train.md reports)
    python benchmarks/train_throughput.py --preset small --resolution 128 --batch 8 --steps 3
    # one H100 (not measured in this sandbox)
    python benchmarks/train_throughput.py --device cuda --preset sd2-base --resolution 256 --batch 128 --steps 20
    python benchmarks/train_throughput.py --device cuda --preset sd2-base --resolution 512 --batch 32 --steps 20
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.train.metrics import peak_flops, train_flops_per_image
from opencanvas.train.presets import build_unet, get_preset
from opencanvas.train.recipe import Recipe, apply_recipe, autocast, make_optimizer, resolve_recipe, to_memory_format

NAIVE = Recipe(bf16=False, sdpa=False, low_precision_norms=False, channels_last=False, fused_adamw=False,
               compile=False)
SD_SCALE = 0.18215


def sd2_autoencoder(device: torch.device) -> Any:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
    return vae.to(device).eval().requires_grad_(False)


def sd2_text_encoder(device: torch.device, layers: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu")
    return CLIPTextModel(cfg).to(device).eval().requires_grad_(False)


def make_trainer(preset: str, recipe: Recipe, device: torch.device, latent: int,
                 text_dim: int = 1024) -> tuple[Denoiser, Any]:
    unet = build_unet(get_preset(preset).unet.unet_config(4, text_dim, latent))
    apply_recipe(unet, recipe)
    denoiser = Denoiser(unet.to(device), NoiseSchedule()).to(device)
    opt = make_optimizer(unet.parameters(), recipe, lr=1e-4, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    return denoiser, opt


def step(denoiser: Denoiser, opt: Any, recipe: Recipe, device: torch.device, x0: torch.Tensor,
         text: torch.Tensor, loss_fn: Any) -> None:
    b = x0.shape[0]
    noise = torch.randn_like(x0)
    t = torch.randint(0, 1000, (b,), device=device)
    with autocast(device, recipe):
        loss = loss_fn(to_memory_format(x0, recipe), to_memory_format(noise, recipe), t, text).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(denoiser.unet.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_path(name: str, args: argparse.Namespace, device: torch.device, recipe: Recipe, pixels: torch.Tensor,
             ids: torch.Tensor, vae: Any, te: Any) -> dict[str, Any]:
    latent = args.resolution // 8
    denoiser, opt = make_trainer(args.preset, recipe, device, latent)

    def loss_fn(x0, noise, t, text):
        return denoiser.loss(x0, noise, t, text, None, 5.0)

    if recipe.compile:
        loss_fn = torch.compile(loss_fn)
    if name == "naive":  # (naive-precomputed: the naive kernels on precomputed inputs, an ablation)
        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            with torch.no_grad():
                z = vae.encode(pixels).latent_dist.sample() * SD_SCALE  # (B, 4, H/8, W/8)
                text = te(ids).last_hidden_state  # (B, 77, 1024)
            return z, text
    else:  # precomputed once, as `opencanvas encode` does; only the posterior draw remains
        with torch.no_grad():
            dist = vae.encode(pixels).latent_dist
            mean, std = dist.mean.half(), dist.std.half()
            text_pre = te(ids).last_hidden_state.half()

        def batch() -> tuple[torch.Tensor, torch.Tensor]:
            z = (mean.float() + std.float() * torch.randn(mean.shape, device=device)) * SD_SCALE
            return z, text_pre.float()

    for _ in range(args.warmup):
        step(denoiser, opt, recipe, device, *batch(), loss_fn)
    sync(device)
    inputs_s = 0.0  # time spent making the UNet's inputs (the encoders, on the naive path)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        t_in = time.perf_counter()
        x0, text = batch()
        sync(device)
        inputs_s += time.perf_counter() - t_in
        step(denoiser, opt, recipe, device, x0, text, loss_fn)
    sync(device)
    wall = time.perf_counter() - t0
    rate = args.batch * args.steps / wall
    with autocast(device, recipe):
        flops = train_flops_per_image(denoiser.unet, (4, latent, latent), (77, 1024), device)
    peak = peak_flops(device, recipe.bf16)
    return {"path": name, "images_per_s": round(rate, 2), "seconds_per_step": round(wall / args.steps, 3),
            "input_seconds_per_step": round(inputs_s / args.steps, 3),
            "unet_train_gflops_per_image": round(flops / 1e9, 2), "tflops": round(flops * rate / 1e12, 4),
            "mfu": round(flops * rate / peak, 4) if peak else None, "recipe": recipe.to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="UNet preset (small on CPU, sd2-base on a GPU)")
    parser.add_argument("--resolution", type=int, default=128, help="image side in pixels (latents are /8)")
    parser.add_argument("--batch", type=int, default=8, help="images per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per path")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per path (compile happens here)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--text-layers", type=int, default=23, help="text encoder depth (SD2: 23 of ViT-H's 24)")
    parser.add_argument("--paths", default="naive,recipe",
                        help="comma-separated: naive, recipe, naive-precomputed (naive kernels, precomputed inputs)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    vae, te = sd2_autoencoder(device), sd2_text_encoder(device, args.text_layers)
    pixels = torch.rand(args.batch, 3, args.resolution, args.resolution, device=device) * 2 - 1
    ids = torch.randint(0, 49408, (args.batch, 77), device=device)
    results = []
    for name in args.paths.split(","):
        recipe = NAIVE if name.startswith("naive") else resolve_recipe(device)
        results.append(run_path(name, args, device, recipe, pixels, ids, vae, te))
        print(json.dumps(results[-1]))
    by = {r["path"]: r for r in results}
    if {"naive", "recipe"} <= set(by):
        ratio = by["recipe"]["images_per_s"] / by["naive"]["images_per_s"]
        print(json.dumps({"device": str(device), "preset": args.preset, "resolution": args.resolution,
                          "batch": args.batch, "recipe_over_naive": round(ratio, 2)}))
    if {"naive-precomputed", "recipe"} <= set(by):
        ratio = by["recipe"]["images_per_s"] / by["naive-precomputed"]["images_per_s"]
        print(json.dumps({"recipe_over_naive_precomputed": round(ratio, 2)}))


if __name__ == "__main__":
    main()
