"""Which images a resolution takes, and the (height, width) each is resized to.

Without buckets every image is center-cropped to the square RxR, the
CommonCanvas / SD2 preprocessing. With aspect-ratio buckets (NovelAI 2022,
SDXL §2.3) an image goes to the bucket whose aspect ratio is nearest its own
(in log space), from a fixed set of sizes with about R*R pixels, so less of the
picture is cropped away. Either way an image qualifies for a resolution only
if its original size covers its target size: nothing is upscaled, as in the
paper's 256 px then 512 px schedule where only images of at least 512 px feed
the second phase.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from opencanvas.encode.store import Bucket

MAX_ASPECT = 2.0  # buckets span aspect ratios 1:2 .. 2:1


def bucket_step(resolution: int, downscale: int) -> int:
    """Side granularity of the buckets: R/8 (32 px at 256, 64 px at 512), a multiple of `downscale`."""
    return max(downscale, resolution // 8 // downscale * downscale)


def aspect_buckets(resolution: int, downscale: int) -> list[Bucket]:
    """(h, w) sizes, multiples of the step, with h*w <= R*R and the largest h for each w."""
    step, area = bucket_step(resolution, downscale), resolution * resolution
    out: set[Bucket] = {(resolution, resolution)}
    lo, hi = resolution / math.sqrt(2 * MAX_ASPECT), resolution * math.sqrt(MAX_ASPECT)
    for w in range(step, int(hi) + 1, step):
        h = area // w // step * step
        if w >= lo and h >= lo and max(h / w, w / h) <= MAX_ASPECT:
            out.add((h, w))
    return sorted(out)


def assign_bucket(width: int, height: int, buckets: list[Bucket]) -> Bucket:
    """The bucket nearest in log aspect ratio (ties go to the first, so the choice is stable)."""
    ratios = np.log(np.array([h / w for h, w in buckets]))
    return buckets[int(np.argmin(np.abs(ratios - math.log(height / width))))]


def target_size(width: int, height: int, resolution: int, buckets: list[Bucket] | None) -> Bucket | None:
    """The (h, w) an image of this original size is encoded at, or None when it is too small."""
    if width <= 0 or height <= 0:
        return None
    size = assign_bucket(width, height, buckets) if buckets else (resolution, resolution)
    return size if height >= size[0] and width >= size[1] else None


def crop_resize(img: Image.Image, size: Bucket) -> Image.Image:
    """The largest central crop with the target's aspect ratio, resized to (h, w) = `size`."""
    h, w = size
    scale = min(img.width / w, img.height / h)
    cw, ch = round(w * scale), round(h * scale)
    left, top = (img.width - cw) // 2, (img.height - ch) // 2
    img = img.crop((left, top, left + cw, top + ch))
    return img.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
