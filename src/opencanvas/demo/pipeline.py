"""`opencanvas demo`: the whole pipeline on the Open Clip Art Library, offline, on a CPU.

ingest → commercial subset → fetch (local files) → caption (metadata) →
autoencoder (tiny) → CLIP (tiny) → evaluation-only CLIP → encode → train (tiny) → sample grid →
eval on held-out prompts → cards.

Each stage is the library function a user would call; the demo only picks
settings sized for a 2-core CPU and a ~15 minute budget, and records finished
stages in `demo/state.json` so a re-run skips them (`--fresh` starts over).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opencanvas.demo import stages
from opencanvas.demo.settings import DemoSettings
from opencanvas.demo.state import DemoState
from opencanvas.progress import console
from opencanvas.workspace import Workspace


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


def run_demo(ws: Workspace, settings: DemoSettings | None = None, fresh: bool = False,
             stop_after: str | None = None) -> dict[str, Any]:
    """Run (or finish) the demo in `ws`; returns each stage's summary.

    `stop_after` ends after that stage (benchmarks prepare a workspace once: everything up to `encode`).
    """
    settings = settings or DemoSettings()
    if fresh:
        removed = ws.clear()   # stage folders only; refuses when the workspace holds the user's files
        console.print(f"[dim]--fresh: deleted {', '.join(f'{n}/' for n in removed) or 'nothing'}[/]")
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
        ("eval-clip", lambda: stages.train_eval_clip(ws, settings)),
        ("encode", lambda: stages.encode_latents(ws, settings)),
        ("train", lambda: stages.train_unet(ws, settings)),
        ("sample", lambda: stages.sample_grid(ws, settings)),
        ("eval", lambda: stages.evaluate_run(ws, settings)),
        ("card", lambda: stages.write_run_cards(ws)),
    ]
    names = [name for name, _ in plan]
    if stop_after is not None and stop_after not in names:
        raise ValueError(f"unknown demo stage {stop_after!r}: choose from {', '.join(names)}")
    done: dict[str, Any] = {}
    for name, fn in plan:
        done[name] = _stage(state, name, fn)
        if name == stop_after:
            break
    return done
