"""Defensive image decoding: any bytes either become a clean 8-bit RGB image or a reason.

What arrives from third-party sources is untrusted: truncated and corrupt files,
decompression bombs, CMYK and palette modes, alpha, 16-bit samples, EXIF
rotation and animations. `decode_image` normalises all of them and raises
`DecodeError(reason)` for what cannot be used, so a bad image never stops a stage.

The pixel caps are checked on the header, before any pixel is decoded.
`max_pixels` (default 64 MP) bounds what is kept: nothing the model trains on
needs more than a few megapixels. A JPEG is first reduced with libjpeg's DCT
scaling (`draft`) when a target side is known, and the cap applies to what will
actually be decoded. PNG and the other formats cannot be decoded at a reduced
scale: the Open Clip Art PNGs include a dozen legitimate 100-620 MP drawings.
Those up to `max_decode_pixels` (default 180 MP, about PIL's own bomb warning,
~0.7 GB as RGBA) are decoded whole, one at a time per process, and box-reduced
at once below `max_pixels`; beyond it they are refused as bombs with
"too-many-pixels: W x H > cap".
"""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from opencanvas.pixels import flatten_alpha, has_alpha

DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_DECODE_PIXELS = 180_000_000  # PIL itself refuses at open beyond 2 x 89 MP
# Decoding a 100+ MP image whole costs up to 0.7 GB: one at a time per process, whatever the thread count.
_OVERSIZED = threading.BoundedSemaphore(1)
# Formats that are stored as JPEG after re-encoding (lossy at the source anyway);
# everything else (PNG, GIF, BMP, TIFF, ...) is stored as lossless PNG.
LOSSY_FORMATS = frozenset({"JPEG", "MPO", "WEBP"})
_SRGB = ImageCms.createProfile("sRGB")


class DecodeError(ValueError):
    """An image that cannot be used; `reason` is short and machine-groupable ('kind: detail')."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Decoded:
    image: Image.Image          # mode "RGB", upright
    format: str                 # PIL format name of the source, e.g. "PNG", "JPEG"
    original_size: tuple[int, int]  # (width, height) upright, before any draft reduction
    pristine: bool              # no mode, ICC or rotation change: the source's bytes show these pixels
    drafted: bool = False       # decoded at a reduced JPEG DCT scale


def load_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 0) -> Image.Image:
    """Decode untrusted bytes to an upright 8-bit RGB image (raises DecodeError).

    Every stage that reads shard images decodes them here, so they see the pixels
    (and the pixel cap) the fetch stage accepted. With `min_side`, a large JPEG is
    decoded at a reduced DCT scale whose short side is still >= `min_side` (a centre
    crop of that side needs no more).
    """
    target = (lambda w, h: -(-min_side * max(w, h) // min(w, h))) if min_side else None
    return decode_image(data, max_pixels, target_long_side=target).image


DraftTarget = Callable[[int, int], "int | None"]


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 target_long_side: int | DraftTarget | None = None, max_decode_pixels: int | None = None) -> Decoded:
    """Decode with every defence. With `target_long_side` (a number, or a function of the
    source's (width, height)), a larger JPEG is decoded at a reduced DCT scale whose long
    side is still >= the target. The whole bitstream is still read, so damage is still found.
    With `max_decode_pixels` > `max_pixels`, an image between the two is decoded whole and
    box-reduced below `max_pixels` (`drafted` is then True); without it, it is refused."""
    cap = max(max_pixels, max_decode_pixels or 0)
    with warnings.catch_warnings():
        # We enforce our own cap below; PIL's warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img: Image.Image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as e:
            raise DecodeError(f"too-many-pixels: {_bomb_pixels(e)} > {cap}") from None
        except UnidentifiedImageError:
            raise DecodeError(f"undecodable: not a recognised image ({len(data)} bytes)") from None
        except (OSError, ValueError, SyntaxError) as e:
            raise DecodeError(f"undecodable: {e}") from None
        fmt = img.format or "unknown"
        width, height = img.size
        animated = getattr(img, "n_frames", 1) > 1
        if animated:
            img.seek(0)  # the first frame is the picture
        target = target_long_side(width, height) if callable(target_long_side) else target_long_side
        if target and fmt == "JPEG" and max(width, height) >= 2 * target:
            s = target / max(width, height)
            # draft() picks the smallest 1/2, 1/4 or 1/8 scale that is still >= the requested size.
            img.draft(img.mode, (max(1, round(width * s)), max(1, round(height * s))))
        pixels = img.size[0] * img.size[1]
        if pixels > cap:
            raise DecodeError(f"too-many-pixels: {width}x{height} > {cap}")
        oversized = pixels > max_pixels
        try:
            if oversized:
                with _OVERSIZED:
                    img.load()
                    img = _reduce_below(img, max_pixels, target)
            else:
                img.load()
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            message = str(e)
            kind = "truncated" if "truncated" in message or isinstance(e, EOFError) else "undecodable"
            raise DecodeError(f"{kind}: {message}") from None
        drafted = img.size != (width, height)
        decoded = _normalise(img, fmt, (width, height))
        # An animation (GIF, APNG) is never stored as is: the shard holds its first frame.
        # Not pristine when reduced below max_pixels: the source's bytes must not be stored as they are.
        return Decoded(decoded.image, fmt, decoded.original_size, decoded.pristine and not animated and not oversized,
                       drafted)


def _reduce_below(img: Image.Image, max_pixels: int, target: int | None) -> Image.Image:
    """Box-reduce by an integer factor to at most `max_pixels`, and further while the long side stays
    >= 3 x `target` (the later Lanczos resize then loses nothing). EXIF and ICC data are kept."""
    factor = math.ceil(math.sqrt(img.size[0] * img.size[1] / max_pixels))
    if target:
        factor = max(factor, max(img.size) // (3 * target))
    if img.mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "I", "F"):  # P, 1, I;16: reduce() needs a plain mode
        img = img.convert("RGBA" if img.mode in ("P", "PA") else "I" if img.mode.startswith("I;16") else "L")
    reduced = img.reduce(factor)
    reduced.info = dict(img.info)
    exif = img.getexif()
    if exif:
        reduced.info["exif"] = exif.tobytes()
    return reduced


def _normalise(img: Image.Image, fmt: str, size: tuple[int, int]) -> Decoded:
    """Upright 8-bit RGB: rotate by EXIF, apply the ICC profile, composite alpha on white."""
    pristine = True
    orientation = img.getexif().get(0x0112, 1)
    if orientation not in (1, None):
        img = ImageOps.exif_transpose(img)
        pristine = False
        if orientation in (5, 6, 7, 8):  # quarter turns swap the sides
            size = (size[1], size[0])
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = _to_8bit_grey(img)
        pristine = False
    icc = img.info.get("icc_profile")
    if icc and img.mode in ("RGB", "RGBA", "CMYK"):
        converted = _to_srgb(img, icc)
        pristine = pristine and converted is img
        img = converted
    if img.mode != "RGB" or has_alpha(img):
        img = flatten_alpha(img)  # alpha on white; palette, CMYK, L, 1, YCbCr, LAB, HSV to RGB
        pristine = False
    return Decoded(img, fmt, size, pristine)


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale to 8 bits by scaling the range (PIL's convert('L') would clip at 255)."""
    arr = np.asarray(img).astype(np.float64)  # (H, W)
    top = 65535.0 if arr.max(initial=0) > 255 else 255.0
    return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def _to_srgb(img: Image.Image, icc: bytes) -> Image.Image:
    """Convert embedded-profile colours to sRGB (e.g. Adobe RGB photos, print CMYK); keep alpha."""
    alpha = img.getchannel("A") if img.mode == "RGBA" else None
    base = img.convert("RGB") if img.mode == "RGBA" else img
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if img.mode != "CMYK" and "srgb" in ImageCms.getProfileDescription(src).lower():
            return img  # already sRGB: nothing to do
        out = ImageCms.profileToProfile(base, src, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img  # an unusable profile: the plain numbers are the best guess
    if out is None:  # only when converting in place, which this call does not
        return img
    if alpha is not None:
        out.putalpha(alpha)
    return out


def _bomb_pixels(error: Exception) -> str:
    match = re.search(r"\((\d+) pixels\)", str(error))
    return match.group(1) + " pixels" if match else "too many pixels"


def encode_image(img: Image.Image, source_format: str) -> tuple[bytes, str]:
    """Encode for the shard: JPEG q95 for lossy sources, PNG for lossless ones. Returns (bytes, ext)."""
    buf = io.BytesIO()
    if source_format in LOSSY_FORMATS:
        img.save(buf, format="JPEG", quality=95)
        return buf.getvalue(), "jpg"
    # compress_level 3: within a few % of level 6's size at about half the time.
    img.save(buf, format="PNG", compress_level=3)
    return buf.getvalue(), "png"
