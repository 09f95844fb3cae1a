"""Openverse API image results, one JSON object per line.

Fields used: id, title, tags[{name}], creator, creator_url, foreign_landing_url,
url, license ("by-sa"), license_version ("2.0"), license_url, width, height,
provider, source, category, filetype. When both the URL and the name/version
pair are given they must agree (whether or not the name is a known license),
else the record is quarantined as `license:conflict`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from opencanvas.catalog.records import SourceBatch, as_int, as_tags, clean_text, extra_json
from opencanvas.catalog.sources.base import (
    InputUnit,
    SourceAdapter,
    check_jsonl,
    plan_files,
    read_jsonl,
    record_license,
    require,
)
from opencanvas.licenses import License

NAME = "openverse"
EXPECTED = "JSON lines of Openverse API image results (id, url, license, license_version, ...)"


def _license(record: dict[str, Any]) -> License:
    name = " ".join(str(record[k]) for k in ("license", "license_version") if record.get(k) not in (None, ""))
    return record_license(name or None, record.get("license_url") or None)


def to_row(record: dict[str, Any]) -> tuple[str, dict[str, Any], License]:
    require(record, "id", "url")
    lic = _license(record)
    row: dict[str, Any] = {
        "title": clean_text(record.get("title")),
        "description": clean_text(record.get("description")),
        "tags": as_tags(record.get("tags")),
        "category": clean_text(record.get("category")),
        "creator": clean_text(record.get("creator")),
        "creator_url": clean_text(record.get("creator_url")),
        "landing_url": clean_text(record.get("foreign_landing_url")),
        "download_url": clean_text(record.get("url")),
        "width": as_int(record.get("width"), "width"),
        "height": as_int(record.get("height"), "height"),
        "extra": extra_json({"provider": record.get("provider"), "openverse_source": record.get("source"),
                             "filetype": record.get("filetype")}),
    }
    return str(clean_text(record["id"])), row, lic


def plan(paths: Sequence[Path]) -> list[InputUnit]:
    files = plan_files(paths, lambda p: check_jsonl(p, EXPECTED, ("id", "url", "license")))
    return [InputUnit(NAME, str(f)) for f in files]


def read(unit: InputUnit) -> Iterator[SourceBatch]:
    return read_jsonl(unit, to_row)


ADAPTER = SourceAdapter(NAME, "Openverse API image results (JSON lines)", plan, read)
