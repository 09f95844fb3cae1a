"""Caption throughput: images/s vs batch size, loader decode rate, and the end-to-end stage.

Modes (each prints a Markdown table; --json writes the numbers):

    tiny    tiny BLIP-2 (random weights, 224 px ViT input) on CPU: generate() images/s vs batch size
    loader  background decoding: 1024x768 JPEG -> center-crop 512 -> BLIP processor, images/s vs workers
    stage   `caption()` end to end on a synthetic subset with the tiny BLIP-2 (loader + model + Parquet)
    full    the paper's architecture: transformers' default Blip2Config vision + Q-Former (ViT-g/14, 224 px)
            with OPT-2.7B as the language model (the default text config is only OPT-125M-sized), random
            weights: the arithmetic equals the real weights'. bf16, SDPA, 30 new tokens, on CUDA

Every generate() is forced to exactly --new-tokens tokens (min_new_tokens = max_new_tokens), so random
weights that stop early cannot flatter the numbers. Paper reference: ~1,120 A100-hours for ~70M images,
about 17 images/s per A100; the goal here is >= 150 images/s on one H100.

    python benchmarks/caption_throughput.py tiny --batch-sizes 1 4 16 64
    python benchmarks/caption_throughput.py full --device cuda --batch-sizes 64 128 256
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _generate_rate(model: Any, pixel_values: Any, input_ids: Any, new_tokens: int, repeats: int,
                   sync: Any = None) -> float:
    """Median images/s of `repeats` timed generate() calls (after one warm-up)."""
    import torch

    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=1)
    rates = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            model.generate(pixel_values=pixel_values, input_ids=input_ids,
                           attention_mask=torch.ones_like(input_ids), **kwargs)
            if sync:
                sync()
            if i:  # the first call warms up kernels and caches
                rates.append(pixel_values.shape[0] / (time.perf_counter() - start))
    return statistics.median(rates)


def _prompt_ids(config: Any, batch: int, device: str) -> Any:
    """BLIP-2 layout with an empty prompt: num_query_tokens image placeholders, then BOS. (B, Q + 1)"""
    import torch

    ids = [config.image_token_index] * config.num_query_tokens + [config.text_config.bos_token_id]
    return torch.tensor([ids], device=device).repeat(batch, 1)


def bench_tiny(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    from transformers import Blip2ForConditionalGeneration

    from opencanvas.caption.tiny_models import save_tiny_blip2

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = Blip2ForConditionalGeneration.from_pretrained(
            save_tiny_blip2(Path(tmp) / "m", image_size=224), attn_implementation="sdpa").eval()
    rows = []
    for b in args.batch_sizes:
        pixels = torch.randn(b, 3, 224, 224)  # (B, 3, 224, 224), as the processor emits
        rate = _generate_rate(model, pixels, _prompt_ids(model.config, b, "cpu"), args.new_tokens, args.repeats)
        rows.append({"mode": "tiny", "device": "cpu", "batch_size": b, "images_per_s": round(rate, 1)})
    return rows


def _jpeg(width: int, height: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)  # smooth-ish photo stand-in
    img = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def bench_loader(args: argparse.Namespace) -> list[dict[str, Any]]:
    from transformers import BlipImageProcessorPil

    from opencanvas.caption.loader import decoded_batches

    images = [_jpeg(1024, 768, i) for i in range(args.images)]
    processor = BlipImageProcessorPil(size={"height": 224, "width": 224})
    rows = []
    for workers in args.workers:
        start = time.perf_counter()
        n = sum(len(b.indices) for b in decoded_batches(images, batch_size=16, crop_size=512, workers=workers,
                                                         image_processor=processor))
        rows.append({"mode": "loader", "workers": workers, "images": n,
                     "images_per_s": round(n / (time.perf_counter() - start), 1)})
    return rows


def bench_stage(args: argparse.Namespace) -> list[dict[str, Any]]:
    import sys

    from opencanvas.caption.captioners import GenerationSettings
    from opencanvas.caption.stage import caption
    from opencanvas.caption.tiny_models import save_tiny_blip2
    from opencanvas.workspace import Workspace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.factories import make_image_subset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_blip2(Path(tmp) / "m", image_size=224)
        ws = Workspace.open(Path(tmp) / "ws")
        make_image_subset(ws, n=args.images, size=512, shard_size=args.images // 4)
        for b in args.batch_sizes:
            for workers in args.workers:
                name = f"b{b}-w{workers}"
                stats = caption(ws, "shapes", "blip2", model=str(model), batch_size=b, name=name,
                                loader_workers=workers, generation=GenerationSettings(max_new_tokens=args.new_tokens))
                rows.append({"mode": "stage", "batch_size": b, "loader_workers": workers, "images": stats.images,
                             "images_per_s": round(stats.images_per_s, 1)})
    return rows


def bench_full(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("full mode needs a CUDA GPU (--device cuda); none is visible to torch")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    # Salesforce/blip2-opt-2.7b: OPT-2.7B text model, "<image>" = id 50265 in its 50304-entry vocabulary.
    text = OPTConfig(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240,
                     word_embed_proj_dim=2560, vocab_size=50304, max_position_embeddings=2048)
    config = Blip2Config(text_config=text if args.text_model == "opt-2.7b" else None, image_token_index=50265)
    config._attn_implementation = "sdpa"
    torch.set_default_dtype(dtype)
    with torch.device(args.device):  # random init straight on the GPU: seconds, not minutes
        model = Blip2ForConditionalGeneration(config).eval()
    torch.set_default_dtype(torch.float32)
    # As from_pretrained(dtype=bf16) does (`_keep_in_fp32_modules`): the Q-Former stays fp32.
    model.qformer.float()
    model.query_tokens.data = model.query_tokens.data.float()
    params = sum(p.numel() for p in model.parameters())
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    size = config.vision_config.image_size  # 224: the crop is resized from 512 by the processor
    rows = []
    for b in args.batch_sizes:
        pixels = torch.randn(b, 3, size, size, device=args.device, dtype=dtype)
        if sync:
            torch.cuda.reset_peak_memory_stats()
        rate = _generate_rate(model, pixels, _prompt_ids(config, b, args.device), args.new_tokens, args.repeats, sync)
        peak = torch.cuda.max_memory_allocated() / 2**30 if sync else float("nan")
        rows.append({"mode": "full", "device": torch.cuda.get_device_name() if sync else args.device,
                     "dtype": args.dtype, "params_b": round(params / 1e9, 2), "batch_size": b,
                     "images_per_s": round(rate, 1), "peak_gib": round(peak, 1)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["tiny", "loader", "stage", "full"], help="what to measure")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 64], help="images per generate()")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader processes to try")
    parser.add_argument("--images", type=int, default=64, help="images for loader/stage modes")
    parser.add_argument("--new-tokens", type=int, default=30, help="tokens generated per caption (paper-like: 30)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generate() calls per batch size")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (tiny mode; 1 is fastest on a shared 2-core box)")
    parser.add_argument("--device", default="cuda", help="full mode: torch device")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="full mode: dtype")
    parser.add_argument("--text-model", default="opt-2.7b", choices=["opt-2.7b", "default"],
                        help="full mode: OPT-2.7B (the paper's) or transformers' default (OPT-125M-sized) text model")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    rows = {"tiny": bench_tiny, "loader": bench_loader, "stage": bench_stage, "full": bench_full}[args.mode](args)
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
