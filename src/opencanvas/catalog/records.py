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


def clean_text(value: Any) -> str | None:
    """Source text with surrounding blanks removed; empty becomes None."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def as_int(value: Any) -> int | None:
    """An integer field that sources give as int, string or nothing."""
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


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
        self._rejects: list[dict[str, Any]] = []
        self._read = 0

    def add(self, source_id: str, row: dict[str, Any], lic: License, origin: str = "item") -> None:
        """One catalog row; `lic` must be open (check with `reject_license` first)."""
        assert lic.is_open, "quarantine records with license 'other' instead"
        self._read += 1
        self._rows.append({"key": f"{self.source}:{source_id}", "source": self.source, "source_id": source_id,
                           **row, **license_columns(lic, origin)})

    def reject(self, record_no: int, raw: Any, reason: str, detail: str) -> None:
        """One quarantined record: the raw record (text, or JSON of a structured one) and why."""
        self._read += 1
        if not isinstance(raw, str):
            raw = json.dumps(raw, ensure_ascii=False, default=str)
        self._rejects.append({"source": self.source, "input_file": self.input_file, "record_no": record_no,
                              "raw": raw, "reason": reason, "detail": detail})

    @property
    def full(self) -> bool:
        return self._read >= self.batch_rows

    def flush(self) -> SourceBatch:
        batch = SourceBatch(pa.Table.from_pylist(self._rows, schema=CATALOG_SCHEMA),
                            pa.Table.from_pylist(self._rejects, schema=QUARANTINE_SCHEMA), self._read)
        self._rows, self._rejects, self._read = [], [], 0
        return batch
