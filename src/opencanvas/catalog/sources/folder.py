"""Any folder of images, with optional JSON sidecars and XMP/EXIF license fields.

A sidecar is named after the image plus `.json` (`photo.jpg.json`) and may hold
title, description, tags, creator, creator_url, landing_url, license (a URL
or a name) and license_url. Without a sidecar license, the image's XMP (cc:license,
xmpRights:WebStatement, dc:rights) and then its EXIF Copyright field are read.
An image with no recognisable open license goes to quarantine, never guessed;
so does one whose dc:rights names another license or restricts the XMP URL.

Keys are `<folder name>-<8 hex of the resolved folder's hash>/<relative path>`: two
folders with the same name never collide, and the same folder always gives the same keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from opencanvas.catalog.records import BatchBuilder, SourceBatch, as_tags, clean_text, extra_json
from opencanvas.catalog.sources.base import (
    InputFormatError,
    InputUnit,
    Rejected,
    SourceAdapter,
    add_record,
    record_license,
)
from opencanvas.licenses import License, normalize, restricts

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


def folder_id(root: str) -> str:
    """The key prefix of a folder: its name plus a short hash of its resolved path."""
    resolved = os.path.realpath(root)
    return f"{os.path.basename(resolved)}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"


def _embedded(path: str) -> tuple[int, int, str, dict[int, Any]]:
    """(width, height, XMP text, EXIF) without decoding the pixels; a file Pillow refuses is `Rejected`."""
    try:
        with Image.open(path) as im:
            xmp = im.info.get("xmp") or im.info.get("XML:com.adobe.xmp") or ""
            if isinstance(xmp, bytes):
                xmp = xmp.decode("utf-8", "replace")
            return im.width, im.height, str(xmp), dict(im.getexif())
    except Image.DecompressionBombError as e:  # over Pillow's pixel limit: never decoded, never fetched
        raise Rejected("image:too-large", str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # ValueError: e.g. a huge text chunk
        raise Rejected("unreadable", f"not a readable image: {e}") from None


def _sidecar(path: str) -> dict[str, Any]:
    if not os.path.exists(path + ".json"):
        return {}
    try:
        sidecar = json.loads(Path(path + ".json").read_text("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise Rejected("malformed", f"sidecar {path}.json is not JSON: {e}") from None
    if not isinstance(sidecar, dict):
        raise Rejected("malformed", f"sidecar {path}.json is not a JSON object")
    return sidecar


def _license(sidecar: dict[str, Any], xmp: str, exif: dict[int, Any]) -> tuple[License, str]:
    """The image's license and where it was found (sidecar, then XMP, then EXIF Copyright)."""
    if sidecar.get("license") or sidecar.get("license_url"):
        return record_license(sidecar.get("license"), sidecar.get("license_url"), "sidecar license"), "sidecar license"
    licenses = [m.group(1) for rx in _XMP_LICENSE[:2] if (m := rx.search(xmp))]      # cc:license
    statements = [m.group(1) for rx in _XMP_LICENSE[2:] if (m := rx.search(xmp))]    # xmpRights:WebStatement
    url = (licenses or statements or [None])[0]
    rights = _xmp_alt(xmp, "rights")
    if url or rights:
        # dc:rights is often a plain copyright notice ("(c) Jane"): it speaks as a license name only
        # when it names one or restricts; then it must agree with the URL.
        name = rights if rights and (not url or normalize(rights).is_open or restricts(rights)) else None
        lic = record_license(name, url, "XMP license")
        for other in licenses + statements:  # a second license URL must agree too (a WebStatement page need not)
            if other != url and (other in licenses or normalize(other).is_open):
                record_license(other, url, "XMP cc:license / WebStatement")
        return lic, "XMP license"
    copyright_text = clean_text(exif.get(EXIF_COPYRIGHT))
    if copyright_text:
        return record_license(copyright_text, None, "EXIF Copyright"), "EXIF Copyright"
    return record_license(None, None, "license (sidecar, XMP or EXIF Copyright)"), ""


def _record(path: str, root: str) -> tuple[str, dict[str, Any], Any]:
    sidecar = _sidecar(path)
    width, height, xmp, exif = _embedded(path)
    lic, where = _license(sidecar, xmp, exif)
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    row = {
        "title": clean_text(sidecar.get("title")) or _xmp_alt(xmp, "title"),
        "description": clean_text(sidecar.get("description")) or _xmp_alt(xmp, "description")
        or clean_text(exif.get(EXIF_DESCRIPTION)),
        "tags": as_tags(sidecar.get("tags")),
        "category": rel.split("/", 1)[0] if "/" in rel else None,
        "creator": clean_text(sidecar.get("creator")) or _xmp_alt(xmp, "creator") or clean_text(exif.get(EXIF_ARTIST)),
        "creator_url": clean_text(sidecar.get("creator_url")),
        "landing_url": clean_text(sidecar.get("landing_url")),
        "local_path": path,
        "width": width,
        "height": height,
        "extra": extra_json({"license_from": where}),
    }
    return f"{folder_id(root)}/{rel}", row, lic


def read(unit: InputUnit) -> Iterator[SourceBatch]:
    builder = BatchBuilder(NAME, unit.path)
    for record_no, path in enumerate(_image_files(unit.path), start=1):
        add_record(builder, record_no, os.path.relpath(path, unit.root), _record, path, unit.root)
        if builder.full:
            yield builder.flush()
    yield builder.flush()


ADAPTER = SourceAdapter(NAME, "a folder of images with optional .json sidecars and XMP/EXIF licenses", plan, read)
