"""The training images closest to a generated one, with their attribution: the eval stage's memorization
search (CLIP image features by cosine, and 64-bit perceptual hashes by Hamming distance) over a feature
index of the run's training set, built once per run and cached in `runs/<run>/web/neighbours/`.

Held-out keys are left out of the index: training never saw them (`opencanvas.splits`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from opencanvas.storage import atomic_path, atomic_write_json
from opencanvas.workspace import Workspace

INDEX_VERSION = 1
MAX_INDEX = 50_000
BATCH = 64


@dataclass
class NeighbourIndex:
    subset: str
    keys: list[str]
    shards: list[str]            # the shard tar holding each key (a file name under images/<subset>/)
    phash: np.ndarray            # (N,) uint64
    clip: np.ndarray | None      # (N, D) float32, L2-normalised; None without a CLIP
    clip_name: str | None


def index_dir(ws: Workspace, run: str) -> Path:
    return ws.run_dir(run) / "web" / "neighbours"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def build_index(ws: Workspace, run: str, clip: Any | None) -> NeighbourIndex:
    """Hash (and embed, with a CLIP) every trained image of the run's subset; writes the cache, index.json last."""
    from opencanvas.fetch.decode import DecodeError, load_rgb
    from opencanvas.sample.evalsets import is_heldout
    from opencanvas.sample.features import ClipFeatures
    from opencanvas.sample.metrics import phash_ints
    from opencanvas.shards import finished_shards, iter_shard

    config = json.loads((ws.run_dir(run) / "config.json").read_text(encoding="utf-8"))
    subset = str(config.get("data", {}).get("subset") or "")
    images_dir = ws.images_dir(subset)
    if not subset or not images_dir.is_dir():
        raise FileNotFoundError(f"run {run!r} names training subset {subset!r}, which has no fetched images under "
                                f"{images_dir}: nearest training images need `opencanvas fetch` of that subset")
    features = ClipFeatures(clip) if clip is not None else None
    keys: list[str] = []
    shards: list[str] = []
    hashes: list[np.ndarray] = []
    feats: list[Any] = []
    batch: list[Image.Image] = []

    def flush() -> None:
        if batch:
            hashes.append(phash_ints(batch))
            if features is not None:
                feats.append(features(batch).astype(np.float32))
            batch.clear()

    for tar in finished_shards(images_dir):
        for item in iter_shard(tar):
            if is_heldout(item.key) or len(keys) >= MAX_INDEX:
                continue
            try:
                batch.append(load_rgb(item.data))
            except DecodeError:
                continue   # fetch accepted it; if it no longer decodes, it cannot be a neighbour
            keys.append(item.key)
            shards.append(tar.name)
            if len(batch) >= BATCH:
                flush()
    flush()
    if not keys:
        raise ValueError(f"subset {subset!r} has no trained images to compare against")
    out = index_dir(ws, run)
    phash = np.concatenate(hashes)
    clip_arr = np.concatenate(feats) if feats else None
    _save_npy(out / "phash.npy", phash)
    if clip_arr is not None:
        clip_arr /= np.linalg.norm(clip_arr, axis=1, keepdims=True).clip(min=1e-12)
        _save_npy(out / "clip.npy", clip_arr)
    clip_name = None if clip is None else str(clip.name)
    atomic_write_json(out / "index.json", {"version": INDEX_VERSION, "subset": subset, "keys": keys,
                                           "shards": shards, "clip": clip_name,
                                           "catalog_hash": config.get("data", {}).get("catalog_hash")})
    return NeighbourIndex(subset, keys, shards, phash, clip_arr, clip_name)


def load_index(ws: Workspace, run: str, clip: Any | None) -> NeighbourIndex:
    """The cached index when it matches (same CLIP), else a freshly built one."""
    d = index_dir(ws, run)
    want = None if clip is None else str(clip.name)
    try:
        meta = json.loads((d / "index.json").read_text(encoding="utf-8"))
        if meta.get("version") == INDEX_VERSION and meta.get("clip") == want:
            phash = np.load(d / "phash.npy", allow_pickle=False)
            feats = np.load(d / "clip.npy", allow_pickle=False) if want else None
            if len(phash) == len(meta["keys"]) and (feats is None or len(feats) == len(phash)):
                return NeighbourIndex(meta["subset"], meta["keys"], meta["shards"], phash, feats, want)
    except (OSError, ValueError, KeyError):
        pass
    return build_index(ws, run, clip)


def nearest(index: NeighbourIndex, image: Image.Image, clip: Any | None, k: int = 4) -> dict[str, list[dict]]:
    """Top-k training images by CLIP cosine and by perceptual-hash distance."""
    from opencanvas.sample.features import ClipFeatures
    from opencanvas.sample.metrics import hamming, phash_ints

    out: dict[str, list[dict]] = {"clip": [], "phash": []}
    dist = hamming(phash_ints([image]), index.phash)[0]                       # (N,)
    for i in np.argsort(dist, kind="stable")[:k]:
        out["phash"].append({"index": int(i), "key": index.keys[i], "distance": int(dist[i])})
    if clip is not None and index.clip is not None:
        q = ClipFeatures(clip)([image]).astype(np.float64)[0]
        q /= max(float(np.linalg.norm(q)), 1e-12)
        sims = index.clip.astype(np.float64) @ q                              # (N,)
        for i in np.argsort(-sims, kind="stable")[:k]:
            out["clip"].append({"index": int(i), "key": index.keys[i], "cosine": float(sims[i])})
    return out


def attribution(ws: Workspace, keys: list[str]) -> dict[str, dict[str, Any]]:
    """TASL (title, author, source, license) of each key from the catalog."""
    from opencanvas.catalog.query import catalog_rows

    if not keys:
        return {}
    rows = catalog_rows(ws, sorted(set(keys))).to_pylist()
    fields = ("title", "creator", "creator_url", "landing_url", "license_id", "license_version", "license_url")
    return {r["key"]: {f: r.get(f) for f in fields} for r in rows}


def training_image(ws: Workspace, index: NeighbourIndex, i: int) -> tuple[bytes, str] | None:
    """The stored bytes and extension of index entry i, read from its shard (nothing else is reachable)."""
    from opencanvas.shards import iter_shard

    if not 0 <= i < len(index.keys):
        return None
    tar = ws.images_dir(index.subset) / index.shards[i]
    for item in iter_shard(tar):
        if item.key == index.keys[i]:
            return item.data, item.ext
    return None
