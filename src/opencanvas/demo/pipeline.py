"""`opencanvas demo`: the whole pipeline on the Open Clip Art Library, offline, on a CPU.

ingest → commercial subset → fetch (local files) → caption (metadata) →
autoencoder (tiny) → CLIP (tiny) → encode → train (tiny) → sample grid →
eval on held-out prompts → cards.

Each stage is the library function a user would call; the demo only picks
settings sized for a 2-core CPU and a ~15 minute budget, and records finished
stages in `demo/state.json` so a re-run skips them (`--fresh` starts over).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencanvas.demo.state import DemoState
from opencanvas.progress import console
from opencanvas.workspace import Workspace

CLIPART_ROOT = Path("/usr/share/openclipart")
SUBSET = "clipart-c"
CAPTIONER = "metadata"
AUTOENCODER = "clipart-ae"
CLIP = "clipart-clip"
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
    train_share: float = 0.40
    eval_prompts: int = 32
    train_batch: int = 16
    train_images_per_s: float = 50.0  # tiny UNet on 16x16x4 latents, 2 idle cores (measured by the demo)


def _stage(state: DemoState, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    if state.is_done(name):
        console.print(f"[dim]✓ {name}: done before, skipped[/]")
        return state.done[name]
    console.rule(f"[bold]{name}")
    t0 = time.perf_counter()
    summary = fn()
    summary = {**summary, "seconds": round(time.perf_counter() - t0, 1)}
    state.mark(name, summary)
    console.print(f"[green]✓ {name}[/] in {summary['seconds']:.0f} s")
    return summary


def run_demo(ws: Workspace, settings: DemoSettings = DemoSettings(), fresh: bool = False) -> dict[str, Any]:
    """Run (or finish) the demo in `ws`; returns each stage's summary."""
    from opencanvas.demo import stages

    if fresh:
        for child in ws.root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    if not (settings.clipart_root / "svg").is_dir():
        raise FileNotFoundError(
            f"the Open Clip Art Library is not at {settings.clipart_root}: install it with "
            "`sudo apt-get install openclipart-png openclipart-svg` (or run `make demo`)")
    state = DemoState(ws.root / "demo" / "state.json")
    plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("ingest", lambda: stages.ingest_clipart(ws, settings)),
        ("subset", lambda: stages.cut_subset(ws, settings)),
        ("fetch", lambda: stages.fetch_images(ws, settings)),
        ("caption", lambda: stages.caption_metadata(ws)),
        ("autoencoder", lambda: stages.train_autoencoder(ws, settings)),
        ("clip", lambda: stages.train_clip(ws, settings)),
        ("encode", lambda: stages.encode_latents(ws, settings)),
        ("train", lambda: stages.train_unet(ws, settings)),
        ("sample", lambda: stages.sample_grid(ws, settings)),
        ("eval", lambda: stages.evaluate_run(ws, settings)),
        ("card", lambda: stages.write_run_cards(ws)),
    ]
    return {name: _stage(state, name, fn) for name, fn in plan}
