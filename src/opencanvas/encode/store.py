"""The latent store: fixed-record .npy shards read through memory maps.

Layout of `latents/<name>/` (one directory per latent set)::

    meta.json                         settings shared by every resolution (written first)
    null_text.npy  null_mask.npy      the empty prompt's embedding (L, D) fp16 + (L,) bool
    null_<array>.npy                  with two text encoders: the empty prompt's text2, mask2, pooled, pooled2
    text/shard-NNNNN/                 text embeddings of one image shard (all resolutions share them)
        text.npy   (N, K, L, D) fp16  hidden states, one slot per captioner (K = len(captioners))
        mask.npy   (N, K, L)    bool  attention mask; all False where a captioner has no caption
        text2.npy  (N, K, L2, D2) fp16  only with a second text encoder (`encode --text-encoder A
        mask2.npy  (N, K, L2)   bool    --text-encoder B`): its hidden states and mask,
        pooled.npy  (N, K, P1)  fp16    and both encoders' pooled embeddings (the final layer's
        pooled2.npy (N, K, P2)  fp16    EOS token, as SDXL adds to the timestep embedding)
        keys.parquet                  key, captions (K strings, "" where missing)
        done.json                     done-marker, written last
    image/shard-NNNNN/                only with `encode --image-embeddings CLIP`; rows = the text part's rows
        image.npy  (N, E)       fp16  the CLIP image tower's projected embedding, L2-normalised
                                      (zeros for an image that did not decode: it has no latent either)
        keys.parquet                  key
        done.json                     done-marker, written before any latent part of the shard
    res-256/shard-NNNNN/              latents of one image shard at one resolution
        <h>x<w>.mean.npy (n, C, h/8, w/8) fp16   one group per bucket (pixel size h x w);
        <h>x<w>.std.npy  (n, C, h/8, w/8) fp16   without --buckets the only bucket is RxR
        <h>x<w>.keys.parquet          key, text_row (row in the shard's text part)
        done.json                     done-marker, written last: {"buckets": {"HxW": n}, ...}

meta.json names the encoders: `text_encoders` (one or two specs; sets written before it existed
have only `text_encoder`, and open as one-encoder sets), `text2_len`/`text2_dim`/`pooled_dims` with a
second encoder, `image_embeddings` (the CLIP spec) and `image_dim` with image embeddings.

Why this format: a record is a fixed-size row of a C-contiguous array, so a
batch is one fancy-index gather per file from the page cache, with no decoding
(benchmarks/loader.py compares it with Parquet). Text embeddings (77x1024 fp16
is 154 KiB per caption, ~10x a 256 px latent) are stored once per image, not
once per resolution. Parts without a done.json are invisible to readers and
are rewritten by a resumed encode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from opencanvas.storage import atomic_path, atomic_write_json, atomic_write_parquet
from opencanvas.workspace import Workspace

FORMAT_VERSION = 1
META_FILE = "meta.json"
DONE_FILE = "done.json"

TEXT_KEYS_SCHEMA = pa.schema([("key", pa.string()), ("captions", pa.list_(pa.string()))])
IMAGE_KEYS_SCHEMA = pa.schema([("key", pa.string())])
# Per-caption arrays beside text.npy/mask.npy when a set has a second text encoder, (N, K, ...) each.
SECOND_ENCODER_ARRAYS = ("text2", "mask2", "pooled", "pooled2")
IMAGE_DIR = "image"
LATENT_KEYS_SCHEMA = pa.schema([("key", pa.string()), ("text_row", pa.int64())])

Bucket = tuple[int, int]  # (height, width) in pixels


def text_encoders(meta: dict[str, Any]) -> list[str]:
    """The text encoder specs of a latent set, first one first (older sets name only one)."""
    return list(meta.get("text_encoders") or [meta["text_encoder"]])


def text_arrays(meta: dict[str, Any]) -> tuple[str, ...]:
    """The per-caption arrays a set stores beyond text/mask."""
    return SECOND_ENCODER_ARRAYS if len(text_encoders(meta)) > 1 else ()


def has_image_embeddings(meta: dict[str, Any]) -> bool:
    return bool(meta.get("image_embeddings"))


def resolution_dirname(resolution: int) -> str:
    return f"res-{resolution}"


def bucket_name(bucket: Bucket) -> str:
    return f"{bucket[0]}x{bucket[1]}"


def parse_bucket(name: str) -> Bucket:
    h, w = name.split("x")
    return int(h), int(w)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """np.save to a temp file beside `path`, then rename (readers never see half an array).

    Streamed to disk, not through atomic_write_bytes: a text part can be hundreds of MB.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def is_done(part: Path) -> bool:
    return (part / DONE_FILE).exists()


def clear_stale_temps(part: Path) -> None:
    """Drop temp files a killed writer left in `part` (each part has a single writer)."""
    for tmp in Path(part).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# ---- writers (used by stage.py and by the benchmark's synthetic store) ------------------

def _stored(name: str, array: np.ndarray) -> np.ndarray:
    """Masks as bool, embeddings as fp16."""
    return array.astype(bool if name.startswith("mask") else np.float16, copy=False)


def write_text_part(part: Path, keys: list[str], captions: list[list[str]], text: np.ndarray,
                    mask: np.ndarray, stats: dict[str, Any], extra: dict[str, np.ndarray] | None = None) -> None:
    """One image shard's text embeddings: text (N, K, L, D) fp16, mask (N, K, L) bool, and the
    second encoder's `extra` arrays (SECOND_ENCODER_ARRAYS, (N, K, ...) each) where the set has one."""
    extra = extra or {}
    if not (len(keys) == len(captions) == text.shape[0] == mask.shape[0]) \
            or any(a.shape[:2] != text.shape[:2] for a in extra.values()):
        raise ValueError("keys, captions, text, mask and the extra arrays must have one row per image")
    clear_stale_temps(part)
    for name, array in {"text": text, "mask": mask, **extra}.items():
        save_npy_atomic(part / f"{name}.npy", _stored(name, array))
    atomic_write_parquet(part / "keys.parquet",
                         pa.Table.from_pydict({"key": keys, "captions": captions}, schema=TEXT_KEYS_SCHEMA))
    atomic_write_json(part / DONE_FILE, {**stats, "count": len(keys)})


@dataclass
class BucketLatents:
    """The latents of one bucket of one shard: mean/std (n, C, h, w) fp16."""

    keys: list[str]
    text_rows: list[int]
    mean: np.ndarray
    std: np.ndarray


def write_latent_part(part: Path, buckets: dict[Bucket, BucketLatents], stats: dict[str, Any]) -> None:
    """One image shard's latents at one resolution, one file group per bucket, done.json last."""
    clear_stale_temps(part)
    counts = {}
    for bucket, b in sorted(buckets.items()):
        if not b.keys:
            continue
        name = bucket_name(bucket)
        save_npy_atomic(part / f"{name}.mean.npy", b.mean.astype(np.float16, copy=False))
        save_npy_atomic(part / f"{name}.std.npy", b.std.astype(np.float16, copy=False))
        atomic_write_parquet(part / f"{name}.keys.parquet", pa.Table.from_pydict(
            {"key": b.keys, "text_row": b.text_rows}, schema=LATENT_KEYS_SCHEMA))
        counts[name] = len(b.keys)
    atomic_write_json(part / DONE_FILE, {**stats, "buckets": counts, "count": sum(counts.values())})


def write_null_text(root: Path, text: np.ndarray, mask: np.ndarray, extra: dict[str, np.ndarray] | None = None
                    ) -> None:
    """The empty prompt's embedding (L, D) and mask (L,), for caption dropout / CFG, and with a
    second encoder its `extra` arrays (text2 (L2, D2), mask2 (L2,), pooled (P1,), pooled2 (P2,))."""
    for name, array in {"text": text, "mask": mask, **(extra or {})}.items():
        save_npy_atomic(root / f"null_{name}.npy", _stored(name, array))


def write_image_part(part: Path, keys: list[str], image: np.ndarray, stats: dict[str, Any]) -> None:
    """One image shard's CLIP image embeddings (N, E), rows as in its text part, done.json last."""
    if len(keys) != image.shape[0]:
        raise ValueError("keys and image embeddings must have one row per image")
    clear_stale_temps(part)
    save_npy_atomic(part / "image.npy", image.astype(np.float16, copy=False))
    atomic_write_parquet(part / "keys.parquet", pa.Table.from_pydict({"key": keys}, schema=IMAGE_KEYS_SCHEMA))
    atomic_write_json(part / DONE_FILE, {**stats, "count": len(keys)})


# ---- reader ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LatentRecord:
    key: str
    mean: np.ndarray       # (C, h, w) fp16: the autoencoder posterior's mean (raw, not shifted/scaled)
    std: np.ndarray        # (C, h, w) fp16: its standard deviation; z = mean + std * eps at train time
    text: np.ndarray       # (K, L, D) fp16: one hidden-state sequence per captioner
    mask: np.ndarray       # (K, L) bool: all False where that captioner gave no caption
    captions: list[str]    # K strings ("" where missing)
    # With a second text encoder: text2 (K, L2, D2), mask2 (K, L2), pooled (K, P1), pooled2 (K, P2).
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    image: np.ndarray | None = None  # (E,) fp16: the CLIP image embedding, with `encode --image-embeddings`


@dataclass
class _Part:
    """One bucket group of one shard: the unit a batch gathers from."""

    bucket: Bucket
    mean_path: Path
    std_path: Path
    text_dir: Path
    keys: list[str]
    text_rows: np.ndarray  # (n,) int64
    _maps: dict[str, np.ndarray] = field(default_factory=dict)
    _captions: list[list[str]] | None = None

    def _map(self, name: str, path: Path) -> np.ndarray:
        if name not in self._maps:
            self._maps[name] = np.load(path, mmap_mode="r")
        return self._maps[name]

    def mean(self) -> np.ndarray:
        return self._map("mean", self.mean_path)

    def std(self) -> np.ndarray:
        return self._map("std", self.std_path)

    def text(self) -> np.ndarray:
        return self._map("text", self.text_dir / "text.npy")

    def mask(self) -> np.ndarray:
        return self._map("mask", self.text_dir / "mask.npy")

    def text_array(self, name: str) -> np.ndarray:
        """A per-caption array of the text part, (N, K, ...): text, mask or one of SECOND_ENCODER_ARRAYS."""
        return self._map(name, self.text_dir / f"{name}.npy")

    def image(self) -> np.ndarray:
        """(N, E) CLIP image embeddings, rows as in the text part."""
        return self._map("image", self.text_dir.parent.parent / IMAGE_DIR / self.text_dir.name / "image.npy")

    def captions(self, text_row: int) -> list[str]:
        if self._captions is None:
            table = pq.read_table(self.text_dir / "keys.parquet", columns=["captions"])
            self._captions = table.column("captions").to_pylist()
        return list(self._captions[text_row])

    def close(self) -> None:
        self._maps = {}


class LatentSet:
    """All finished records of one latent set at one resolution, with random access.

    Records are ordered by (bucket, image shard, row), so a record's index does
    not depend on the order in which shards were encoded. Memory maps open
    lazily and are dropped on pickling, so a LatentSet can go to worker processes.
    """

    def __init__(self, root: Path, resolution: int, meta: dict[str, Any]) -> None:
        self.root = Path(root)
        self.resolution = resolution
        res_dir = self.root / resolution_dirname(resolution)
        parts: list[_Part] = []
        counts: dict[str, int] = {}
        for shard_dir in sorted(p for p in res_dir.glob("shard-*") if is_done(p)):
            done = json.loads((shard_dir / DONE_FILE).read_text())
            text_dir = self.root / "text" / shard_dir.name
            for name, n in done["buckets"].items():
                if n == 0:
                    continue
                keys = pq.read_table(shard_dir / f"{name}.keys.parquet")
                parts.append(_Part(parse_bucket(name), shard_dir / f"{name}.mean.npy",
                                   shard_dir / f"{name}.std.npy", text_dir, keys.column("key").to_pylist(),
                                   keys.column("text_row").to_numpy().astype(np.int64)))
                counts[name] = counts.get(name, 0) + n
        parts.sort(key=lambda p: (p.bucket, p.mean_path.parent.name))
        self.parts = parts
        sizes = np.array([len(p.keys) for p in parts], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # Per-record lookups, (N,) each: which part, which row in it.
        self.part_of = np.repeat(np.arange(len(parts), dtype=np.int32), sizes)
        self.row_of = np.arange(int(self._offsets[-1]), dtype=np.int64) - self._offsets[self.part_of]
        self._available: np.ndarray | None = None
        down = int(meta["downscale"])
        self.meta: dict[str, Any] = {
            **meta, "resolution": resolution, "latent_size": resolution // down, "count": len(self),
            "bucket_sizes": {name: [parse_bucket(name)[0] // down, parse_bucket(name)[1] // down]
                             for name in sorted(counts)},
            "bucket_counts": dict(sorted(counts.items())),
        }
        self.text_arrays = text_arrays(meta)      # per-caption arrays beyond text/mask
        self.has_image = has_image_embeddings(meta)
        self._null: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        for p in self.parts:
            p.close()
        return self.__dict__

    @property
    def buckets(self) -> list[Bucket]:
        return sorted({p.bucket for p in self.parts})

    def bucket_indices(self) -> dict[Bucket, np.ndarray]:
        """The record indices of each bucket (contiguous ranges, since parts sort by bucket)."""
        out: dict[Bucket, list[np.ndarray]] = {}
        for i, p in enumerate(self.parts):
            out.setdefault(p.bucket, []).append(np.arange(self._offsets[i], self._offsets[i + 1]))
        return {b: np.concatenate(v) for b, v in out.items()}

    def available_captions(self) -> np.ndarray:
        """(N, K) bool: which captioners gave each record a caption (a mask with any token)."""
        if self._available is None:
            k = len(self.meta["captioners"])
            avail = np.zeros((len(self), k), dtype=bool)
            for i, p in enumerate(self.parts):
                avail[self._offsets[i]:self._offsets[i + 1]] = p.mask()[p.text_rows].any(axis=-1)
            self._available = avail
        return self._available

    def _locate(self, i: int) -> tuple[_Part, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} out of range for a latent set of {len(self)}")
        i %= len(self)
        return self.parts[self.part_of[i]], int(self.row_of[i])

    def get(self, i: int) -> LatentRecord:
        part, row = self._locate(i)
        text_row = int(part.text_rows[row])
        return LatentRecord(
            key=part.keys[row],
            mean=np.array(part.mean()[row]), std=np.array(part.std()[row]),
            text=np.array(part.text()[text_row]), mask=np.array(part.mask()[text_row]),
            captions=part.captions(text_row),
            extra={name: np.array(part.text_array(name)[text_row]) for name in self.text_arrays},
            image=np.array(part.image()[text_row]) if self.has_image else None,
        )

    def key(self, i: int) -> str:
        part, row = self._locate(i)
        return part.keys[row]

    def keys(self) -> list[str]:
        return [k for p in self.parts for k in p.keys]

    def null_text(self) -> tuple[np.ndarray, np.ndarray]:
        """The empty prompt's embedding: (L, D) fp16 and (L,) bool."""
        null = self.null_conditioning()
        return null["text"], null["mask"]

    def null_conditioning(self) -> dict[str, np.ndarray]:
        """The empty prompt's per-caption arrays: text (L, D), mask (L,) and, with a second
        encoder, text2 (L2, D2), mask2 (L2,), pooled (P1,), pooled2 (P2,) (each encoder's dropout)."""
        if self._null is None:
            self._null = {name: np.load(self.root / f"null_{name}.npy") for name in ("text", "mask", *self.text_arrays)}
        return self._null

    def empty_batch(self, indices: np.ndarray, slots: int = 0) -> dict[str, np.ndarray]:
        """Uninitialised batch arrays for `indices` (all of one bucket): mean, std, text, mask, and the
        set's extra arrays (text2, mask2, pooled, pooled2; image). With `slots` > 0: that many captions
        per record, text (B, S, L, D), mask (B, S, L) (and the extra per-caption arrays likewise)."""
        first = self.parts[self.part_of[int(indices[0])]]
        c, h, w = first.mean().shape[1:]
        b = len(indices)
        per = (b, slots) if slots else (b,)
        out = {"mean": np.empty((b, c, h, w), np.float16), "std": np.empty((b, c, h, w), np.float16)}
        for name in ("text", "mask", *self.text_arrays):
            array = first.text_array(name)  # (N, K, ...)
            out[name] = np.empty((*per, *array.shape[2:]), array.dtype)
        if self.has_image:
            out["image"] = np.empty((b, first.image().shape[1]), np.float16)
        return out

    def gather(self, indices: np.ndarray, caption_slots: np.ndarray,
               out: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """A batch as numpy: mean/std (B, C, h, w), text (B, L, D), mask (B, L), keys; with a second
        text encoder also text2 (B, L2, D2), mask2 (B, L2), pooled (B, P1), pooled2 (B, P2) of the same
        caption; with image embeddings image (B, E).

        `caption_slots[b]` picks the captioner slot of record `indices[b]`; -1 means
        "no caption", which gets the empty prompt (what caption dropout trains on).
        2-D `caption_slots` (B, S) picks S captions per record (multi-caption conditioning):
        text is then (B, S, L, D) and mask (B, S, L).
        All records must share one bucket (the loader batches within buckets).
        Ascending indices (as the loader sends) are copied once, straight from the
        memory maps into the batch (np.take with out=, which releases the GIL);
        `out` (from `empty_batch`) lets the caller choose where the arrays live.
        """
        indices = np.asarray(indices, dtype=np.int64)
        caption_slots = np.asarray(caption_slots, dtype=np.int64)
        perm = np.argsort(indices, kind="stable")
        order: np.ndarray | None = None  # None: already ascending, gather in place
        if not np.all(perm[1:] > perm[:-1]):
            order = perm
            indices, caption_slots = indices[order], caption_slots[order]
        parts = self.part_of[indices]
        first = self.parts[parts[0]]
        if any(self.parts[p].bucket != first.bucket for p in np.unique(parts)):
            raise ValueError("a batch must come from one bucket; use LatentLoader, which batches per bucket")
        b = len(indices)
        per_record = caption_slots.shape[1] if caption_slots.ndim == 2 else 0
        out = out if out is not None and order is None else self.empty_batch(indices, per_record)
        per_caption = ("text", "mask", *self.text_arrays)
        k = first.text().shape[1]
        keys: list[str] = []
        slots = np.maximum(caption_slots, 0)
        # Sorted indices make each part's records one contiguous slice of the batch.
        bounds = np.flatnonzero(np.diff(parts)) + 1
        for lo, hi in zip([0, *bounds.tolist()], [*bounds.tolist(), b], strict=True):
            part, rows = self.parts[parts[lo]], self.row_of[indices[lo:hi]]
            np.take(part.mean(), rows, axis=0, out=out["mean"][lo:hi])
            np.take(part.std(), rows, axis=0, out=out["std"][lo:hi])
            # Row-major (N, K, ...) flattened to (N*K, ...): only the chosen caption is read.
            text_rows = part.text_rows[rows]
            flat = (text_rows[:, None] if per_record else text_rows) * k + slots[lo:hi]  # (n,) or (n, S)
            for name in per_caption:
                array = part.text_array(name)
                np.take(array.reshape(-1, *array.shape[2:]), flat, axis=0, out=out[name][lo:hi])
            if self.has_image:
                np.take(part.image(), text_rows, axis=0, out=out["image"][lo:hi])
            keys.extend(part.keys[r] for r in rows.tolist())
        missing = caption_slots < 0
        if missing.any():
            for name, null in self.null_conditioning().items():
                out[name][missing] = null
        batch: dict[str, Any] = {name: out[name] for name in ("mean", "std", *per_caption)}
        if self.has_image:
            batch["image"] = out["image"]
        if order is not None:  # back to the caller's order
            inverse = np.argsort(order)
            batch = {name: array[inverse] for name, array in batch.items()}
            keys = [keys[i] for i in inverse.tolist()]
        return {**batch, "keys": keys}


def read_meta(root: Path) -> dict[str, Any]:
    path = Path(root) / META_FILE
    if not path.exists():
        raise FileNotFoundError(f"no latent set at {root}: run `opencanvas encode --name {Path(root).name} ...` first")
    return json.loads(path.read_text())


def open_latents(ws: Workspace, name: str, resolution: int | None = None) -> LatentSet:
    """The finished records of latent set `name` at `resolution` (the only one if None)."""
    root = ws.latents_dir(name)
    meta = read_meta(root)
    resolutions = [int(r) for r in meta["resolutions"]]
    if resolution is None:
        if len(resolutions) != 1:
            raise ValueError(f"latent set {name!r} has resolutions {resolutions}: pass resolution=")
        resolution = resolutions[0]
    if resolution not in resolutions:
        raise ValueError(f"latent set {name!r} has no resolution {resolution}; it has {resolutions}")
    return LatentSet(root, resolution, meta)
