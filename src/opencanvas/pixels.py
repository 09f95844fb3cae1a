"""Pixel helpers shared by every stage that touches images (foundation layer: imports no stage).

PIL images in, PIL images or arrays out. torch is imported only by the two tensor helpers,
so the caption loader's worker processes do not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


WHITE = (255, 255, 255)
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


def has_alpha(img: Image.Image) -> bool:
    """An alpha channel, or a transparent colour key (PNG tRNS on palette, grey or RGB images)."""
    return img.mode in ALPHA_MODES or (img.mode in ("P", "L", "RGB") and "transparency" in img.info)


def flatten_alpha(img: Image.Image) -> Image.Image:
    """RGB; transparent pixels become white, not the black that a bare convert("RGB") gives.

    Transparent pixels carry arbitrary colours, and clip art is drawn for a white page. Every mode
    PIL opens (palette, CMYK, L, 1, YCbCr, LAB, HSV) comes out RGB; an RGB image comes back as is.
    """
    if has_alpha(img):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img if img.mode == "RGB" else img.convert("RGB")


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
