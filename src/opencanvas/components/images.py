"""Subset images as tensors: decode, center-crop and resize every fetched image of a subset.

Training the components here reads a few hundred to a few thousand images, so
they are decoded once into one uint8 tensor (N, 3, H, W) kept in memory
(10,000 images at 128 px are about 0.5 GB).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from opencanvas.fetch.decode import DecodeError, load_rgb
from opencanvas.pixels import center_crop_resize, to_uint8_chw
from opencanvas.progress import progress_bar
from opencanvas.shards import index_paths, iter_shard
from opencanvas.workspace import Workspace


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
