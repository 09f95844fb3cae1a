"""Flickr photo URLs at a chosen size, built from YFCC100M's fields (paper §4.1 re-scraped originals).

Flickr's static URL forms (https://www.flickr.com/services/api/misc.urls.html):

    original  https://live.staticflickr.com/{server}/{id}_{original_secret}_o.{original_format}
    large     https://live.staticflickr.com/{server}/{id}_{secret}_b.jpg      (1024 px on the long side)
    medium    https://live.staticflickr.com/{server}/{id}_{secret}.jpg        (500 px; YFCC's download_url)

An original is not always served (the owner may hide it; old photos lack a large size), so
`fetch --flickr-size` tries the asked size and falls back to the next smaller one on 404 or 410.
"""

from __future__ import annotations

import json
import re
from typing import Any

SIZES = ("original", "large", "medium")
FLICKR_HOST = "https://live.staticflickr.com"
FALLBACK_ON = ("http-404", "http-410")  # gone at this size: try the next; any other failure is the row's
_TOKEN = re.compile(r"[0-9A-Za-z]+")


def flickr_urls(photo_id: str, server: str, secret: str | None, original_secret: str | None,
                original_format: str | None, host: str = FLICKR_HOST) -> dict[str, str]:
    """{size: URL} for the sizes the fields allow (an original needs its own secret and format)."""
    if not all(_TOKEN.fullmatch(v or "") for v in (photo_id, server)):
        return {}
    urls: dict[str, str] = {}
    if _TOKEN.fullmatch(original_secret or "") and _TOKEN.fullmatch(original_format or ""):
        urls["original"] = f"{host}/{server}/{photo_id}_{original_secret}_o.{str(original_format).lower()}"
    if _TOKEN.fullmatch(secret or ""):
        urls["large"] = f"{host}/{server}/{photo_id}_{secret}_b.jpg"
        urls["medium"] = f"{host}/{server}/{photo_id}_{secret}.jpg"
    return urls


def size_candidates(row: dict[str, Any], size: str, host: str = FLICKR_HOST) -> list[tuple[str, str]]:
    """[(size, URL)] to try in order, from `size` down, for a row whose `extra` holds Flickr's fields; else []."""
    if size not in SIZES:
        raise ValueError(f"flickr size {size!r}: use one of {', '.join(SIZES)}")
    extra = row.get("extra")
    if not extra or '"original_secret"' not in extra:
        return []
    fields = json.loads(extra)
    urls = flickr_urls(str(row.get("source_id") or ""), str(fields.get("server_id") or ""), fields.get("secret"),
                       fields.get("original_secret"), fields.get("extension"), host)
    return [(s, urls[s]) for s in SIZES[SIZES.index(size):] if s in urls]
