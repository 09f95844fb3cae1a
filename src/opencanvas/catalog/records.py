"""Catalog and quarantine rows as adapters build them, batch by batch.

Adapters that walk records one by one (SVG files, JSON lines, images) fill a
`BatchBuilder`; the YFCC adapter builds its Arrow tables column-wise instead.
Either way an adapter yields `SourceBatch`es whose `read` count equals
catalog rows + quarantine rows, the invariant stats reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from opencanvas.catalog.schema import CATALOG_SCHEMA, QUARANTINE_SCHEMA
from opencanvas.licenses import License

BATCH_ROWS = 50_000


@dataclass
class SourceBatch:
    catalog: pa.Table     # CATALOG_SCHEMA
    quarantine: pa.Table  # QUARANTINE_SCHEMA
    read: int             # records read from the input = catalog rows + quarantine rows


def license_columns(lic: License, origin: str) -> dict[str, Any]:
    """The catalog's license columns for an open license."""
    return {
        "license_id": lic.license_id, "license_version": lic.version, "license_url": lic.url,
        "license_origin": origin, "commercial_ok": lic.commercial_ok, "derivatives_ok": lic.derivatives_ok,
        "share_alike": lic.share_alike, "attribution_required": lic.attribution_required,
    }


class Rejected(Exception):
    """A record goes to quarantine: `reason` is short and machine-readable, `detail` explains."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def clean_text(value: Any) -> str | None:
    """Source text with surrounding blanks removed; empty becomes None.

    Bytes must be UTF-8 (never stored as "b'..'"), and text must be encodable (no lone
    surrogates, which JSON's "\\ud800" yields): else the record is `Rejected` as `encoding`.
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise Rejected("encoding", f"text is bytes that are not UTF-8: {e}") from None
    elif isinstance(value, dict | list | tuple | set):
        raise Rejected("malformed", f"expected text, got a {type(value).__name__}: {safe_text(repr(value))[:200]}")
    text = str(value).strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise Rejected("encoding", f"text {safe_text(repr(text[:80]))} is not valid Unicode: {e.reason}") from None
    return text or None


def safe_text(text: str) -> str:
    """`text` with lone surrogates written as \\udXXX escapes, so Arrow can store it."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def as_int(value: Any, field: str = "value") -> int | None:
    """A whole-number field (width, height) that sources give as int, float or text, or nothing.

    A fraction, a negative number or non-numeric text is `Rejected`, never truncated.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise Rejected("malformed", f"{field} {value!r} is not a number")
    number = value
    if isinstance(value, str | bytes):
        try:
            number = float(value) if any(c in str(value) for c in ".eE") else int(value)
        except ValueError:
            raise Rejected("malformed", f"{field} {safe_text(repr(value))[:80]} is not a number") from None
    if isinstance(number, float):
        if not number.is_integer():
            raise Rejected("malformed", f"{field} {value!r} is not a whole number")
        number = int(number)
    if not isinstance(number, int):
        raise Rejected("malformed", f"{field} {safe_text(repr(value))[:80]} is not a number")
    if number < 0:
        raise Rejected("malformed", f"{field} {value!r} is negative")
    return number


def as_tags(value: Any) -> list[str]:
    """Tags given as a list (of text, or of {"name": ...} objects) or as comma-separated text.

    Text is split on commas, never into characters; any other type is `Rejected`.
    """
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes):
        items: list[Any] = (clean_text(value) or "").split(",")
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise Rejected("malformed", f"tags must be a list or text, got {type(value).__name__}")
    tags = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("name")
        if item is not None and not isinstance(item, str | bytes):
            raise Rejected("malformed", f"a tag must be text, got {type(item).__name__}")
        if tag := clean_text(item):
            tags.append(tag)
    return tags


def extra_json(fields: dict[str, Any]) -> str | None:
    """Source-specific fields as the `extra` JSON string (None values dropped)."""
    kept = {k: v for k, v in fields.items() if v is not None and v != ""}
    return json.dumps(kept, ensure_ascii=False, sort_keys=True) if kept else None


class BatchBuilder:
    """Collects rows and quarantined records of one input file."""

    def __init__(self, source: str, input_file: str, batch_rows: int | None = None) -> None:
        self.source, self.input_file = source, input_file
        self.batch_rows = batch_rows or BATCH_ROWS
        self._rows: list[dict[str, Any]] = []
        self._record_nos: list[int | None] = []
        self._rejects: list[dict[str, Any]] = []
        self._read = 0

    def add(self, source_id: str, row: dict[str, Any], lic: License, origin: str = "item",
            record_no: int | None = None) -> None:
        """One catalog row; `lic` must be open (quarantine records with license 'other' instead)."""
        assert lic.is_open, "quarantine records with license 'other' instead"
        self._read += 1
        self._rows.append({"key": f"{self.source}:{source_id}", "source": self.source, "source_id": source_id,
                           **row, **license_columns(lic, origin)})
        self._record_nos.append(record_no)

    def reject(self, record_no: int | None, raw: Any, reason: str, detail: str) -> None:
        """One quarantined record: the raw record (text, or JSON of a structured one) and why."""
        self._read += 1
        self._rejects.append(_reject_row(self.source, self.input_file, record_no, raw, reason, detail))

    @property
    def full(self) -> bool:
        return self._read >= self.batch_rows

    def flush(self) -> SourceBatch:
        try:
            rows = pa.Table.from_pylist(self._rows, schema=CATALOG_SCHEMA)
        except (pa.ArrowException, OverflowError, UnicodeEncodeError):
            rows = self._rows_one_by_one()  # rare: find the row Arrow refuses instead of losing the batch
        batch = SourceBatch(rows, pa.Table.from_pylist(self._rejects, schema=QUARANTINE_SCHEMA), self._read)
        self._rows, self._record_nos, self._rejects, self._read = [], [], [], 0
        return batch

    def _rows_one_by_one(self) -> pa.Table:
        tables = []
        for row, record_no in zip(self._rows, self._record_nos, strict=True):
            try:
                tables.append(pa.Table.from_pylist([row], schema=CATALOG_SCHEMA))
            except (pa.ArrowException, OverflowError, UnicodeEncodeError) as e:
                self._rejects.append(_reject_row(self.source, self.input_file, record_no, row, "malformed",
                                                 f"a field does not fit the catalog schema: {e}"))
        return pa.concat_tables([CATALOG_SCHEMA.empty_table(), *tables])


def _reject_row(source: str, input_file: str, record_no: int | None, raw: Any, reason: str,
                detail: str) -> dict[str, Any]:
    if not isinstance(raw, str):
        raw = json.dumps(raw, ensure_ascii=False, default=repr)
    return {"source": source, "input_file": input_file, "record_no": record_no,
            "raw": safe_text(raw), "reason": reason, "detail": safe_text(str(detail)[:2000])}
