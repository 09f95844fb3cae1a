"""Duplicate detection: exact, near (pHash + colour layout), deterministic first-match rule."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

from opencanvas.fetch.decode import load_rgb
from opencanvas.fetch.dedup import DuplicateIndex, hash_thumbnail, perceptual_hash
from opencanvas.fetch.testing import noise_image


def phash(img: Image.Image) -> str:
    return perceptual_hash(hash_thumbnail(img))


def jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return load_rgb(buf.getvalue())


def drawing(fill: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (256, 256), "white")
    ImageDraw.Draw(img).polygon([(40, 200), (128, 30), (216, 200)], fill=fill, outline="black")
    return img


def test_reencoded_and_resized_copies_are_near_duplicates() -> None:
    img = load_rgb(noise_image(1, (640, 480)))
    index = DuplicateIndex(2)
    assert index.add("a", "sha-a", phash(img)) is None
    for i, copy in enumerate([jpeg(img, 40), img.resize((320, 240), Image.Resampling.LANCZOS)]):
        match = index.add(f"copy{i}", f"sha-copy{i}", phash(copy))
        assert match is not None and match.key == "a" and not match.exact and match.distance <= 2


def test_colour_variants_of_one_drawing_are_kept() -> None:
    red, blue = phash(drawing((220, 30, 30))), phash(drawing((30, 60, 220)))
    assert red.split("-")[0] == blue.split("-")[0]  # pHash alone cannot tell them apart
    index = DuplicateIndex(4)
    index.add("red", "sha-red", red)
    assert index.add("blue", "sha-blue", blue) is None
    assert index.add("red-again", "sha-red2", phash(jpeg(drawing((220, 30, 30)), 60))).key == "red"


def test_exact_beats_near_and_the_earliest_match_wins() -> None:
    index = DuplicateIndex(2)
    h = phash(load_rgb(noise_image(2)))
    assert index.add("k1", "s1", h) is None
    assert index.add("k2", "s2", h).reason == "near-duplicate-of: k1 (phash distance 0)"
    assert index.add("k3", "s2", h).reason == "duplicate-of: k2"  # same bytes as k2
    assert DuplicateIndex(-1).add("x", "s", h) is None


def test_multi_index_search_agrees_with_brute_force() -> None:
    rng = random.Random(0)
    base = [rng.getrandbits(64) for _ in range(40)]
    hashes = []
    for _ in range(400):  # many near neighbours: flip 0-5 bits of a base hash
        value = rng.choice(base)
        for bit in rng.sample(range(64), rng.randint(0, 5)):
            value ^= 1 << bit
        hashes.append(f"{value:016x}")
    for d in (0, 2, 4):
        index = DuplicateIndex(d)
        for i, h in enumerate(hashes):
            got = index.add(f"k{i:04d}", f"s{i}", h)
            earlier = [j for j in range(i) if (int(h, 16) ^ int(hashes[j], 16)).bit_count() <= d]
            assert (got.key if got else None) == (f"k{earlier[0]:04d}" if earlier else None)
