"""The demo's names, prompts and sizes: one module that the pipeline and its stages both read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CLIPART_ROOT = Path("/usr/share/openclipart")
SUBSET = "clipart-c"
CAPTIONER = "metadata"
AUTOENCODER = "clipart-ae"
CLIP = "clipart-clip"
# Scores the demo's images and is never used for conditioning, so the model cannot game its own judge.
EVAL_CLIP = "clipart-clip-eval"
EVAL_CLIP_SEED = 1
LATENTS = "clipart-latents"
RUN = "clipart-tiny"
PROMPTS = (
    "a red apple", "a black cat", "a house with a red roof", "a yellow sun",
    "a blue car", "a christmas tree", "a smiling face", "a world map",
)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes for a 2-core CPU (see benchmarks/RESULTS.md for the figures behind them)."""

    minutes: float = 15.0
    resolution: int = 64          # pixels; latents are resolution / 4 with the tiny autoencoder
    max_images: int | None = None  # cap on the subset (None: the whole library)
    clipart_root: Path = CLIPART_ROOT
    categories: tuple[str, ...] = ()  # top-level folders to ingest (default: all)
    workers: int = 2
    # Shares of the time budget for the stages that train; the rest is fixed-cost work.
    autoencoder_share: float = 0.14
    clip_share: float = 0.14
    eval_clip_share: float = 0.05   # trained once; a re-run (or a benchmark variant) reuses it
    # The UNet's share is minutes: the training loop measures its rate in a short warm-up and records the image
    # count in the run's config.json, so a re-run trains exactly as far.
    train_share: float = 0.30
    eval_prompts: int = 32
    grid_eval_images: int = 32      # 4 per grid prompt: prompt retrieval among the 8 grid prompts
    # Batch 16, the tiny preset's. At equal images batch 8 scored better (grid top-1 47% vs 27% at 6000 images,
    # benchmarks/RESULTS.md, second demo-quality pass, measured one thread under load), but on the idle 2-core
    # machine the demo runs on it trains 32% fewer images in the same minutes (warm-up 56 vs 82 img/s), and the
    # full demo at batch 8 came out worse (grid top-1 31% vs 50%): the demo's budget is minutes, not images.
    train_batch: int = 16
    # v-prediction with zero-terminal SNR: FD-CLIP 0.90x and 0.84x of epsilon's at 6000 and 12000 images
    # (benchmarks/RESULTS.md, "Demo quality per CPU-minute").
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
