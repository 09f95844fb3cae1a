"""The demo's stages: each calls one stage's library function with demo-sized settings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opencanvas.demo.settings import (
    AUTOENCODER,
    CAPTIONER,
    CLIP,
    EVAL_CLIP,
    EVAL_CLIP_SEED,
    LATENTS,
    PROMPTS,
    RUN,
    SUBSET,
)
from opencanvas.workspace import Workspace

if TYPE_CHECKING:
    from opencanvas.demo.settings import DemoSettings


def ingest_clipart(ws: Workspace, s: DemoSettings) -> dict[str, Any]:
    from opencanvas.catalog.ingest import ingest

    paths = [s.clipart_root / "svg" / c for c in s.categories] or [s.clipart_root]
    stats = ingest(ws, "openclipart", paths, workers=s.workers)
    return stats.as_dict()


def cut_subset(ws: Workspace, s: DemoSettings) -> dict[str, Any]:
    """CommonCatalog-C of the library; with `max_images`, a deterministic sample of it."""
    import hashlib

    import pyarrow.parquet as pq

    from opencanvas.catalog.subset import make_subset
    from opencanvas.storage import atomic_write_parquet, parquet_metadata

    path = make_subset(ws, "commercial", SUBSET)
    table = pq.read_table(path)
    full = table.num_rows
    if s.max_images and full > s.max_images:
        # Sample by key hash so the choice is stable across runs and machines.
        keys = table.column("key").to_pylist()
        order = sorted(range(full), key=lambda i: hashlib.sha256(keys[i].encode()).hexdigest())
        meta = parquet_metadata(path)
        meta["sampled"] = f"{s.max_images} of {full} (lowest sha256 of key)"
        atomic_write_parquet(path, table.take(sorted(order[: s.max_images])), metadata=meta)
    return {"subset": SUBSET, "policy": "commercial", "images": min(full, s.max_images or full),
            "policy_images": full}


def fetch_images(ws: Workspace, s: DemoSettings) -> dict[str, Any]:
    from opencanvas.fetch.stage import fetch

    # Clip art is small (median ~190 px): keep what can fill the training crop, store at most 4x it.
    stats = fetch(ws, SUBSET, shard_size=500, workers=s.workers, max_side=4 * s.resolution,
                  min_side=s.resolution)
    return stats.to_dict()


def caption_metadata(ws: Workspace) -> dict[str, Any]:
    from opencanvas.caption import caption

    return caption(ws, SUBSET, CAPTIONER).to_dict()


def train_autoencoder(ws: Workspace, s: DemoSettings) -> dict[str, Any]:
    from opencanvas.components.autoencoder import train_autoencoder as train_ae

    report = train_ae(ws, SUBSET, AUTOENCODER, preset="tiny", resolution=s.resolution,
                      minutes=s.minutes * s.autoencoder_share)
    return {k: report[k] for k in ("heldout_psnr", "heldout_ssim", "heldout_bicubic_psnr", "images_seen", "steps")
            if k in report}


def train_clip(ws: Workspace, s: DemoSettings, name: str = CLIP, seed: int = 0,
               share: float | None = None) -> dict[str, Any]:
    from opencanvas.components.clip import train_clip as train_c

    minutes = s.minutes * (s.clip_share if share is None else share)
    report = train_c(ws, SUBSET, CAPTIONER, name, preset="tiny", minutes=minutes, seed=seed)
    return {k: report[k] for k in ("image_to_text_recall@5", "text_to_image_recall@5", "chance_recall@5",
                                   "clip_score_matching", "clip_score_non_matching", "images_seen") if k in report}


def train_eval_clip(ws: Workspace, s: DemoSettings) -> dict[str, Any]:
    """The evaluation-only CLIP: other seed, own budget; finished once, then returned as recorded."""
    return train_clip(ws, s, EVAL_CLIP, EVAL_CLIP_SEED, s.eval_clip_share)


def encode_latents(ws: Workspace, s: DemoSettings) -> dict[str, Any]:
    from opencanvas.encode import encode

    return encode(ws, SUBSET, AUTOENCODER, CLIP, [CAPTIONER], LATENTS, resolutions=(s.resolution,))


def train_unet(ws: Workspace, s: DemoSettings) -> dict[str, Any]:
    # Minutes, converted once to images from a measured warm-up and recorded: a re-run resumes bit-identically.
    import json

    from opencanvas.train.loop import train

    summary = train(ws, LATENTS, "tiny", RUN, minutes=s.minutes * s.train_share, batch=s.train_batch,
                    prediction_type=s.prediction_type, zero_terminal_snr=s.zero_terminal_snr)
    config = json.loads((ws.run_dir(RUN) / "config.json").read_text())
    return {**{k: summary[k] for k in ("images_seen", "steps", "images_per_s", "wall_seconds") if k in summary},
            "images": config["images"], "measured_images_per_s": config["measured_images_per_s"]}


def sample_grid(ws: Workspace, s: DemoSettings) -> dict[str, Any]:
    from opencanvas.sample.generate import SampleSettings, default_size, plan, sample_to_dir
    from opencanvas.sample.loading import load_model, model_name, training_provenance

    model = load_model(ws, RUN, None)
    width, height = default_size(model)
    settings = SampleSettings(steps=25, guidance=5.0, sampler="dpmpp-2m", width=width, height=height)
    out = ws.run_dir(RUN) / "samples" / "demo"
    paths = sample_to_dir(model, plan(list(PROMPTS), 4, 0), settings, out, model_name(model, RUN),
                          training_provenance(model))
    return {"images": len(paths), "grid": ws.relative(out / "grid.png")}


def evaluate_run(ws: Workspace, s: DemoSettings) -> dict[str, Any]:
    from opencanvas.sample.evaluate import evaluate

    keys = ("guidance", "baseline", "clip_score", "prompt_retrieval_top1", "prompt_retrieval_top5")
    report = evaluate(ws, RUN, "heldout", SUBSET, metrics=("fid", "kid", "clip", "pr", "memorization", "retrieval"),
                      guidance_scales=(1.5, 3.0, 5.0), n=s.eval_prompts, steps=20, clip=EVAL_CLIP)
    grid = evaluate(ws, RUN, list(PROMPTS), SUBSET, metrics=("clip", "retrieval"), guidance_scales=(5.0,),
                    n=s.grid_eval_images, steps=20, clip=EVAL_CLIP)
    return {"eval_id": report.get("eval_id"), "clip": EVAL_CLIP,
            "rows": [{k: r.get(k) for k in keys} for r in report.get("rows", [])],
            "chance": report.get("prompt_retrieval_chance"), "grid_eval_id": grid.get("eval_id"),
            "grid_rows": [{k: r.get(k) for k in keys} for r in grid.get("rows", [])],
            "grid_chance": grid.get("prompt_retrieval_chance")}


def write_run_cards(ws: Workspace) -> dict[str, Any]:
    from opencanvas.cards.writer import write_cards

    out = write_cards(ws, RUN)
    return {"cards": ws.relative(out)}
