"""Subset images as tensors: decode, center-crop, resize, and a held-out split.

Training the components here reads a few hundred to a few thousand images, so
they are decoded once into one uint8 tensor (N, 3, H, W) kept in memory
(10,000 images at 128 px are about 0.5 GB).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

import pyarrow.parquet as pq

from opencanvas.fetch.decode import DecodeError, load_rgb
from opencanvas.progress import progress_bar
from opencanvas.shards import index_paths, iter_shard
from opencanvas.workspace import Workspace

def flatten_alpha(img: Image.Image) -> Image.Image:
    """RGB; transparent pixels become white, not the black that a bare convert("RGB") gives."""
    if img.mode in ("RGBA", "LA", "P", "PA"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """The central square, resized to `size` x `size` (the SD / CommonCanvas preprocessing)."""
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)


def to_uint8_chw(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()  # (3, H, W)


def to_unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float in [-1, 1], the range VAEs are trained on."""
    return pixels.float().div(127.5).sub(1.0)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Float (B, 3, H, W) in [-1, 1] -> PIL images."""
    arr = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


@dataclass
class SubsetImages:
    keys: list[str]
    pixels: torch.Tensor    # uint8 (N, 3, H, W)
    skipped: int            # images that could not be decoded


def load_subset_images(ws: Workspace, subset: str, resolution: int, max_images: int | None = None,
                       keys: Sequence[str] | None = None) -> SubsetImages:
    """Decode the fetched images of `subset` (shard order), center-cropped to `resolution`."""
    shards = index_paths(ws.images_dir(subset))
    if not shards:
        raise FileNotFoundError(
            f"subset {subset!r} has no fetched image shards in {ws.images_dir(subset)}: "
            f"run `opencanvas fetch --subset {subset}` first")
    wanted = set(keys) if keys is not None else None

    total = sum(pq.read_metadata(p).num_rows for p in shards)
    limit = min(total, max_images) if max_images else total
    out_keys: list[str] = []
    arrays: list[np.ndarray] = []
    skipped = 0
    with progress_bar() as bar:
        task = bar.add_task(f"decode {subset}", total=limit, unit="img")
        for index in shards:
            status = pq.read_table(index, columns=["key", "status"]).to_pydict()
            ok = {k for k, s in zip(status["key"], status["status"]) if s == "ok"}
            for item in iter_shard(index.with_suffix(".tar")):
                if item.key not in ok or (wanted is not None and item.key not in wanted):
                    continue
                try:
                    arrays.append(to_uint8_chw(center_crop_resize(load_rgb(item.data, min_side=resolution),
                                                                  resolution)))
                except DecodeError:
                    skipped += 1
                    continue
                out_keys.append(item.key)
                bar.advance(task)
                if max_images and len(out_keys) >= max_images:
                    break
            if max_images and len(out_keys) >= max_images:
                break
    pixels = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty(0, 3, resolution, resolution,
                                                                           dtype=torch.uint8)
    return SubsetImages(out_keys, pixels, skipped)


def key_fraction(key: str) -> float:
    """A key's position in [0, 1), from its SHA-256: stable across runs, machines and subset growth."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def holdout_split(keys: Sequence[str], fraction: float, min_holdout: int = 4,
                  min_train: int = 8) -> tuple[list[int], list[int]]:
    """Indices (train, held-out): a key is held out when its hash fraction < `fraction`."""
    held = [i for i, k in enumerate(keys) if key_fraction(k) < fraction]
    train = [i for i, k in enumerate(keys) if key_fraction(k) >= fraction]
    if len(held) < min_holdout or len(train) < min_train:
        raise ValueError(
            f"too few images for a held-out split: {len(keys)} images give {len(train)} train and "
            f"{len(held)} held-out (need >= {min_train} and >= {min_holdout}); fetch more images, "
            f"raise --max-images, or change --holdout (now {fraction})")
    return train, held
