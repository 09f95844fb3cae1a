"""The encode stage: precompute latents and text embeddings once, shard by shard.

For every image shard of a subset: the text encoder's hidden states of every
caption of every captioner (stored once per image; with a second text encoder its
hidden states too, and both encoders' pooled embeddings), then, with
`--image-embeddings`, the CLIP image embedding of every image, then, per resolution
the image qualifies for, the autoencoder posterior's mean and std (EDM2
`dataset_tool encode`: the latent sample is drawn at training time). Training
then never runs the autoencoder or the text encoder, the main source of the
paper's ~3x speed-up. Each image is decoded once for both its CLIP view and its latents.

Resume: an output part exists for readers once its done.json is written (last,
atomically); a re-run skips finished parts and rewrites unfinished ones, so
every ok image is encoded exactly once per resolution it qualifies for.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from opencanvas.encode.buckets import aspect_buckets, crop_resize, target_size
from opencanvas.encode.store import (
    FORMAT_VERSION,
    IMAGE_DIR,
    META_FILE,
    SECOND_ENCODER_ARRAYS,
    Bucket,
    BucketLatents,
    is_done,
    read_meta,
    resolution_dirname,
    text_encoders,
    write_image_part,
    write_latent_part,
    write_null_text,
    write_text_part,
)
from opencanvas.engines import shard_share
from opencanvas.licenses import refuse_nd_subset
from opencanvas.shards import ShardImage, index_paths, iter_shard
from opencanvas.storage import atomic_write_json, parquet_metadata
from opencanvas.workspace import Workspace

if TYPE_CHECKING:
    import torch

    from opencanvas.components.loading import ClipEvaluator, LoadedAutoencoder, LoadedTextEncoder

DECODE_CHUNK = 64  # images decoded ahead at most (bounds memory at 512 px: 64 x 0.8 MB)
DEFAULT_DECODE_WORKERS = min(4, os.cpu_count() or 1)

# Settings a resumed run must share with the run that started the latent set.
FIXED_SETTINGS = ("format_version", "autoencoder", "text_encoder", "text_encoders", "image_embeddings",
                  "captioners", "subset", "resolutions", "buckets", "shift", "scale", "latent_channels",
                  "downscale", "text_len", "text_dim")
MAX_TEXT_ENCODERS = 2


@dataclass
class ShardPlan:
    """One image shard: its ok images' sizes and which outputs are still missing."""

    index: Path
    keys: list[str]
    sizes: dict[int, dict[str, Bucket]]  # resolution -> key -> (h, w) for the images that qualify
    text_done: bool
    pending: list[int]                   # resolutions whose part is not done
    image_done: bool = True              # the image-embedding part is done, or the set has none

    @property
    def name(self) -> str:
        return self.index.stem

    @property
    def text_keys(self) -> list[str]:
        """Images that qualify for at least one resolution, in shard order (rows of the text part)."""
        wanted = set().union(*(s.keys() for s in self.sizes.values()))
        return [k for k in self.keys if k in wanted]


@dataclass
class EncodeStats:
    shards: int = 0
    skipped_shards: int = 0
    texts: int = 0
    latents: dict[int, int] = field(default_factory=dict)
    undecodable: int = 0
    image_embeddings: int = 0
    missing_captions: dict[str, int] = field(default_factory=dict)


def plan_shard(root: Path, index: Path, resolutions: Sequence[int], buckets: dict[int, list[Bucket]] | None,
               image_embeddings: bool = False) -> ShardPlan:
    table = pq.read_table(index).to_pylist()
    ok = [r for r in table if r["status"] == "ok"]
    sizes: dict[int, dict[str, Bucket]] = {}
    for res in resolutions:
        sizes[res] = {}
        for r in ok:
            # Eligibility is judged on the original size: fetch may have stored a downscaled copy.
            w = r["original_width"] or r["width"] or 0
            h = r["original_height"] or r["height"] or 0
            size = target_size(w, h, res, buckets[res] if buckets else None)
            if size is not None:
                sizes[res][r["key"]] = size
    pending = [res for res in resolutions if not is_done(root / resolution_dirname(res) / index.stem)]
    image_done = not image_embeddings or is_done(root / IMAGE_DIR / index.stem)
    return ShardPlan(index, [r["key"] for r in ok], sizes, is_done(root / "text" / index.stem), pending, image_done)


def caption_part(ws: Workspace, captioner: str, shard: str) -> Path:
    """captions/<captioner>/part-NNNNN.parquet for images/<subset>/shard-NNNNN (one part per shard)."""
    return ws.captions_dir(captioner) / f"part-{shard.split('-', 1)[1]}.parquet"


def read_shard_captions(ws: Workspace, captioners: Sequence[str], shard: str, keys: Sequence[str],
                        stats: EncodeStats) -> list[list[str]]:
    """(N, K) caption strings, "" where a captioner has none or flagged it (empty, repetitive, ...)."""
    out = [[""] * len(captioners) for _ in keys]
    row_of = {k: i for i, k in enumerate(keys)}
    for slot, captioner in enumerate(captioners):
        table = pq.read_table(caption_part(ws, captioner, shard), columns=["key", "caption", "flagged"])
        columns = (table.column(c).to_pylist() for c in ("key", "caption", "flagged"))
        for key, text, flagged in zip(*columns, strict=True):
            i = row_of.get(key)
            if i is not None and not flagged and text and not out[i][slot]:
                out[i][slot] = text
        missing = sum(1 for row in out if not row[slot])
        stats.missing_captions[captioner] = stats.missing_captions.get(captioner, 0) + missing
    return out


def encode_texts(te: LoadedTextEncoder, captions: list[list[str]], batch_size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Captions (N, K) -> text (N, K, L, D) fp16 and mask (N, K, L) bool; missing ones stay zero/False."""
    text, mask, _ = _encode_captions(te, captions, batch_size)
    return text, mask


def _encode_captions(te: LoadedTextEncoder, captions: list[list[str]], batch_size: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`encode_texts` plus the pooled embeddings (N, K, D) fp16 (zero where a caption is missing)."""
    n, k = len(captions), len(captions[0]) if captions else 0
    text = np.zeros((n, k, te.max_length, te.hidden_size), np.float16)
    mask = np.zeros((n, k, te.max_length), bool)
    pooled = np.zeros((n, k, te.hidden_size), np.float16)
    slots = [(i, j) for i in range(n) for j in range(k) if captions[i][j]]
    for lo in range(0, len(slots), batch_size):
        chunk = slots[lo:lo + batch_size]
        hidden, attention, pool = te.encode_pooled([captions[i][j] for i, j in chunk])  # (b, L, D), (b, L), (b, D)
        rows, cols = np.array([i for i, _ in chunk]), np.array([j for _, j in chunk])
        text[rows, cols] = hidden.float().cpu().numpy().astype(np.float16)
        mask[rows, cols] = attention.cpu().numpy()
        pooled[rows, cols] = pool.float().cpu().numpy().astype(np.float16)
    return text, mask, pooled


def encode_all_texts(tes: Sequence[LoadedTextEncoder], captions: list[list[str]], batch_size: int
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The first encoder's text/mask and, with a second encoder, SECOND_ENCODER_ARRAYS (N, K, ...) each."""
    if len(tes) == 1:
        text, mask = encode_texts(tes[0], captions, batch_size)
        return text, mask, {}
    text, mask, pooled = _encode_captions(tes[0], captions, batch_size)
    text2, mask2, pooled2 = _encode_captions(tes[1], captions, batch_size)
    return text, mask, dict(zip(SECOND_ENCODER_ARRAYS, (text2, mask2, pooled, pooled2), strict=True))


def null_conditioning(tes: Sequence[LoadedTextEncoder]) -> dict[str, np.ndarray]:
    """The empty prompt's arrays: text (L, D), mask (L,) and with a second encoder text2, mask2, pooled, pooled2."""
    encoded = [te.encode_pooled([""]) for te in tes]  # each: (1, L, D), (1, L), (1, P)
    (hidden, attention, pooled), out = encoded[0], {}
    out = {"text": hidden[0].float().cpu().numpy(), "mask": attention[0].cpu().numpy()}
    if len(tes) > 1:
        hidden2, attention2, pooled2 = encoded[1]
        out.update(text2=hidden2[0].float().cpu().numpy(), mask2=attention2[0].cpu().numpy(),
                   pooled=pooled[0].float().cpu().numpy(), pooled2=pooled2[0].float().cpu().numpy())
    return out


class ImageEmbedder:
    """Collects CLIP views (3, S, S) uint8 of one shard's images, embeds them a batch at a time."""

    def __init__(self, clip: ClipEvaluator, rows: int, batch_size: int) -> None:
        self.clip, self.batch_size = clip, batch_size
        dim = int(clip.model.config.projection_dim)
        self.embeddings = np.zeros((rows, dim), np.float32)  # (N, E): zero rows for undecodable images
        self._queue: list[tuple[int, np.ndarray]] = []

    def add(self, row: int, pixels: np.ndarray) -> None:
        self._queue.append((row, pixels))
        if len(self._queue) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if self._queue:
            rows = np.array([r for r, _ in self._queue])
            self.embeddings[rows] = self.clip.pixel_features(np.stack([p for _, p in self._queue]))
            self._queue = []

    def finish(self) -> np.ndarray:
        self._flush()
        return self.embeddings


class LatentBatcher:
    """Collects same-size images, encodes them a batch at a time into per-bucket latents."""

    def __init__(self, ae: LoadedAutoencoder, batch_size: int) -> None:
        self.ae, self.batch_size = ae, batch_size
        self.buckets: dict[Bucket, BucketLatents] = {}
        self._queue: dict[Bucket, list[tuple[str, int, np.ndarray]]] = {}
        self._means: dict[Bucket, list[np.ndarray]] = {}
        self._stds: dict[Bucket, list[np.ndarray]] = {}

    def add(self, key: str, text_row: int, size: Bucket, pixels: np.ndarray) -> None:
        """pixels: (3, h, w) uint8."""
        queue = self._queue.setdefault(size, [])
        queue.append((key, text_row, pixels))
        if len(queue) >= self.batch_size:
            self._flush(size)

    def _flush(self, size: Bucket) -> None:
        import torch

        from opencanvas.pixels import to_unit_range

        queue = self._queue.pop(size, [])
        if not queue:
            return
        x = to_unit_range(torch.from_numpy(np.stack([p for _, _, p in queue])))  # (B, 3, h, w)
        mean, std = self.ae.encode(x)  # (B, C, h/f, w/f) each
        group = self.buckets.setdefault(size, BucketLatents([], [], np.empty(0), np.empty(0)))
        group.keys.extend(k for k, _, _ in queue)
        group.text_rows.extend(r for _, r, _ in queue)
        self._means.setdefault(size, []).append(mean.float().cpu().numpy().astype(np.float16))
        self._stds.setdefault(size, []).append(std.float().cpu().numpy().astype(np.float16))

    def finish(self) -> dict[Bucket, BucketLatents]:
        for size in list(self._queue):
            self._flush(size)
        for size, group in self.buckets.items():
            group.mean, group.std = np.concatenate(self._means[size]), np.concatenate(self._stds[size])
        return self.buckets


def encode_shard(ws: Workspace, root: Path, plan: ShardPlan, ae: LoadedAutoencoder,
                 tes: Sequence[LoadedTextEncoder], captioners: Sequence[str], batch_size: int, stats: EncodeStats,
                 advance: Callable[[int], None], decode_workers: int = DEFAULT_DECODE_WORKERS,
                 clip: ClipEvaluator | None = None) -> None:
    """Write the missing parts of one image shard: text first (the other parts point into its rows),
    then the image embeddings, then the latents (so a done latent part implies a done image part)."""
    from opencanvas.fetch.decode import load_rgb
    from opencanvas.pixels import to_uint8_chw

    started = time.time()
    text_keys = plan.text_keys
    if not plan.text_done:
        captions = read_shard_captions(ws, captioners, plan.name, text_keys, stats)
        text, mask, extra = encode_all_texts(tes, captions, batch_size)
        write_text_part(root / "text" / plan.name, text_keys, captions, text, mask,
                        {"seconds": round(time.time() - started, 3)}, extra)
        stats.texts += len(text_keys)
    else:
        done_keys = pq.read_table(root / "text" / plan.name / "keys.parquet", columns=["key"])
        text_keys = done_keys.column("key").to_pylist()
    text_row = {k: i for i, k in enumerate(text_keys)}
    embed_images = clip is not None and not plan.image_done
    if not plan.pending and not embed_images:
        advance(len(plan.keys))
        return
    batchers = {res: LatentBatcher(ae, batch_size) for res in plan.pending}
    embedder = ImageEmbedder(clip, len(text_keys), batch_size) if embed_images and clip is not None else None
    ok_keys = set(plan.keys)
    failed: dict[str, str] = {}
    Prepared = tuple[list[tuple[int, Bucket, np.ndarray]], np.ndarray | None]

    def prepare(image: ShardImage) -> tuple[str, Prepared | str]:
        """Decode once; crop + resize per qualifying resolution -> [(res, size, (3, h, w) uint8)],
        and CLIP's view (3, S, S) uint8 when the shard's image embeddings are still missing."""
        targets = [(res, plan.sizes[res][image.key]) for res in plan.pending if image.key in plan.sizes[res]]
        wants_clip = embedder is not None and image.key in text_row
        if not targets and not wants_clip:
            return image.key, ([], None)
        try:
            img = load_rgb(image.data)
        except Exception as err:  # noqa: BLE001 - fetch accepted it but PIL rejects it now: count, go on
            return image.key, f"{type(err).__name__}: {err}"
        view = clip.image_pixels(img) if wants_clip and clip is not None else None
        return image.key, ([(res, size, to_uint8_chw(crop_resize(img, size))) for res, size in targets], view)

    images = (im for im in iter_shard(plan.index.with_suffix(".tar")) if im.key in ok_keys)
    # PIL decodes and resizes without the GIL: threads keep the autoencoder fed on a GPU.
    with cf.ThreadPoolExecutor(decode_workers) as pool:
        while chunk := list(itertools.islice(images, DECODE_CHUNK)):
            for key, prepared in pool.map(prepare, chunk):
                advance(1)
                if isinstance(prepared, str):
                    failed[key] = prepared
                    continue
                latent_views, clip_view = prepared
                if embedder is not None and clip_view is not None:
                    embedder.add(text_row[key], clip_view)
                for res, size, pixels in latent_views:
                    batchers[res].add(key, text_row[key], size, pixels)
    if embedder is not None:
        write_image_part(root / IMAGE_DIR / plan.name, text_keys, embedder.finish(),
                         {"seconds": round(time.time() - started, 3), "undecodable": failed})
        stats.image_embeddings += len(text_keys) - len(failed)
    for res in plan.pending:
        groups = batchers[res].finish()
        count = sum(len(g.keys) for g in groups.values())
        write_latent_part(root / resolution_dirname(res) / plan.name, groups,
                          {"seconds": round(time.time() - started, 3), "undecodable": failed})
        stats.latents[res] = stats.latents.get(res, 0) + count
    stats.undecodable += len(failed)


def _check_resume(root: Path, meta: dict[str, Any], name: str) -> None:
    if not (root / META_FILE).exists():
        return
    old = read_meta(root)
    # Sets written before two encoders and image embeddings existed have one encoder and none.
    old = {**old, "text_encoders": text_encoders(old), "image_embeddings": old.get("image_embeddings")}
    changed = [k for k in FIXED_SETTINGS if old.get(k) != meta.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {meta.get(k)!r}" for k in changed)
        raise ValueError(f"latent set {name!r} already exists with other settings ({diffs}): "
                         f"pass a new --name, or delete {root} to start over")


def _check_inputs(ws: Workspace, subset: str, captioners: Sequence[str], shards: list[Path]) -> None:
    if not shards:
        raise FileNotFoundError(f"subset {subset!r} has no fetched image shards in {ws.images_dir(subset)}: "
                                f"run `opencanvas fetch --subset {subset}` first")
    for captioner in captioners:
        missing = [s.stem for s in shards if not caption_part(ws, captioner, s.stem).exists()]
        if missing:
            raise FileNotFoundError(
                f"captioner {captioner!r} has not captioned {len(missing)} shard(s) of {subset!r} "
                f"(e.g. {missing[0]}): run `opencanvas caption --subset {subset} --captioner {captioner}` first")


def encode(ws: Workspace, subset: str, autoencoder: str, text_encoder: str | Sequence[str],
           captioners: Sequence[str], name: str, resolutions: Sequence[int] = (256,), buckets: bool = False, *,
           batch_size: int = 16, device: str = "cpu", dtype: torch.dtype | None = None, rank: int = 0,
           world: int = 1, decode_workers: int = DEFAULT_DECODE_WORKERS, image_embeddings: str | None = None,
           on_start: Callable[[int], None] | None = None, advance: Callable[[int], None] | None = None
           ) -> dict[str, Any]:
    """Encode every ok image of `subset` into latents/<name>/ (resumable); returns a summary.

    `text_encoder`: one spec, or two (eDiff-I / SDXL style: the second one's hidden states and both
    pooled embeddings are stored too). `image_embeddings`: a CLIP spec (a CLIP trained under clips/,
    a local CLIP folder or a hub id) whose image tower embeds every image.
    on_start(total_images) and advance(n) drive a progress bar (the CLI's).
    """
    import torch

    from opencanvas.components.loading import load_autoencoder, load_clip_evaluator, load_text_encoder

    captioners = list(captioners)
    if not captioners or len(set(captioners)) != len(captioners):
        raise ValueError(f"need one or more distinct captioners, got {captioners}")
    encoders = [text_encoder] if isinstance(text_encoder, str) else list(text_encoder)
    if not 1 <= len(encoders) <= MAX_TEXT_ENCODERS or len(set(encoders)) != len(encoders):
        raise ValueError(f"need one or two distinct text encoders (--text-encoder A [--text-encoder B]), "
                         f"got {encoders}")
    resolutions = sorted(set(int(r) for r in resolutions))
    refuse_nd_subset(ws.subset_path(subset), "encode")  # ND licenses forbid derivatives: latents are made for training
    shards = index_paths(ws.images_dir(subset))
    _check_inputs(ws, subset, captioners, shards)
    dtype = dtype or torch.float32
    ae = load_autoencoder(ws, autoencoder, device=device, dtype=dtype)
    tes = [load_text_encoder(ws, spec, device=device, dtype=dtype) for spec in encoders]
    te = tes[0]
    clip = load_clip_evaluator(ws, image_embeddings, device=device, dtype=dtype) if image_embeddings else None
    bad = [r for r in resolutions if r % ae.downscale or r < ae.downscale]
    if bad:
        raise ValueError(f"resolutions {bad} are not multiples of the autoencoder's downscale {ae.downscale}")
    subset_meta = parquet_metadata(ws.subset_path(subset)) if ws.subset_path(subset).exists() else {}
    meta = {
        "format_version": FORMAT_VERSION, "autoencoder": autoencoder, "text_encoder": encoders[0],
        "text_encoders": encoders, "image_embeddings": image_embeddings,
        "shift": [float(v) for v in ae.shift], "scale": [float(v) for v in ae.scale],
        "latent_channels": ae.latent_channels, "downscale": ae.downscale,
        "text_len": te.max_length, "text_dim": te.hidden_size, "text_layer": te.layer,
        "captioners": captioners, "subset": subset, "policy": subset_meta.get("policy", ""),
        "catalog_hash": subset_meta.get("catalog_hash", ""), "resolutions": resolutions, "buckets": buckets,
        "autoencoder_provenance": ae.provenance, "text_encoder_provenance": te.provenance,
        "created_at": datetime.now(UTC).isoformat(),
    }
    if len(tes) > 1:
        meta.update(text2_len=tes[1].max_length, text2_dim=tes[1].hidden_size, text2_layer=tes[1].layer,
                    pooled_dims=[te.hidden_size, tes[1].hidden_size],
                    text_encoder2_provenance=tes[1].provenance)
    if clip is not None:
        meta.update(image_dim=int(clip.model.config.projection_dim), image_size=clip.image_size,
                    image_embeddings_provenance=clip.provenance)
    root = ws.latents_dir(name)
    _check_resume(root, meta, name)
    if not (root / META_FILE).exists():
        atomic_write_json(root / META_FILE, meta)
    null_names = ["text", "mask", *(SECOND_ENCODER_ARRAYS if len(tes) > 1 else ())]
    if not all((root / f"null_{n}.npy").exists() for n in null_names):
        null = null_conditioning(tes)
        write_null_text(root, null.pop("text"), null.pop("mask"), null)

    bucket_sets = {r: aspect_buckets(r, ae.downscale) for r in resolutions} if buckets else None
    plans = [plan_shard(root, idx, resolutions, bucket_sets, clip is not None)
             for idx in shard_share(shards, rank, world)]
    todo = [p for p in plans if p.pending or not p.text_done or not p.image_done]
    stats = EncodeStats(skipped_shards=len(plans) - len(todo))
    if on_start:
        on_start(sum(len(p.keys) for p in todo))
    started = time.time()
    for plan in todo:
        encode_shard(ws, root, plan, ae, tes, captioners, batch_size, stats, advance or (lambda n: None),
                     decode_workers, clip)
        stats.shards += 1
    seconds = time.time() - started
    encoded = sum(stats.latents.values())
    return {
        "name": name, "subset": subset, "resolutions": resolutions, "buckets": buckets,
        "shards_encoded": stats.shards, "shards_already_done": stats.skipped_shards,
        "text_encoders": encoders, "texts_encoded": stats.texts, "images_embedded": stats.image_embeddings,
        "latents_encoded": {str(r): n for r, n in sorted(stats.latents.items())},
        "undecodable": stats.undecodable, "missing_captions": stats.missing_captions,
        "seconds": round(seconds, 2), "latents_per_s": round(encoded / seconds, 1) if seconds > 0 else 0.0,
        "path": ws.relative(root),
    }
