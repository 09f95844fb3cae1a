"""The released CommonCatalog Parquet files (CommonCanvas, arXiv 2310.16825).

Columns used: photoid, key, title, description, usertags, licensename,
licenseurl, pageurl, downloadurl, width, height, original_width,
original_height, sha256, caption, blip2_caption; the image bytes live in the
`jpg` column. The shipped BLIP-2 caption is kept in `extra` so the caption
stage can use it as a captioner's output; `extra.jpg` says where the bytes are
(file + row) so they need not be downloaded again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from opencanvas.catalog.records import BatchBuilder, SourceBatch, as_int, as_tags, clean_text, extra_json
from opencanvas.catalog.sources.base import (
    InputFormatError,
    InputUnit,
    Rejected,
    SourceAdapter,
    add_record,
    plan_files,
    record_license,
    require,
)

NAME = "commoncatalog"
EXPECTED = "a CommonCatalog Parquet file (columns photoid or key, licensename/licenseurl, downloadurl, ...)"
READ_ROWS = 8192
_FLICKR_USER = re.compile(r"^(https?://(?:www\.)?flickr\.com/photos/[^/]+/)")


def check(path: Path) -> None:
    try:
        names = set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError) as e:  # ArrowInvalid / OSError for non-Parquet files
        raise InputFormatError(f"{path}: not a Parquet file ({e}); expected {EXPECTED}") from None
    if not ({"photoid", "key"} & names) or not ({"licenseurl", "licensename"} & names):
        raise InputFormatError(f"{path}: columns {sorted(names)} lack the id/license columns; expected {EXPECTED}")


def plan(paths: Sequence[Path]) -> list[InputUnit]:
    return [InputUnit(NAME, str(f)) for f in plan_files(paths, check)]


def _row(record: dict[str, Any], path: str, row_no: int, has_jpg: bool) -> tuple[str, dict[str, Any], Any]:
    source_id = clean_text(record.get("photoid")) or clean_text(record.get("key"))
    if source_id is None:
        raise Rejected("missing:photoid", "record has neither photoid nor key")
    if not has_jpg:
        require(record, "downloadurl")
    lic = record_license(record.get("licensename"), record.get("licenseurl"))
    landing = clean_text(record.get("pageurl"))
    creator_url = m.group(1) if landing and (m := _FLICKR_USER.match(landing)) else None
    row = {
        "title": clean_text(record.get("title")),
        "description": clean_text(record.get("description")),
        "tags": as_tags(record.get("usertags")),
        "creator_url": creator_url,
        "landing_url": landing,
        "download_url": clean_text(record.get("downloadurl")),
        "width": as_int(record.get("original_width"), "original_width") or as_int(record.get("width"), "width"),
        "height": as_int(record.get("original_height"), "original_height") or as_int(record.get("height"), "height"),
        "extra": extra_json({
            "blip2_caption": clean_text(record.get("blip2_caption")), "caption": clean_text(record.get("caption")),
            "sha256": clean_text(record.get("sha256")), "commoncatalog_key": clean_text(record.get("key")),
            "license_name": clean_text(record.get("licensename")),
            "stored_size": [as_int(record.get("width"), "width"), as_int(record.get("height"), "height")],
            "jpg": {"file": path, "row": row_no} if has_jpg else None,
        }),
    }
    return source_id, row, lic


def read(unit: InputUnit) -> Iterator[SourceBatch]:
    pf = pq.ParquetFile(unit.path)
    names = pf.schema_arrow.names
    has_jpg = "jpg" in names
    columns = [c for c in names if c != "jpg"]  # the image bytes stay in the file
    builder = BatchBuilder(NAME, unit.path)
    row_no = 0
    for batch in pf.iter_batches(batch_size=READ_ROWS, columns=columns):
        for record in batch.to_pylist():
            add_record(builder, row_no, record, _row, record, unit.path, row_no, has_jpg)
            row_no += 1
            if builder.full:
                yield builder.flush()
    yield builder.flush()


ADAPTER = SourceAdapter(NAME, "CommonCatalog release (Parquet with a jpg column)", plan, read)
