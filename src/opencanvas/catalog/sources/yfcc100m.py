"""YFCC100M's `yfcc100m_dataset` file: 25 tab-separated columns, plain or .bz2.

The file has ~100M lines, so nothing here loops over rows in Python. The main
thread only cuts the file into chunks at line ends; worker threads parse each
chunk with Arrow's CSV reader (no quoting: fields are URL-encoded, tabs never
appear inside them) and judge it with DuckDB, which decodes the URL-encoded
text, maps the handful of distinct (license name, license URL) pairs through
`opencanvas.licenses.license_of` (the function every source uses: name and URL
must agree) and assigns quarantine reasons, column-wise. Lines with the wrong field count
reach quarantine through Arrow's invalid-row handler with their raw text and
line number (1-based, empty lines not counted).
"""

from __future__ import annotations

import bz2
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote_plus

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from opencanvas.allocator import keep_freed_memory
from opencanvas.catalog.records import SourceBatch
from opencanvas.catalog.schema import CATALOG_SCHEMA, QUARANTINE_SCHEMA
from opencanvas.catalog.sources.base import InputFormatError, InputUnit, SourceAdapter, plan_files
from opencanvas.licenses import OTHER, LicenseRejected, license_of

NAME = "yfcc100m"
COLUMNS = (
    "line_number", "photo_id", "photo_hash", "user_nsid", "user_nickname", "date_taken", "date_uploaded",
    "capture_device", "title", "description", "user_tags", "machine_tags", "longitude", "latitude",
    "accuracy", "page_url", "download_url", "license_name", "license_url", "server_id", "farm_id",
    "secret", "original_secret", "extension", "marker",
)
EXPECTED = f"the YFCC100M dataset file: {len(COLUMNS)} tab-separated fields per line (plain or .bz2)"
BLOCK_BYTES = 16 << 20
JUDGE_THREADS = 2
# URL-encoded text fields ('+' is a space, then %XX escapes).
ENCODED = ("user_nickname", "capture_device", "title", "description", "user_tags", "machine_tags")


def _open_text(path: Path):
    return bz2.open(path, "rb") if path.suffix == ".bz2" else open(path, "rb")


def check(path: Path) -> None:
    """Fail early, naming the file, when its first line is not a YFCC100M record."""
    try:
        with _open_text(path) as f:
            first = f.readline(1 << 20)
    except (OSError, EOFError) as e:
        raise InputFormatError(f"{path}: cannot read ({e}); expected {EXPECTED}") from None
    fields = first.rstrip(b"\r\n").split(b"\t")
    if len(fields) != len(COLUMNS):
        raise InputFormatError(f"{path}: line 1 has {len(fields)} tab-separated field(s); expected {EXPECTED}")


def plan(paths: Sequence[Path]) -> list[InputUnit]:
    return [InputUnit(NAME, str(f)) for f in plan_files(paths, check)]


def _decode(col: str) -> str:
    # Most fields have no escapes; skipping url_decode for them saves a copy per field.
    return (f"CASE WHEN contains({col}, '%') THEN try(url_decode(replace({col}, '+', ' '))) "
            f"WHEN contains({col}, '+') THEN replace({col}, '+', ' ') ELSE {col} END")


def _license_table(batch: pa.Table) -> pa.Table:
    """Distinct (license_name, license_url) pairs of the batch -> license columns and reason (a few rows)."""
    pairs = batch.select(["license_name", "license_url"]).group_by(["license_name", "license_url"]).aggregate([])
    rows = []
    for name, url in zip(pairs["license_name"].to_pylist(), pairs["license_url"].to_pylist(), strict=True):
        reason = detail = None
        try:  # names and URLs are URL-encoded ("Attribution+License")
            lic = license_of(unquote_plus(name, errors="strict") or None, unquote_plus(url, errors="strict") or None)
        except LicenseRejected as e:
            lic, reason, detail = OTHER, e.reason, e.detail
        except UnicodeDecodeError:
            lic, reason, detail = OTHER, "license:other", f"license {name!r} {url!r} does not decode to UTF-8"
        rows.append({"license_name": name, "license_url": url, "license_id": lic.license_id,
                     "license_version": lic.version, "license_url_norm": lic.url,
                     "commercial_ok": lic.commercial_ok, "derivatives_ok": lic.derivatives_ok,
                     "share_alike": lic.share_alike, "attribution_required": lic.attribution_required,
                     "license_reason": reason, "license_detail": detail})
    return pa.Table.from_pylist(rows, schema=_LICENSE_SCHEMA)


_LICENSE_SCHEMA = pa.schema([
    ("license_name", pa.string()), ("license_url", pa.string()), ("license_id", pa.string()),
    ("license_version", pa.string()), ("license_url_norm", pa.string()), ("commercial_ok", pa.bool_()),
    ("derivatives_ok", pa.bool_()), ("share_alike", pa.bool_()), ("attribution_required", pa.bool_()),
    ("license_reason", pa.string()), ("license_detail", pa.string()),
])

_REASON = f"""
CASE
  WHEN marker = '1' THEN 'video'
  WHEN marker <> '0' THEN 'malformed'
  WHEN photo_id = '' THEN 'missing:photo_id'
  WHEN download_url = '' THEN 'missing:download_url'
  WHEN {' OR '.join(f"d_{c} IS NULL" for c in ENCODED)} THEN 'encoding'
  WHEN license_reason IS NOT NULL THEN license_reason
END"""

_DETAIL = """
CASE
  WHEN reason = 'video' THEN 'marker 1: a video, the catalog keeps photos only'
  WHEN reason = 'malformed' THEN 'marker must be 0 (photo) or 1 (video), got ' || marker
  WHEN reason = 'encoding' THEN 'a URL-encoded text field does not decode to UTF-8'
  WHEN reason LIKE 'license:%' THEN license_detail
  ELSE 'required field empty'
END"""

# One pass: decode each text field once (a NULL decode marks bad percent-encoding),
# judge the record, and build both the catalog columns and, for rejects only, the raw line.
_DECODED = f"""
SELECT b.*, lic.* EXCLUDE (license_name, license_url), {', '.join(f"{_decode(c)} AS d_{c}" for c in ENCODED)}
FROM batch b LEFT JOIN lic USING (license_name, license_url)
"""

# Catalog columns for every line plus, where a reason is set (rejects only), the raw line:
# CASE is evaluated lazily per vector, so clean lines never pay for concat_ws.
_SELECT = f"""
SELECT 'yfcc100m:' || photo_id AS key, 'yfcc100m' AS source, photo_id AS source_id,
  nullif(d_title, '') AS title,
  nullif(d_description, '') AS description,
  CASE WHEN reason IS NOT NULL THEN NULL
    WHEN contains(user_tags, '%') OR contains(user_tags, '+') THEN
      list_transform(list_filter(string_split(user_tags, ','), lambda t: t <> ''),
                     lambda t: url_decode(replace(t, '+', ' ')))
    ELSE list_filter(string_split(user_tags, ','), lambda t: t <> '') END AS tags,
  NULL::VARCHAR AS category,
  nullif(d_user_nickname, '') AS creator,
  CASE WHEN user_nsid <> '' THEN 'https://www.flickr.com/photos/' || user_nsid || '/' END AS creator_url,
  nullif(page_url, '') AS landing_url, download_url, NULL::VARCHAR AS local_path,
  license_id, license_version, license_url_norm AS license_url, 'item' AS license_origin,
  commercial_ok, derivatives_ok, share_alike, attribution_required,
  NULL::BIGINT AS width, NULL::BIGINT AS height,
  to_json(struct_pack(photo_hash := nullif(photo_hash, ''), user_nsid := nullif(user_nsid, ''),
              date_taken := nullif(date_taken, ''), date_uploaded := nullif(date_uploaded, ''),
              capture_device := nullif(d_capture_device, ''), machine_tags := nullif(d_machine_tags, ''),
              longitude := nullif(longitude, ''), latitude := nullif(latitude, ''),
              accuracy := nullif(accuracy, '')))::VARCHAR AS extra,
  reason,
  CASE WHEN reason IS NOT NULL THEN try_cast(line_number AS BIGINT) END AS record_no,
  CASE WHEN reason IS NOT NULL THEN concat_ws(chr(9), {', '.join(COLUMNS)}) END AS raw,
  CASE WHEN reason IS NOT NULL THEN {_DETAIL} END AS detail
FROM (SELECT *, {_REASON} AS reason FROM ({_DECODED}))
"""


def _split(table: pa.Table, path: str) -> tuple[pa.Table, pa.Table]:
    """(catalog rows, quarantine rows) of the judged batch."""
    ok = pc.is_null(table["reason"])
    rows = table.select(CATALOG_SCHEMA.names).filter(ok).cast(CATALOG_SCHEMA)
    bad = table.filter(pc.invert(ok))
    n = bad.num_rows
    rejects = pa.table({
        "source": pa.array([NAME] * n, pa.string()), "input_file": pa.array([path] * n, pa.string()),
        "record_no": bad["record_no"], "raw": bad["raw"], "reason": bad["reason"], "detail": bad["detail"],
    }, schema=QUARANTINE_SCHEMA)
    return rows, rejects


def _split_invalid_utf8(table: pa.Table, path: str) -> tuple[pa.Table, list[dict]]:
    """Rows whose raw bytes are not UTF-8 (rare): removed from the table, returned as quarantine rows."""
    try:
        table.validate(full=True)
        return table, []
    except pa.ArrowInvalid:
        pass
    binary = [table[c].cast(pa.binary()).to_pylist() for c in COLUMNS]
    bad = []
    for i, fields in enumerate(zip(*binary, strict=True)):
        try:
            for f in fields:
                f.decode("utf-8")
        except UnicodeDecodeError as e:
            bad.append((i, fields, e))
    rejects = [{"source": NAME, "input_file": path, "record_no": None,
                "raw": b"\t".join(fields).decode("utf-8", "replace"), "reason": "encoding",
                "detail": f"line is not UTF-8: {e}"} for _, fields, e in bad]
    keep = pc.invert(pc.is_in(pa.array(range(table.num_rows)), pa.array([i for i, _, _ in bad])))
    binary_table = table.cast(pa.schema([(c, pa.binary()) for c in COLUMNS])).filter(keep)
    return binary_table.cast(pa.schema([(c, pa.string()) for c in COLUMNS])), rejects


_local = threading.local()


def _thread_connection() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per judging thread, single-threaded: parallelism comes from judging blocks concurrently."""
    if not hasattr(_local, "con"):
        _local.con = duckdb.connect(config={"threads": 1})
    return _local.con


def _judge(batch: pa.Table, path: str) -> SourceBatch:
    """One parsed chunk -> catalog rows + quarantine rows (runs in a worker thread)."""
    batch, bad_utf8 = _split_invalid_utf8(batch, path)
    con = _thread_connection()
    con.register("batch", batch)
    con.register("lic", _license_table(batch))
    try:
        rows, rejects = _split(con.sql(_SELECT).to_arrow_table(), path)
    finally:
        con.unregister("batch")
        con.unregister("lic")
    if bad_utf8:
        rejects = pa.concat_tables([rejects, pa.Table.from_pylist(bad_utf8, schema=QUARANTINE_SCHEMA)])
    return SourceBatch(rows, rejects, rows.num_rows + rejects.num_rows)


def _line_chunks(path: str) -> Iterator[bytes]:
    """The (decompressed) file in pieces of about BLOCK_BYTES that each end at a line end."""
    stream = pa.input_stream(path, compression="bz2" if path.endswith(".bz2") else None)
    with stream:
        rest = b""
        while block := stream.read(BLOCK_BYTES):
            cut = block.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a block: keep reading
                rest += block
                continue
            yield b"".join((rest, memoryview(block)[:cut]))  # one copy, ~2 ms per block
            rest = block[cut:]
        if rest:
            yield rest


_CONVERT = pacsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS}, check_utf8=False,
                                null_values=[], strings_can_be_null=False)


def _parse(chunk: bytes, path: str) -> tuple[pa.Table, list[dict]]:
    """Lines -> a table of 25 string columns + quarantine rows for lines with the wrong field count.

    Their `record_no` is the line's number within the chunk (1-based, empty lines not
    counted); `read` shifts it by the lines of the chunks before.
    """
    try:
        return _parse_arrow(chunk, path)
    except pa.ArrowInvalid:  # Arrow cannot hand a short line that is not UTF-8 to the handler
        return _parse_line_by_line(chunk, path)


def _malformed(path: str, number: int | None, raw: str, fields: int) -> dict:
    return {"source": NAME, "input_file": path, "record_no": number, "raw": raw, "reason": "malformed",
            "detail": f"{fields} tab-separated fields, expected {len(COLUMNS)}"}


def _parse_arrow(chunk: bytes, path: str) -> tuple[pa.Table, list[dict]]:
    invalid: list[dict] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        invalid.append(_malformed(path, row.number, row.text, row.actual_columns))
        return "skip"

    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False, double_quote=False,
                               newlines_in_values=False, ignore_empty_lines=True, invalid_row_handler=on_invalid)
    read = pacsv.ReadOptions(column_names=list(COLUMNS), use_threads=False, block_size=len(chunk) + 1)
    table = pacsv.read_csv(pa.py_buffer(chunk), read_options=read, parse_options=parse, convert_options=_CONVERT)
    return table, invalid


def _parse_line_by_line(chunk: bytes, path: str) -> tuple[pa.Table, list[dict]]:
    """The rare slow path: split lines in Python, quarantine the short ones, parse the rest."""
    lines = [line.rstrip(b"\r") for line in chunk.split(b"\n")]
    good, invalid = [], []
    for number, line in enumerate((ln for ln in lines if ln), start=1):
        fields = line.count(b"\t") + 1
        if fields == len(COLUMNS):
            good.append(line)
        else:
            invalid.append(_malformed(path, number, line.decode("utf-8", "replace"), fields))
    table, _ = _parse_arrow(b"\n".join(good) + b"\n", path) if good else (_empty_table(), [])
    return table, invalid


def _empty_table() -> pa.Table:
    return pa.schema([(c, pa.string()) for c in COLUMNS]).empty_table()


def _parse_and_judge(chunk: bytes, path: str) -> tuple[SourceBatch, list[dict]]:
    table, invalid = _parse(chunk, path)
    return _judge(table, path), invalid


def read(unit: InputUnit) -> Iterator[SourceBatch]:
    # The main thread only cuts the file at line ends; JUDGE_THREADS threads parse and judge
    # the chunks (Arrow and DuckDB release the GIL) while the caller writes Parquet. Results
    # come back in file order, at most 2 * JUDGE_THREADS chunks in flight.
    keep_freed_memory()  # chunks are allocated and freed over and over: reuse, not page faults
    lines_before = 0

    def in_order(done: SourceBatch, invalid: list[dict]) -> SourceBatch:
        nonlocal lines_before
        for row in invalid:
            row["record_no"] = lines_before + row["record_no"] if row["record_no"] and row["record_no"] > 0 else None
        lines_before += done.read + len(invalid)
        if not invalid:
            return done
        rejects = pa.concat_tables([done.quarantine, pa.Table.from_pylist(invalid, schema=QUARANTINE_SCHEMA)])
        return SourceBatch(done.catalog, rejects, done.read + len(invalid))

    with ThreadPoolExecutor(JUDGE_THREADS) as pool:
        inflight: deque[Future[tuple[SourceBatch, list[dict]]]] = deque()
        try:
            for chunk in _line_chunks(unit.path):
                inflight.append(pool.submit(_parse_and_judge, chunk, unit.path))
                if len(inflight) >= 2 * JUDGE_THREADS:
                    yield in_order(*inflight.popleft().result())
            while inflight:
                yield in_order(*inflight.popleft().result())
        except (pa.ArrowInvalid, OSError, EOFError, duckdb.Error) as e:  # e.g. a truncated .bz2, binary garbage
            raise InputFormatError(f"{unit.path}: unreadable after {e!s:.300}; expected {EXPECTED}") from None


ADAPTER = SourceAdapter(NAME, "YFCC100M yfcc100m_dataset (tab-separated, plain or .bz2)", plan, read)
