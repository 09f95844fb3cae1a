"""What every source adapter provides, and the JSON-lines reading two of them share."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencanvas.catalog.records import BatchBuilder, Rejected, SourceBatch, safe_text
from opencanvas.licenses import License, LicenseRejected, license_of


class InputFormatError(ValueError):
    """An input file is not in the format its source adapter reads."""


@dataclass(frozen=True)
class InputUnit:
    """One unit of resumable work: an input file, or a folder for folder-shaped sources."""

    source: str
    path: str  # absolute path
    root: str = ""  # for tree sources: the library root that keys are relative to


@dataclass(frozen=True)
class SourceAdapter:
    name: str
    summary: str
    plan: Callable[[Sequence[Path]], list[InputUnit]]        # expands and checks the inputs
    read: Callable[[InputUnit], Iterator[SourceBatch]]       # reads one unit, batch by batch


def record_license(name: Any = None, url: Any = None, what: str = "license") -> License:
    """The record's open license (`licenses.license_of`: name and URL must agree), else `Rejected`."""
    if isinstance(name, bytes | bytearray) or isinstance(url, bytes | bytearray):
        raise Rejected("license:other", f"{what} is bytes, not text")
    try:
        return license_of(None if name is None else str(name), None if url is None else str(url), what)
    except LicenseRejected as e:
        raise Rejected(e.reason, e.detail) from None


def add_record(builder: BatchBuilder, record_no: int, raw: Any, row_of: Callable[..., tuple[Any, ...]],
               *args: Any) -> None:
    """Add the row `row_of(*args)` builds, or quarantine the record with its reason; never stops the input.

    `row_of` returns (source_id, row, license) or (..., license_origin). It runs here, so that
    whatever one record does (a wrong type, a decoder's limit, an XML bomb) stays that record's
    problem: the rest of the file still ingests.
    """
    try:
        source_id, row, lic, *origin = row_of(*args)
        builder.add(str(source_id), row, lic, origin[0] if origin else "item", record_no=record_no)
    except Rejected as e:
        builder.reject(record_no, raw, e.reason, e.detail)
    except Exception as e:  # noqa: BLE001 - the per-record boundary: an unforeseen error quarantines one record
        builder.reject(record_no, raw, "malformed", f"{type(e).__name__}: {safe_text(str(e))[:300]}")


def require(record: dict[str, Any], *fields: str) -> None:
    missing = [f for f in fields if record.get(f) in (None, "")]
    if missing:
        raise Rejected("missing:" + ",".join(missing), f"required field(s) {', '.join(missing)} missing or empty")


def check_jsonl(path: Path, expected: str, required: Sequence[str]) -> None:
    """Fail early, naming the file, when `path` does not start with a JSON object line."""
    if not path.is_file():
        raise InputFormatError(f"{path}: not a file; expected {expected}")
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                first = json.loads(line)
            except (UnicodeDecodeError, ValueError):
                raise InputFormatError(f"{path}: first line is not JSON; expected {expected}") from None
            if not isinstance(first, dict) or not any(k in first for k in required):
                raise InputFormatError(
                    f"{path}: first record has none of the fields {list(required)}; expected {expected}")
            return
    raise InputFormatError(f"{path}: empty file; expected {expected}")


def plan_files(paths: Sequence[Path], check: Callable[[Path], None]) -> list[Path]:
    """Input files, checked; a folder stands for the files directly in it (sorted)."""
    files: list[Path] = []
    for p in paths:
        p = Path(p).resolve()
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
        elif p.exists():
            files.append(p)
        else:
            raise InputFormatError(f"{p}: no such file or folder")
    for f in files:
        check(f)
    return files


def _checked_row(to_row: Callable[[dict[str, Any]], tuple[Any, ...]], record: Any) -> tuple[Any, ...]:
    if not isinstance(record, dict):
        raise Rejected("malformed", "line is JSON but not an object")
    return to_row(record)


def read_jsonl(
    unit: InputUnit, to_row: Callable[[dict[str, Any]], tuple[str, dict[str, Any], License]],
) -> Iterator[SourceBatch]:
    """JSON lines -> batches; a record `to_row` rejects, or a bad line, goes to quarantine."""
    builder = BatchBuilder(unit.source, unit.path)
    with open(unit.path, "rb") as f:
        for record_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                builder.reject(record_no, raw.decode("utf-8", "replace"), "encoding", f"not UTF-8: {e}")
                continue
            try:
                record = json.loads(text)
            except (ValueError, RecursionError) as e:  # JSONDecodeError, or nesting deeper than Python's stack
                builder.reject(record_no, text.rstrip("\n"), "malformed", f"invalid JSON: {e}")
            else:
                add_record(builder, record_no, text.rstrip("\n"), _checked_row, to_row, record)
            if builder.full:
                yield builder.flush()
    yield builder.flush()
