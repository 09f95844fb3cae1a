"""What an evaluation compares against: prompts (a file or the held-out captions) and reference images.

The held-out split is the components stage's: a key is held out when the first
8 bytes of its SHA-256, as a fraction of 2^64, fall below `fraction`
(`opencanvas.splits.key_fraction`), so it is stable across runs,
machines and subset growth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from opencanvas.workspace import Workspace

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
HELDOUT_FRACTION = 0.1


def is_heldout(key: str, fraction: float = HELDOUT_FRACTION) -> bool:
    from opencanvas.splits import key_fraction

    return key_fraction(key) < fraction


def heldout_prompts(ws: Workspace, config: dict[str, Any], fraction: float = HELDOUT_FRACTION) -> list[str]:
    """Captions of the held-out keys of the run's training subset, by its first captioner with captions."""
    data = config.get("data", {})
    subset, captioners = data.get("subset"), list(data.get("captioners") or [])
    if not subset or not captioners:
        raise ValueError("the run config names no training subset/captioners: pass --prompts FILE instead of heldout")
    from opencanvas.captions import read_captions

    keys = pq.read_table(ws.subset_path(subset), columns=["key"]).column("key").to_pylist()
    for captioner in captioners:
        table = read_captions(ws, captioner, keys)
        rows = zip(*(table.column(c).to_pylist() for c in ("key", "caption", "flagged")))
        prompts = sorted((key, caption) for key, caption, flagged in rows
                         if not flagged and caption and is_heldout(key, fraction))
        if prompts:
            return [caption for _, caption in prompts]
    raise ValueError(f"no held-out captions for subset {subset!r} (captioners {captioners}, fraction {fraction}): "
                     "caption more images or pass --prompts FILE")


@dataclass
class ReferenceImages:
    names: list[str]            # catalog keys (subset) or file names (directory)
    images: list[Image.Image]
    source: str                 # "subset:<name>" or the directory


def load_reference(ws: Workspace, reference: str, limit: int) -> ReferenceImages:
    """Up to `limit` RGB images from a subset's fetched shards, or from a directory of image files."""
    from opencanvas.fetch.decode import DecodeError, load_rgb  # the fetch stage's decoder: same RGB as training saw
    from opencanvas.shards import finished_shards, iter_shard

    images_dir = ws.root / "images" / reference   # checked below: only a valid subset name reads it as one
    if "/" not in reference and images_dir.is_dir() and ws.images_dir(reference) == images_dir:
        names, images = [], []
        for tar in finished_shards(images_dir):
            for item in iter_shard(tar):
                names.append(item.key)
                images.append(load_rgb(item.data))
                if len(names) >= limit:
                    return ReferenceImages(names, images, f"subset:{reference}")
        if not names:
            raise ValueError(f"subset {reference!r} has no fetched images under {images_dir}; run `opencanvas fetch`")
        return ReferenceImages(names, images, f"subset:{reference}")
    path = Path(reference)
    if not path.is_dir():
        raise FileNotFoundError(f"--reference {reference!r} is neither a fetched subset under "
                                f"{ws.root / 'images'} nor a directory of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    images = []
    for p in files:
        try:
            images.append(load_rgb(p.read_bytes()))
        except DecodeError as e:
            raise ValueError(f"reference image {p} cannot be decoded ({e}): remove or replace it") from None
    return ReferenceImages([p.relative_to(path).as_posix() for p in files], images, str(path))
