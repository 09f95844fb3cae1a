"""Openverse API image results, one JSON object per line.

Fields used: id, title, tags[{name}], creator, creator_url, foreign_landing_url,
url, license ("by-sa"), license_version ("2.0"), license_url, width, height,
provider, source, category, filetype. When both the URL and the name/version
pair are given they must agree, else the record is quarantined.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from opencanvas.catalog.records import SourceBatch, as_int, clean_text, extra_json
from opencanvas.catalog.sources.base import (
    InputUnit,
    Rejected,
    SourceAdapter,
    check_jsonl,
    open_license,
    plan_files,
    read_jsonl,
    require,
)
from opencanvas.licenses import License, normalize_pair

NAME = "openverse"
EXPECTED = "JSON lines of Openverse API image results (id, url, license, license_version, ...)"


def _license(record: dict[str, Any]) -> License:
    by_url = open_license(record.get("license_url"), "license_url") if record.get("license_url") else None
    by_name = normalize_pair(record.get("license"), record.get("license_version"))
    if by_url is None:
        return open_license(f"{record.get('license') or ''} {record.get('license_version') or ''}".strip())
    if by_name.is_open and (by_name.license_id, by_name.version) != (by_url.license_id, by_url.version):
        raise Rejected("license:conflict", f"license {record.get('license')!r} {record.get('license_version')!r} "
                       f"disagrees with license_url {record.get('license_url')!r}")
    return by_url


def to_row(record: dict[str, Any]) -> tuple[str, dict[str, Any], License]:
    require(record, "id", "url")
    lic = _license(record)
    tags = [clean_text(t.get("name") if isinstance(t, dict) else t) for t in record.get("tags") or []]
    row = {
        "title": clean_text(record.get("title")),
        "description": clean_text(record.get("description")),
        "tags": [t for t in tags if t],
        "category": clean_text(record.get("category")),
        "creator": clean_text(record.get("creator")),
        "creator_url": clean_text(record.get("creator_url")),
        "landing_url": clean_text(record.get("foreign_landing_url")),
        "download_url": clean_text(record.get("url")),
        "width": as_int(record.get("width")),
        "height": as_int(record.get("height")),
        "extra": extra_json({"provider": record.get("provider"), "openverse_source": record.get("source"),
                             "filetype": record.get("filetype")}),
    }
    return str(record["id"]), row, lic


def plan(paths: Sequence[Path]) -> list[InputUnit]:
    files = plan_files(paths, lambda p: check_jsonl(p, EXPECTED, ("id", "url", "license")))
    return [InputUnit(NAME, str(f)) for f in files]


def read(unit: InputUnit) -> Iterator[SourceBatch]:
    return read_jsonl(unit, to_row)


ADAPTER = SourceAdapter(NAME, "Openverse API image results (JSON lines)", plan, read)
