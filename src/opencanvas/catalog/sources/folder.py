"""Any folder of images, with optional JSON sidecars and XMP/EXIF license fields.

A sidecar is named after the image plus `.json` (`photo.jpg.json`) and may hold
title, description, tags, creator, creator_url, landing_url and license (a URL
or a name). Without a sidecar license, the image's XMP (cc:license,
xmpRights:WebStatement, dc:rights) and then its EXIF Copyright field are read.
An image with no recognisable open license goes to quarantine, never guessed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from opencanvas.catalog.records import BatchBuilder, SourceBatch, clean_text, extra_json
from opencanvas.catalog.sources.base import InputFormatError, InputUnit, Rejected, SourceAdapter, open_license

NAME = "folder"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp"})
EXIF_COPYRIGHT, EXIF_ARTIST, EXIF_DESCRIPTION = 0x8298, 0x013B, 0x010E

_XMP_LICENSE = [
    re.compile(r"<cc:license[^>]*rdf:resource=\"([^\"]+)\""),
    re.compile(r"<cc:license>([^<]+)</cc:license>"),
    re.compile(r"xmpRights:WebStatement=\"([^\"]+)\""),
    re.compile(r"<xmpRights:WebStatement>([^<]+)</xmpRights:WebStatement>"),
]


def _xmp_alt(xmp: str, name: str) -> str | None:
    """First rdf:li of an XMP dc:title / dc:description / dc:creator / dc:rights."""
    m = re.search(rf"<dc:{name}>.*?<rdf:li[^>]*>([^<]*)</rdf:li>", xmp, re.DOTALL)
    return clean_text(m.group(1)) if m else None


def plan(paths: Sequence[Path]) -> list[InputUnit]:
    units = []
    for p in paths:
        p = Path(p).resolve()
        if not p.is_dir():
            raise InputFormatError(f"{p}: not a folder; the folder source expects a folder of images")
        units.append(InputUnit(NAME, str(p), str(p)))
    return units


def _image_files(root: str) -> list[str]:
    return sorted(os.path.join(d, n) for d, _, names in os.walk(root) for n in names
                  if os.path.splitext(n)[1].lower() in IMAGE_SUFFIXES and not n.startswith("."))


def _embedded(path: str) -> tuple[int, int, str, dict[int, Any]]:
    """(width, height, XMP text, EXIF) without decoding the pixels."""
    with Image.open(path) as im:
        xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or ""
        if isinstance(xmp, bytes):
            xmp = xmp.decode("utf-8", "replace")
        return im.width, im.height, xmp, dict(im.getexif())


def _record(path: str, root: str) -> tuple[str, dict[str, Any], Any]:
    sidecar: dict[str, Any] = {}
    if os.path.exists(path + ".json"):
        try:
            sidecar = json.loads(Path(path + ".json").read_text("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise Rejected("malformed", f"sidecar {path}.json is not JSON: {e}") from None
        if not isinstance(sidecar, dict):
            raise Rejected("malformed", f"sidecar {path}.json is not a JSON object")
    try:
        width, height, xmp, exif = _embedded(path)
    except (UnidentifiedImageError, OSError) as e:
        raise Rejected("unreadable", f"not a readable image: {e}") from None
    lic_text, where = sidecar.get("license"), "sidecar license"
    if not lic_text:
        lic_text = next((m.group(1) for rx in _XMP_LICENSE if (m := rx.search(xmp))), None) or _xmp_alt(xmp, "rights")
        where = "XMP license"
    if not lic_text and exif.get(EXIF_COPYRIGHT):
        lic_text, where = str(exif[EXIF_COPYRIGHT]), "EXIF Copyright"
    if not lic_text:
        where = "license (sidecar, XMP or EXIF Copyright)"
    lic = open_license(lic_text, where)
    tags = sidecar.get("tags") or []
    if isinstance(tags, str):
        tags = tags.split(",")
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    row = {
        "title": clean_text(sidecar.get("title")) or _xmp_alt(xmp, "title"),
        "description": clean_text(sidecar.get("description")) or _xmp_alt(xmp, "description")
        or clean_text(exif.get(EXIF_DESCRIPTION)),
        "tags": [t for t in (clean_text(t) for t in tags) if t],
        "category": rel.split("/", 1)[0] if "/" in rel else None,
        "creator": clean_text(sidecar.get("creator")) or _xmp_alt(xmp, "creator") or clean_text(exif.get(EXIF_ARTIST)),
        "creator_url": clean_text(sidecar.get("creator_url")),
        "landing_url": clean_text(sidecar.get("landing_url")),
        "local_path": path,
        "width": width,
        "height": height,
        "extra": extra_json({"license_from": where}),
    }
    return f"{os.path.basename(root)}/{rel}", row, lic


def read(unit: InputUnit) -> Iterator[SourceBatch]:
    builder = BatchBuilder(NAME, unit.path)
    for record_no, path in enumerate(_image_files(unit.path), start=1):
        try:
            source_id, row, lic = _record(path, unit.root)
            builder.add(source_id, row, lic)
        except Rejected as e:
            builder.reject(record_no, os.path.relpath(path, unit.root), e.reason, e.detail)
        if builder.full:
            yield builder.flush()
    yield builder.flush()


ADAPTER = SourceAdapter(NAME, "a folder of images with optional .json sidecars and XMP/EXIF licenses", plan, read)
