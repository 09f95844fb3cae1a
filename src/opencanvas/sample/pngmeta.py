"""PNG text metadata: what made an image, and under which data licenses.

Every sample carries `prompt`, `negative_prompt`, `seed`, `sampler`, `steps`,
`guidance`, the model name and weights hash, and the training data's license
policy and catalog hash, as PNG tEXt/iTXt chunks (readable by `exiftool`,
PIL, and most image viewers), plus all of it as JSON under `opencanvas`; and the
machine-readable AI marks (IPTC XMP, C2PA when signing is set up) from opencanvas.marking.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from opencanvas.marking.marker import encode_marked, mark_image_bytes, png_info_with_xmp
from opencanvas.marking.xmp import read_xmp_fields
from opencanvas.storage import atomic_write_bytes

REQUIRED_KEYS = ("prompt", "negative_prompt", "seed", "sampler", "steps", "guidance", "model", "weights_hash",
                 "license_policy", "catalog_hash")


def png_bytes(image: Image.Image, meta: dict[str, Any]) -> bytes:
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ValueError(f"sample metadata lacks {', '.join(missing)}")
    info = PngInfo()
    for key, value in meta.items():
        info.add_itxt(key, value if isinstance(value, str) else json.dumps(value))
    info.add_itxt("opencanvas", json.dumps(meta, sort_keys=True, default=str))
    png_info_with_xmp(info, meta)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(path: Path, image: Image.Image, meta: dict[str, Any]) -> None:
    """Write a PNG with metadata atomically (a killed run never leaves half an image)."""
    atomic_write_bytes(Path(path), mark_image_bytes(png_bytes(image, meta), "image/png", meta, Path(path).name))


def read_png_meta(path: Path) -> dict[str, Any]:
    """The metadata `save_png` wrote (decoded from the `opencanvas` JSON chunk)."""
    with Image.open(path) as img:
        text = getattr(img, "text", {})
        if "opencanvas" not in text:
            raise ValueError(f"{path} has no OpenCanvas metadata")
        return json.loads(text["opencanvas"])


IMAGE_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "webp"}  # --format -> file suffix


def save_image(path: Path, image: Image.Image, meta: dict[str, Any]) -> None:
    """Write a PNG (`save_png`), or a JPEG/WebP whose XMP holds the metadata, by the path's suffix; marked."""
    path = Path(path)
    fmt = {"jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}.get(path.suffix.lower().lstrip("."))
    if fmt is None:
        save_png(path, image, meta)
    else:
        atomic_write_bytes(path, encode_marked(image, meta, fmt))


def read_image_meta(path: Path) -> dict[str, Any]:
    """The metadata `save_image` wrote (PNG text chunk, or the XMP `opencanvas:generation` of a JPEG/WebP)."""
    if Path(path).suffix.lower() == ".png":
        return read_png_meta(path)
    with Image.open(path) as img:
        generation = read_xmp_fields(img.info.get("xmp")).get("generation")
    if generation is None:
        raise ValueError(f"{path} has no OpenCanvas metadata")
    return json.loads(generation)
