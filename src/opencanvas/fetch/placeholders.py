"""Placeholder images: a picture of "no picture", which must never become a training image.

Two signals. A known placeholder (by the source's sha256, or by a perceptual hash close to
one, so resized and re-encoded copies are caught too), checked as each image is fetched; and,
once every shard is finished, the same bytes behind many unrelated items (a host's "photo not
available" image answers every dead link with one file), checked by the duplicate pass
(`dedup.duplicate_matches`, `placeholder_copies`). Blank images (one colour) are caught where
they are decoded (`process.process_image`).
"""

from __future__ import annotations

from opencanvas.fetch.dedup import same_image_hash

# The same bytes behind this many items or more are a placeholder, not a popular picture: in the
# Open Clip Art Library the largest group of legitimate copies (one icon filed in several folders) is 7.
PLACEHOLDER_COPIES = 10
# pHash bits: the known placeholder re-rendered at 256-1024 px stays within 2. Over all 7,980 decodable
# Open Clip Art PNGs this flags exactly the two copies of tux_didier_fabert_01 (penguin/ and computer/).
NEAR_BITS = 4

# source sha256 -> what it is
KNOWN_SHA256 = {
    "7a0c00181a57fd0de65a132e08a58ec742389576726e9ab1ddeb7f06ad08df23":
        "Debian openclipart-png's 'Linked Image Not Found' rendering (animals/birds/penguin/tux_didier_fabert_01)",
}
# perceptual hash ('<pHash>-<colour layout>', see dedup.perceptual_hash) -> what it is
KNOWN_PHASH = {
    "b233d3cd0cccc1cd-f97f84d3769ef97f84ee7f84c87f83f17f84ff8080ff8080ff8080":
        "an SVG renderer's 'Linked Image Not Found' box",
}


def placeholder_reason(source_sha256: str, phash: str) -> str | None:
    """'placeholder: ...' when the image is a known placeholder, else None."""
    if source_sha256 in KNOWN_SHA256:
        return f"placeholder: {KNOWN_SHA256[source_sha256]}"
    for known, what in KNOWN_PHASH.items():
        if same_image_hash(phash, known, NEAR_BITS):
            return f"placeholder: looks like {what}"
    return None
