"""Wikimedia Commons `imageinfo` results with `extmetadata`, one JSON object per line.

A line is either a page (`{"pageid", "title", "imageinfo": [{...}]}`) or a bare
imageinfo object with a `title`. `extmetadata` values are `{"value": ...}`;
Artist and ImageDescription are HTML and are reduced to text here.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from opencanvas.catalog.records import SourceBatch, as_int, clean_text, extra_json
from opencanvas.catalog.sources.base import (
    InputUnit,
    Rejected,
    SourceAdapter,
    check_jsonl,
    plan_files,
    read_jsonl,
    record_license,
)
from opencanvas.licenses import License

NAME = "wikimedia"
EXPECTED = "JSON lines of Wikimedia Commons imageinfo results with extmetadata"


class _TextAndLinks(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links += [v for k, v in attrs if k == "href" and v]
        elif tag in {"br", "p", "div", "li"}:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def strip_html(value: str | None) -> tuple[str | None, str | None]:
    """(text, first link) of an HTML fragment such as Commons' Artist field."""
    if not value:
        return None, None
    parser = _TextAndLinks()
    parser.feed(value)
    parser.close()
    text = re.sub(r"\s+", " ", html.unescape("".join(parser.parts))).strip() or None
    link = parser.links[0] if parser.links else None
    if link and link.startswith("//"):  # protocol-relative links are common on Commons
        link = "https:" + link
    return text, link


def _meta(ext: dict[str, Any], name: str) -> str | None:
    value = ext.get(name)
    if isinstance(value, dict):
        value = value.get("value")
    return None if value is None else str(value)


def to_row(record: dict[str, Any]) -> tuple[str, dict[str, Any], License]:
    info = record
    if "imageinfo" in record:
        pages = record["imageinfo"]
        if not isinstance(pages, list) or not pages:
            raise Rejected("missing:imageinfo", "imageinfo must be a non-empty list of objects")
        if not isinstance(pages[0], dict):
            raise Rejected("malformed", f"imageinfo[0] is a {type(pages[0]).__name__}, expected an object")
        info = {**pages[0], "title": record.get("title"), "pageid": record.get("pageid")}
    title = clean_text(info.get("title"))
    if not title or not info.get("url"):
        raise Rejected("missing:title,url", "record needs the file title and url")
    ext = info.get("extmetadata") or {}
    if not isinstance(ext, dict):
        raise Rejected("malformed", "extmetadata is not an object")
    # The short name and the URL must agree; `License` ("cc-by-sa-4.0") stands in for a missing short name.
    lic = record_license(_meta(ext, "LicenseShortName") or _meta(ext, "License"), _meta(ext, "LicenseUrl"),
                         "LicenseShortName/LicenseUrl")
    creator, creator_url = strip_html(_meta(ext, "Artist"))
    description, _ = strip_html(_meta(ext, "ImageDescription"))
    name = title.removeprefix("File:").replace(" ", "_")
    object_name, _ = strip_html(_meta(ext, "ObjectName"))
    categories = [c for c in (clean_text(c) for c in (_meta(ext, "Categories") or "").split("|")) if c]
    row = {
        "title": object_name or name.rsplit(".", 1)[0].replace("_", " "),
        "description": description,
        "tags": categories,
        "creator": creator,
        "creator_url": creator_url,
        "landing_url": clean_text(info.get("descriptionurl")) or f"https://commons.wikimedia.org/wiki/File:{name}",
        "download_url": clean_text(info.get("url")),
        "width": as_int(info.get("width"), "width"),
        "height": as_int(info.get("height"), "height"),
        "extra": extra_json({"pageid": info.get("pageid"), "license_short_name": _meta(ext, "LicenseShortName"),
                             "attribution_required": _meta(ext, "AttributionRequired"),
                             "credit": strip_html(_meta(ext, "Credit"))[0], "mime": info.get("mime")}),
    }
    return name, row, lic


def plan(paths: Sequence[Path]) -> list[InputUnit]:
    files = plan_files(paths, lambda p: check_jsonl(p, EXPECTED, ("imageinfo", "extmetadata")))
    return [InputUnit(NAME, str(f)) for f in files]


def read(unit: InputUnit) -> Iterator[SourceBatch]:
    return read_jsonl(unit, to_row)


ADAPTER = SourceAdapter(NAME, "Wikimedia Commons imageinfo + extmetadata (JSON lines)", plan, read)
