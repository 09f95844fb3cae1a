"""GPIC (2026): WebDataset tars of `{key}.json` followed by `{key}.jpg|png`.

The JSON carries license, license_url, attribution, key, img_width, img_height,
split (nano / lite / full), caption_type (tag / short / medium / long) and caption.
The image bytes stay in the tar: the row's `local_path` is the tar and `extra`
holds the member's byte range (`tar_offset`, `tar_size`), so `fetch` copies the
bytes without HTTP and without scanning the tar. The shipped caption is kept in
`extra` (`caption`, `caption_type`) for the `gpic-<caption_type>` captioners.

A member out of order or unpaired, a JSON member that is not a JSON object, or an
image member that is not a readable image goes to quarantine with its reason; the
rest of the tar still ingests. A tar that ends mid-member quarantines one record
saying where it broke.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from opencanvas.catalog.records import BatchBuilder, Rejected, SourceBatch, as_int, clean_text, extra_json
from opencanvas.catalog.sources.base import InputFormatError, InputUnit, SourceAdapter, add_record, record_license

NAME = "gpic"
SPLITS = ("nano", "lite", "full")
CAPTION_TYPES = ("tag", "short", "medium", "long")
IMAGE_EXTS = frozenset({"jpg", "jpeg", "png", "webp"})
_URL = re.compile(r"https?://[^\s)\]>,;\"']+")
# "Photo by Jane Doe (https://...)", "by Jane Doe / Flickr", "Jane Doe, CC BY 2.0": the name ends at a
# bracket, a URL, a comma, " - ", " / " or " via ".
_BY = re.compile(r"(?<!cc )(?<!cc-)\bby\s+(?![-\d])(.+?)(?=\s*(?:\(|\[|<|https?://|,|;| - | / | via |$))",
                 re.IGNORECASE)
_LEADING_NAME = re.compile(r"^([^(\[<,;/]+?)(?=\s*(?:\(|\[|<|https?://|,|;| - | / |$))")
_LICENSE_HOSTS = ("creativecommons.org", "wikimedia.org/wiki/Commons:", "opensource.org")


def split_member(name: str) -> tuple[str, str]:
    """("dir/abc", "json") for "dir/abc.json": WebDataset's key is everything before the first dot of the basename."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


def parse_attribution(text: str | None) -> tuple[str | None, str | None]:
    """(author, profile URL) named in a GPIC attribution line, where it names them; the raw text is kept too."""
    if not text:
        return None, None
    urls = [u.rstrip(".") for u in _URL.findall(text) if not any(h in u for h in _LICENSE_HOSTS)]
    without_urls = _URL.sub(" ", text)
    m = _BY.search(without_urls)
    author = m.group(1) if m else None
    if author is None and (lead := _LEADING_NAME.match(without_urls.strip())):
        candidate = lead.group(1).strip()
        # A bare leading phrase counts as a name only when it looks like one, not a license or a sentence.
        if candidate and len(candidate.split()) <= 5 and not re.search(r"\b(cc|licen[cs]e|public domain)\b",
                                                                          candidate, re.IGNORECASE):
            author = candidate
    return clean_text(author.strip(" .:-")) if author else None, urls[0] if urls else None


def plan(paths: Sequence[Path]) -> list[InputUnit]:
    """Tars, checked to be tar archives; a folder stands for the .tar files directly in it."""
    units = []
    for p in paths:
        p = Path(p).resolve()
        if p.is_dir():
            tars = sorted(q for q in p.iterdir() if q.is_file() and q.suffix == ".tar" and not q.name.startswith("."))
            if not tars:
                raise InputFormatError(f"{p}: no .tar files in this folder; GPIC ships WebDataset tars")
        elif p.is_file():
            tars = [p]
        else:
            raise InputFormatError(f"{p}: no such file or folder")
        for tar in tars:
            if not tarfile.is_tarfile(tar):
                raise InputFormatError(f"{tar}: not a tar archive; GPIC ships WebDataset tars of {{key}}.json + "
                                       "{key}.jpg|png")
            units.append(InputUnit(NAME, str(tar)))
    return units


def _metadata(raw: bytes) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Rejected("malformed", f"JSON member is not JSON: {e}") from None
    if not isinstance(record, dict):
        raise Rejected("malformed", "JSON member is not a JSON object")
    return record


def _image_size(data: bytes) -> tuple[int, int]:
    """The image's size from its header (the pixels are decoded and checked by fetch)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width, im.height
    except Image.DecompressionBombError as e:
        raise Rejected("image:too-large", str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise Rejected("unreadable", f"image member is not a readable image: {e}") from None


def _row(tar_path: str, stem: str, meta_raw: bytes, member: tarfile.TarInfo, data: bytes, ext: str
         ) -> tuple[str, dict[str, Any], Any]:
    record = _metadata(meta_raw)
    lic = record_license(record.get("license"), record.get("license_url"), "GPIC license")
    width, height = _image_size(data)
    attribution = clean_text(record.get("attribution"))
    author, author_url = parse_attribution(attribution)
    caption_type = clean_text(record.get("caption_type"))
    if caption_type is not None and caption_type not in CAPTION_TYPES:
        raise Rejected("malformed", f"caption_type {caption_type!r} is not one of {', '.join(CAPTION_TYPES)}")
    row: dict[str, Any] = {
        "title": None, "description": None, "tags": [], "category": clean_text(record.get("split")),
        "creator": author, "creator_url": author_url, "landing_url": author_url if author_url else None,
        "download_url": None, "local_path": tar_path,
        "width": as_int(record.get("img_width"), "img_width") or width,
        "height": as_int(record.get("img_height"), "img_height") or height,
        "extra": extra_json({
            "attribution": attribution, "caption": clean_text(record.get("caption")), "caption_type": caption_type,
            "split": clean_text(record.get("split")), "gpic_key": clean_text(record.get("key")),
            "tar_member": member.name, "tar_offset": member.offset_data, "tar_size": member.size, "image_ext": ext,
        }),
    }
    return clean_text(record.get("key")) or stem, row, lic


def _other_split(meta_raw: bytes, split: str | None) -> bool:
    """The record names a split other than the selected one (skipped: neither read nor quarantined)."""
    if not split:
        return False
    try:
        record = json.loads(meta_raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False  # not JSON: quarantined as such whatever the split
    return isinstance(record, dict) and record.get("split") != split


def read_tar(unit: InputUnit, split: str | None = None) -> Iterator[SourceBatch]:
    """Pair each `{key}.json` with the `{key}.<image>` right after it; anything else goes to quarantine."""
    builder = BatchBuilder(NAME, unit.path)
    pending: tuple[str, bytes, int] | None = None  # (stem, JSON bytes, record_no) awaiting its image
    record_no = 0

    def unpaired(stem: str, raw: str, record_no: int, what: str) -> None:
        builder.reject(record_no, raw, "unpaired", f"{what} {stem!r} has no {'image' if what == 'JSON' else 'JSON'}"
                       " member next to it (WebDataset pairs are {key}.json then {key}.jpg|png)")

    try:
        with tarfile.open(unit.path, "r|") as tar:  # streamed: memory stays flat in the tar's length
            for member in tar:
                if not member.isfile():
                    continue
                stem, ext = split_member(member.name)
                record_no += 1
                fileobj = tar.extractfile(member)
                data = fileobj.read() if fileobj else b""
                if ext == "json":
                    if pending is not None:
                        unpaired(pending[0], pending[1].decode("utf-8", "replace"), pending[2], "JSON")
                    pending = (stem, data, record_no)
                elif ext in IMAGE_EXTS and pending is not None and pending[0] == stem:
                    meta_raw = pending[1]
                    if not _other_split(meta_raw, split):
                        add_record(builder, pending[2], meta_raw.decode("utf-8", "replace"), _row, unit.path, stem,
                                   meta_raw, member, data, ext)
                    pending = None
                else:
                    if pending is not None:
                        unpaired(pending[0], pending[1].decode("utf-8", "replace"), pending[2], "JSON")
                        pending = None
                    kind = "image" if ext in IMAGE_EXTS else f"member of type {ext or 'none'!r}"
                    unpaired(stem, member.name, record_no, kind)
                if builder.full:
                    yield builder.flush()
    except (tarfile.TarError, OSError, EOFError) as e:
        # The record whose image the break cut off (or, between pairs, one record that says where it broke).
        no, raw = (pending[2], pending[1].decode("utf-8", "replace")) if pending else (record_no + 1, unit.path)
        builder.reject(no, raw, "malformed", f"tar ends or breaks after member {record_no}: {e}")
        pending = None
    if pending is not None:
        unpaired(pending[0], pending[1].decode("utf-8", "replace"), pending[2], "JSON")
    yield builder.flush()


def read(unit: InputUnit) -> Iterator[SourceBatch]:
    return read_tar(unit, dict(unit.options).get("split"))


ADAPTER = SourceAdapter(NAME, "GPIC WebDataset tars ({key}.json + {key}.jpg|png); image bytes stay in the tars",
                        plan, read)
