"""Defensive decoding: every kind of bad or unusual input becomes clean RGB or a DecodeError."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from opencanvas.fetch.decode import DecodeError, decode_image, load_rgb
from opencanvas.fetch.process import Unusable, process_image
from opencanvas.fetch.testing import noise_image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose header claims width x height (a decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_plain_jpeg_is_pristine_rgb() -> None:
    d = decode_image(noise_image(1, (300, 200)))
    assert d.image.mode == "RGB" and d.image.size == (300, 200)
    assert d.format == "JPEG" and d.pristine and d.original_size == (300, 200)


@pytest.mark.parametrize("data, kind", [
    (noise_image(2)[:2000], "truncated"),
    (encode(Image.new("RGB", (300, 300), (9, 9, 9)), "PNG")[:-40], "truncated"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "undecodable"),
    (b"<html>not an image</html>", "undecodable"),
    (b"", "undecodable"),
])
def test_truncated_and_corrupt_fail_with_reason(data: bytes, kind: str) -> None:
    with pytest.raises(DecodeError) as err:
        load_rgb(data)
    assert err.value.reason.startswith(kind + ":")


def test_pixel_cap_is_checked_before_decoding() -> None:
    with pytest.raises(DecodeError, match=r"too-many-pixels: 100x100 > 5000"):
        load_rgb(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=5000)
    # Beyond PIL's own bomb limit (2 x 89 MP): refused at open, without allocating 2.7 GB.
    with pytest.raises(DecodeError, match="too-many-pixels"):
        load_rgb(png_header_only(30000, 30000))


def test_alpha_and_palette_transparency_composite_on_white() -> None:
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 20, 40))
    out = load_rgb(encode(rgba, "PNG"))
    assert out.getpixel((30, 5)) == (255, 255, 255)  # transparent red -> white page
    assert out.getpixel((5, 5)) == (0, 0, 255)
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    out = load_rgb(encode(pal, "PNG", transparency=1))
    assert out.getpixel((3, 3)) == (255, 255, 255)
    la = Image.new("LA", (40, 40), (0, 128))
    assert load_rgb(encode(la, "PNG")).getpixel((0, 0)) == (127, 127, 127)


def test_cmyk_and_grey_modes_become_rgb() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red ink
    r, g, b = load_rgb(encode(cmyk, "JPEG", quality=95)).getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60
    assert load_rgb(encode(Image.new("1", (32, 32), 1), "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    arr = np.full((16, 16), 32768, dtype=np.uint16)
    arr[0, 0] = 65535
    data = encode(Image.fromarray(arr), "PNG")
    out = load_rgb(data)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert abs(out.getpixel((5, 5))[0] - 128) <= 1  # PIL's convert('L') would give 255


def test_exif_rotation_is_applied_and_sizes_are_upright() -> None:
    img = Image.new("RGB", (60, 30), (200, 0, 0))
    img.paste((0, 0, 200), (0, 0, 10, 30))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    d = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert d.image.size == (30, 60) and d.original_size == (30, 60)
    assert d.image.getpixel((15, 3))[2] > 150  # the left stripe is now on top
    assert not d.pristine


def test_animated_image_keeps_the_first_frame() -> None:
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    r, g, b = load_rgb(buf.getvalue()).getpixel((10, 10))
    assert r > 200 and b < 50
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:])  # APNG
    d = decode_image(buf.getvalue())
    assert d.image.getpixel((10, 10)) == (255, 0, 0) and not d.pristine  # re-encoded as one frame


def test_large_jpeg_decodes_at_reduced_scale_but_reports_original_size() -> None:
    data = noise_image(3, (2400, 1600))
    d = decode_image(data, target_long_side=512)
    assert d.original_size == (2400, 1600)
    assert 512 <= max(d.image.size) < 2400 and d.drafted


def test_process_resizes_long_side_never_upscales_and_skips_small_or_blank() -> None:
    p = process_image(noise_image(4, (1500, 1000)), max_side=1024, min_side=256, max_pixels=10**8)
    assert (p.width, p.height) == (1024, 683) and (p.original_width, p.original_height) == (1500, 1000)
    assert p.reencoded and p.ext == "jpg"
    assert load_rgb(p.data).size == (1024, 683)
    small = process_image(noise_image(5, (300, 300)), max_side=1024, min_side=256, max_pixels=10**8)
    assert (small.width, small.height) == (300, 300) and not small.reencoded  # stored as fetched
    with pytest.raises(Unusable, match=r"too-small: 200x300 < 256"):
        process_image(noise_image(6, (200, 300)), max_side=1024, min_side=256, max_pixels=10**8)
    # Passthrough images are checked at 1/8 DCT scale: the whole bitstream is still read.
    with pytest.raises(DecodeError, match="truncated"):
        process_image(noise_image(6, (512, 512))[:3000], max_side=1024, min_side=256, max_pixels=10**8)
    with pytest.raises(Unusable, match="blank"):
        process_image(encode(Image.new("RGBA", (300, 300)), "PNG"), max_side=0, min_side=0, max_pixels=10**8)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 3))
def test_arbitrary_bytes_never_escape_as_other_errors(noise: bytes, where: int) -> None:
    # Random bytes, alone or spliced into a valid PNG/JPEG, decode or raise DecodeError, nothing else.
    base = [b"", noise_image(7, (64, 64)), encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG"),
            encode(Image.new("RGB", (64, 64), (1, 2, 3)), "GIF")][where]
    data = base[: len(base) // 2] + noise + base[len(base) // 2 + len(noise):] if base else noise
    try:
        img = load_rgb(data, max_pixels=10**7)
    except DecodeError:
        return
    assert img.mode == "RGB"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "L", "I;16", "1"])
def test_oversized_png_is_downscaled_not_refused(mode: str) -> None:
    rgb = Image.open(io.BytesIO(noise_image(9, (1200, 800), fmt="PNG"))).convert("RGB")
    img = {"RGBA": lambda: rgb.convert("RGBA"), "P": lambda: rgb.quantize(64), "L": lambda: rgb.convert("L"),
           "I;16": lambda: rgb.convert("L").convert("I").point(lambda v: v * 256).convert("I;16"),
           "1": lambda: rgb.convert("1"), "RGB": lambda: rgb}[mode]()
    data = encode(img, "PNG", compress_level=1)
    with pytest.raises(DecodeError, match=r"too-many-pixels: 1200x800 > 100000"):
        decode_image(data, max_pixels=100_000)  # no decode budget: refused, as before
    d = decode_image(data, max_pixels=100_000, max_decode_pixels=1_000_000)
    assert d.image.mode == "RGB" and d.image.width * d.image.height <= 100_000
    assert d.image.size == (300, 200) and d.original_size == (1200, 800) and d.drafted and not d.pristine
    with pytest.raises(DecodeError, match=r"too-many-pixels: 1200x800 > 500000"):
        decode_image(data, max_pixels=100_000, max_decode_pixels=500_000)  # beyond the bomb cap


def test_oversized_png_keeps_its_exif_rotation_and_is_stored_resized() -> None:
    img = Image.open(io.BytesIO(noise_image(10, (1200, 800), fmt="PNG")))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    data = encode(img, "PNG", exif=exif.tobytes(), compress_level=1)
    d = decode_image(data, max_pixels=100_000, max_decode_pixels=1_000_000)
    assert d.original_size == (800, 1200) and d.image.size == (200, 300)
    p = process_image(data, max_side=256, min_side=128, max_pixels=100_000, max_decode_pixels=1_000_000)
    assert (p.width, p.height, p.original_width, p.original_height) == (171, 256, 800, 1200) and p.reencoded
    # With the native size kept (max_side 0), the stored image is the reduced one, never the source's bytes.
    native = process_image(data, max_side=0, min_side=0, max_pixels=100_000, max_decode_pixels=1_000_000)
    assert (native.width, native.height) == (200, 300) and native.data != data
