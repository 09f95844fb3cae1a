"""Cost of marking one generated image: XMP (IPTC trainedAlgorithmicMedia) + a signed C2PA manifest.

Compares, per 512-px image, the PNG/JPEG/WebP encode `sample` did before marking (text chunks only)
with the marked one (plus XMP, plus c2pa-python signing with a local ES256 test certificate), and
times `verify`'s manifest read. Goal (issue 17): marking adds at most 20 ms per 512-px image.

    python benchmarks/marking.py [--size 512] [--repeat 30]
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from opencanvas.marking.certificates import load_credentials, make_test_cert
from opencanvas.marking.manifest import read_manifest, sign_image
from opencanvas.marking.marker import FORMATS, Marker, encode_marked, generation_claims, use_marker
from opencanvas.marking.xmp import xmp_packet

META = {"prompt": "a red fox in the snow", "negative_prompt": "", "seed": 7, "sampler": "dpmpp-2m", "steps": 25,
        "guidance": 7.5, "model": "bench-run", "weights_hash": "ab" * 32, "license_policy": "commercial",
        "catalog_hash": "cd" * 32}


def generated_like(size: int) -> Image.Image:
    """Smooth gradients plus mild noise: compresses like a sample, not like white noise or a flat colour."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([np.sin(6 * x + 2 * y), np.cos(4 * y - 3 * x), np.sin(5 * x * y)], -1) * 90 + 128
    rgb += rng.normal(0, 6, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (first c2pa call loads the library)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    image = generated_like(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        creds = load_credentials(*make_test_cert(Path(tmp)))
    print("| format | encode, unmarked (ms) | XMP packet (ms) | C2PA sign (ms) | marking adds (ms) "
          "| encode + XMP + C2PA (ms) | verify read (ms) | bytes added |")
    print("|---|---|---|---|---|---|---|---|")
    claims = generation_claims(META, omit_prompt=False)
    for fmt in ("png", "jpeg", "webp"):
        base_bytes = _unmarked(image, fmt)
        base = median_ms(lambda: _unmarked(image, fmt), args.repeat)  # noqa: B023
        # The marking itself, apart from the encode it rides on (the encode is noisy on a shared CPU).
        xmp = median_ms(lambda: xmp_packet(META), args.repeat)
        sign = median_ms(lambda: sign_image(base_bytes, FORMATS[fmt], claims, creds), args.repeat)  # noqa: B023
        with use_marker(Marker(creds)):
            signed_bytes = encode_marked(image, META, fmt)
            whole = median_ms(lambda: encode_marked(image, META, fmt), args.repeat)  # noqa: B023
        read = median_ms(lambda: read_manifest(signed_bytes), args.repeat)  # noqa: B023
        print(f"| {fmt} | {base:.1f} | {xmp:.3f} | {sign:.1f} | {xmp + sign:.1f} | {whole:.1f} | {read:.1f} "
              f"| {len(signed_bytes) - len(base_bytes):,} |")


def _unmarked(image: Image.Image, fmt: str) -> bytes:
    """What `sample` wrote before marking: PNG with our text chunks, or a plain JPEG/WebP."""
    buf = io.BytesIO()
    if fmt == "png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in META.items():
            info.add_itxt(key, str(value))
        image.save(buf, format="PNG", pnginfo=info)
    else:
        image.save(buf, format=fmt.upper(), quality=95)
    return buf.getvalue()


if __name__ == "__main__":
    main()
