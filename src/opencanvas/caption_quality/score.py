"""`caption score`: the CLIP score of every caption of one captioner against its own image.

    captions/stats/<subset>/scores/<captioner>.parquet   key, caption, clip_score, round_trip, error

clip_score is 100 * max(cos(image, text), 0) (torchmetrics' CLIPScore, as `eval` reports it).
With a model (`--run`), round_trip is the round-trip score of "Do DALL-E and Flamingo understand each
other?": generate from the caption with a few seeds, and average the cosine of each generated image and
the original in CLIP image space; how much of the image the caption carries, as this model reads it.
An image that does not decode, or a damaged shard, is quarantined: its rows keep a null score and
the reason in `error`, and the other shards are still scored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opencanvas.caption.stats import scores_path
from opencanvas.captions import read_captions
from opencanvas.shards import ShardError, iter_shard, read_index
from opencanvas.storage import atomic_write_parquet
from opencanvas.workspace import Workspace

SCORE_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("caption", pa.string()),
    ("clip_score", pa.float32()),  # null where the image could not be scored (see `error`)
    ("round_trip", pa.float32()),  # mean CLIP image cosine of generated vs original; null without a model
    ("error", pa.string()),        # "" when scored, else why the row is quarantined
])


@dataclass
class ScoreStats:
    captions: int = 0
    scored: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def captions_per_s(self) -> float:
        return self.captions / self.seconds if self.seconds else 0.0


def _usable_captions(ws: Workspace, subset: str, captioner: str) -> tuple[dict[str, str], dict[str, str]]:
    """(key -> caption, key -> shard) for the subset's ok images with an unflagged, non-empty caption."""
    index = read_index(ws.images_dir(subset))
    index = index.filter(pc.equal(index.column("status"), "ok"))
    ok_keys = index.column("key").to_pylist()
    if not ok_keys:
        raise FileNotFoundError(f"no ok images for subset {subset!r}: run `opencanvas fetch --subset {subset}` first")
    table = read_captions(ws, captioner, keys=ok_keys)
    if table.num_rows == 0:
        raise FileNotFoundError(f"captioner {captioner!r} has no captions of subset {subset!r}: run `opencanvas "
                                f"caption --subset {subset} --captioner {captioner}` first")
    captions = {k: c for k, c, f in zip(table.column("key").to_pylist(), table.column("caption").to_pylist(),
                                        table.column("flagged").to_pylist()) if c and c.strip() and not f}
    shard_of = dict(zip(ok_keys, index.column("shard").to_pylist()))
    return captions, shard_of


def _shard_images(ws: Workspace, subset: str, shard: str, wanted: set[str], size: int) -> tuple[dict, dict]:
    """(key -> decoded RGB image, key -> quarantine reason) for the `wanted` keys of one shard."""
    from opencanvas.fetch.decode import load_rgb

    images: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        for img in iter_shard(ws.images_dir(subset) / f"{shard}.tar"):
            if img.key in wanted:
                try:
                    images[img.key] = load_rgb(img.data, min_side=size)
                except Exception as e:  # noqa: BLE001 -- an undecodable image is quarantined, the shard goes on
                    errors[img.key] = f"unreadable image: {type(e).__name__}"
    except ShardError as e:
        return {}, dict.fromkeys(wanted, f"damaged shard: {e}")
    for key in wanted - images.keys() - errors.keys():
        errors[key] = "image missing from its shard"
    return images, errors


@dataclass(frozen=True)
class RoundTrip:
    """Generation settings of the round-trip score: `seeds` images per caption from `model`."""

    model: Any  # a sampling pipeline (opencanvas.sample.loading.load_model)
    name: str  # the run, as recorded in the table
    seeds: int = 3
    steps: int = 20
    guidance: float = 5.0
    sampler: str = "euler"
    batch_size: int = 16


def round_trip_cosines(clip: Any, originals: list[Any], captions: list[str], settings: RoundTrip) -> np.ndarray:
    """(N,) mean over seeds of cos(CLIP image of a generation from caption i, CLIP image of original i)."""
    from opencanvas.sample.generate import generate

    made = generate(settings.model, captions, n=settings.seeds, steps=settings.steps, guidance=settings.guidance,
                    sampler=settings.sampler, seed=0, batch_size=settings.batch_size)  # prompt-major order
    generated = clip.image_features(made).reshape(len(captions), settings.seeds, -1)  # (N, S, D), unit rows
    return np.einsum("nsd,nd->ns", generated, clip.image_features(originals)).mean(axis=1)


def score_captions(ws: Workspace, subset: str, captioner: str, clip: Any, batch_size: int = 256,
                   round_trip: RoundTrip | None = None) -> ScoreStats:
    """Score every usable caption of `captioner` on `subset` with `clip` (a ClipEvaluator); write the table.

    With `round_trip`, also the round-trip score with its model (a few generations per caption: slow).
    """
    start = time.perf_counter()
    captions, shard_of = _usable_captions(ws, subset, captioner)
    clip.batch_size = batch_size
    stats = ScoreStats(captions=len(captions))
    by_shard: dict[str, list[str]] = {}
    for key in captions:
        by_shard.setdefault(shard_of[key], []).append(key)
    rows: dict[str, list[Any]] = {name: [] for name in SCORE_SCHEMA.names}
    for shard in sorted(by_shard):
        keys = by_shard[shard]
        images, errors = _shard_images(ws, subset, shard, set(keys), clip.image_size)
        good = [k for k in keys if k in images]
        scores = clip.clip_score([images[k] for k in good], [captions[k] for k in good]) if good else []
        score_of = dict(zip(good, scores))
        trip_of: dict[str, float] = {}
        if round_trip is not None and good:
            trips = round_trip_cosines(clip, [images[k] for k in good], [captions[k] for k in good], round_trip)
            trip_of = dict(zip(good, trips.tolist()))
        for key in keys:
            rows["key"].append(key)
            rows["caption"].append(captions[key])
            rows["clip_score"].append(float(score_of[key]) if key in score_of else None)
            rows["round_trip"].append(trip_of.get(key))
            rows["error"].append(errors.get(key, ""))
        for reason in errors.values():
            kind = reason.split(":")[0]
            stats.quarantined[kind] = stats.quarantined.get(kind, 0) + 1
        stats.scored += len(good)
    table = pa.table(rows, schema=SCORE_SCHEMA)
    atomic_write_parquet(scores_path(ws, subset, captioner), table,
                         metadata={"clip": str(clip.name), "subset": subset, "captioner": captioner,
                                   "run": round_trip.name if round_trip else ""})
    stats.seconds = time.perf_counter() - start
    return stats


def read_scores(ws: Workspace, subset: str, captioner: str) -> tuple[pa.Table, str]:
    """(the score table, the CLIP it was scored with); a missing table names the command that writes it."""
    import pyarrow.parquet as pq

    path = scores_path(ws, subset, captioner)
    if not path.exists():
        raise FileNotFoundError(f"captioner {captioner!r} has no scores for subset {subset!r}: run `opencanvas "
                                f"caption score --subset {subset} --captioner {captioner}` first")
    table = pq.read_table(path)
    meta = table.schema.metadata or {}
    return table, meta.get(b"clip", b"").decode()
