"""Image-text dumps as tables (Parquet, JSON lines, CSV): PD12M, Megalith-10m and any other, by a column map.

A column map names, for each catalog field, the input column that holds it:
`key=id,url=url,license=license,caption=caption`. Fields: key and url (required),
license and license_url (at least one; both go through `licenses.license_of`, the
strict normaliser every source uses), title, description, author, author_url,
landing_url, width, height, caption, md5 (checked by `fetch` after download).
A mapped caption is kept in `extra` (`caption`, `caption_set`) for the `shipped`
captioner, which writes it as the caption set `captions/<caption_set>/`.

Tables are read batch by batch (Parquet by row group, CSV by block) and judged
column-wise by DuckDB, like the YFCC reader: licenses are looked up once per distinct
(license, license_url) pair, so nothing loops over rows in Python. A row without a
key or URL, or without an open license, goes to quarantine with its reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from opencanvas.catalog.records import SourceBatch, safe_text
from opencanvas.catalog.schema import CATALOG_SCHEMA, QUARANTINE_SCHEMA
from opencanvas.catalog.sources.base import InputFormatError, InputUnit, SourceAdapter, plan_files
from opencanvas.licenses import OTHER, LicenseRejected, license_of

FIELDS = ("key", "url", "license", "license_url", "title", "description", "author", "author_url", "landing_url",
          "width", "height", "caption", "md5")
REQUIRED = ("key", "url")
BATCH_ROWS = 100_000
SUFFIXES = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}

# PD12M (Spawning): id, url, caption, width, height, mime_type, hash (MD5), license (a URL), source.
PD12M_MAP = {"key": "id", "url": "url", "caption": "caption", "width": "width", "height": "height",
             "license_url": "license", "md5": "hash"}
PD12M_EXTRA = ("mime_type", "source")


def parse_map(text: str) -> dict[str, str]:
    """`key=id,url=url,...` -> {"key": "id", "url": "url", ...}; unknown fields are an error."""
    mapping: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        field, eq, column = item.partition("=")
        field, column = field.strip(), column.strip()
        if not eq or not column:
            raise InputFormatError(f"--map item {item!r}: write FIELD=COLUMN, e.g. key=id,url=url,license=license")
        if field not in FIELDS:
            raise InputFormatError(f"--map field {field!r} is not one of {', '.join(FIELDS)}")
        mapping[field] = column
    missing = [f for f in REQUIRED if f not in mapping]
    if missing or not ({"license", "license_url"} & set(mapping)):
        raise InputFormatError("--map must name key, url and license (or license_url), e.g. "
                               "--map key=id,url=url,license=license")
    return mapping


def table_format(path: Path) -> str:
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise InputFormatError(f"{path}: not a .parquet, .jsonl or .csv file")
    return fmt


def columns_of(path: Path) -> list[str]:
    """The file's column names, read from its schema or first record (a one-line error when unreadable)."""
    fmt = table_format(path)
    try:
        if fmt == "parquet":
            return pq.ParquetFile(path).schema_arrow.names
        if fmt == "csv":
            skip_bad = pacsv.ParseOptions(invalid_row_handler=lambda row: "skip")  # rows are judged when read
            with pacsv.open_csv(path, parse_options=skip_bad) as reader:
                return reader.schema.names
        with open(path, "rb") as f:
            first = json.loads(next(line for line in f if line.strip()))
        if not isinstance(first, dict):
            raise ValueError("first line is not a JSON object")
        return list(first)
    except (OSError, ValueError, StopIteration, pa.ArrowException) as e:
        raise InputFormatError(f"{path}: cannot read it as {fmt} ({e})") from None


def check_columns(path: Path, mapping: dict[str, str], extra: Sequence[str] = ()) -> None:
    have = set(columns_of(path))
    missing = sorted({*mapping.values(), *extra} - have)
    if missing:
        raise InputFormatError(f"{path}: no column(s) {', '.join(missing)}; it has {', '.join(sorted(have))}. "
                               "Fix the --map (or the file)")


@dataclass
class FileBatch:
    table: pa.Table                    # the file's columns (text for JSON lines and CSV)
    record_nos: list[int]              # each row's 1-based record number in the file (data lines for CSV)
    rejects: list[tuple[int, str, str]]  # (record number, raw text, detail) of lines that do not parse


def batches(path: Path, columns: Sequence[str]) -> Iterator[FileBatch]:
    """The file's `columns`, a batch at a time; lines that do not parse come back as rejects."""
    fmt = table_format(path)
    if fmt == "parquet":
        first = 1
        for batch in pq.ParquetFile(path).iter_batches(BATCH_ROWS, columns=list(columns)):
            yield FileBatch(pa.Table.from_batches([batch]), list(range(first, first + batch.num_rows)), [])
            first += batch.num_rows
    elif fmt == "csv":
        yield from _csv_batches(path, columns)
    else:
        yield from _jsonl_batches(path, columns)


def _csv_batches(path: Path, columns: Sequence[str]) -> Iterator[FileBatch]:
    bad: dict[int, str] = {}

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad[row.number - 1] = row.text  # file line -> data record number (line 1 is the header)
        return "skip"

    options = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns_of(path)},
                                   include_columns=list(columns))
    record = 0
    with pacsv.open_csv(path, read_options=pacsv.ReadOptions(use_threads=False), convert_options=options,
                        parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid)) as reader:
        for batch in reader:  # blocks are parsed in order, so `bad` holds this block's invalid lines now
            numbers: list[int] = []
            while len(numbers) < batch.num_rows:
                record += 1
                if record not in bad:
                    numbers.append(record)
            rejects = [(n, bad.pop(n), "wrong number of fields") for n in sorted(k for k in bad if k <= record)]
            yield FileBatch(pa.Table.from_batches([batch]), numbers, rejects)
    if bad:
        yield FileBatch(pa.Table.from_pylist([], pa.schema([(c, pa.string()) for c in columns])), [],
                        [(n, text, "wrong number of fields") for n, text in sorted(bad.items())])


def _jsonl_batches(path: Path, columns: Sequence[str]) -> Iterator[FileBatch]:
    """JSON lines, parsed line by line so that one bad line is that line's problem; values become text."""
    schema = pa.schema([(c, pa.string()) for c in columns])
    values: dict[str, list[str | None]] = {c: [] for c in columns}
    numbers: list[int] = []
    rejects: list[tuple[int, str, str]] = []
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                rejects.append((number, line.decode("utf-8", "replace").rstrip("\n"), f"invalid JSON: {e}"))
                continue
            if not isinstance(record, dict):
                rejects.append((number, line.decode("utf-8", "replace").rstrip("\n"), "line is JSON but not an object"))
                continue
            for c in columns:
                v = record.get(c)
                values[c].append(v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False))
            numbers.append(number)
            if len(numbers) + len(rejects) >= BATCH_ROWS:
                yield FileBatch(pa.table(values, schema=schema), numbers, rejects)
                values, numbers, rejects = {c: [] for c in columns}, [], []
    yield FileBatch(pa.table(values, schema=schema), numbers, rejects)


_LICENSE_SCHEMA = pa.schema([
    ("license", pa.string()), ("license_url", pa.string()), ("license_id", pa.string()),
    ("license_version", pa.string()), ("license_url_norm", pa.string()), ("commercial_ok", pa.bool_()),
    ("derivatives_ok", pa.bool_()), ("share_alike", pa.bool_()), ("attribution_required", pa.bool_()),
    ("license_reason", pa.string()), ("license_detail", pa.string()),
])


def _license_table(batch: pa.Table) -> pa.Table:
    """Distinct (license, license_url) pairs -> license columns and reason (a handful of rows)."""
    pairs = batch.select(["license", "license_url"]).group_by(["license", "license_url"]).aggregate([])
    rows = []
    for name, url in zip(pairs["license"].to_pylist(), pairs["license_url"].to_pylist(), strict=True):
        reason = detail = None
        try:
            lic = license_of(name or None, url or None)
        except LicenseRejected as e:
            lic, reason, detail = OTHER, e.reason, e.detail
        rows.append({"license": name, "license_url": url, "license_id": lic.license_id,
                     "license_version": lic.version, "license_url_norm": lic.url,
                     "commercial_ok": lic.commercial_ok, "derivatives_ok": lic.derivatives_ok,
                     "share_alike": lic.share_alike, "attribution_required": lic.attribution_required,
                     "license_reason": reason, "license_detail": detail})
    return pa.Table.from_pylist(rows, schema=_LICENSE_SCHEMA)


def _text(table: pa.Table, column: str | None) -> pa.Array:
    if column is None:
        return pa.nulls(table.num_rows, pa.string())
    col = table[column]
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.cast(pa.string())
    return col.cast(pa.string()) if not pa.types.is_nested(col.type) else pa.nulls(table.num_rows, pa.string())


def _sql(source: str, mapping: dict[str, str], extra_fields: Sequence[str]) -> str:
    kept = [f for f in ("caption", "md5") if f in mapping] + list(extra_fields)
    extra = ", ".join(f"{f} := nullif(trim(x_{f}), '')" for f in kept) or "none := NULL"
    return f"""
SELECT '{source}:' || trim(key) AS key, '{source}' AS source, trim(key) AS source_id,
  nullif(trim(title), '') AS title, nullif(trim(description), '') AS description, []::VARCHAR[] AS tags,
  NULL::VARCHAR AS category, nullif(trim(author), '') AS creator, nullif(trim(author_url), '') AS creator_url,
  nullif(trim(landing_url), '') AS landing_url, trim(url) AS download_url, NULL::VARCHAR AS local_path,
  license_id, license_version, license_url_norm AS license_url, 'item' AS license_origin,
  commercial_ok, derivatives_ok, share_alike, attribution_required,
  try_cast(try_cast(width AS DOUBLE) AS BIGINT) AS width, try_cast(try_cast(height AS DOUBLE) AS BIGINT) AS height,
  CASE WHEN x_caption IS NOT NULL AND trim(x_caption) <> '' THEN
    to_json(struct_pack({extra}, caption_set := $caption_set))::VARCHAR
  WHEN {bool(kept)} THEN to_json(struct_pack({extra}))::VARCHAR END AS extra,
  reason, record_no, pos,
  CASE WHEN reason LIKE 'missing:%' THEN 'required field ' || replace(reason, 'missing:', '') || ' missing or empty'
    WHEN reason IS NOT NULL THEN coalesce(license_detail, 'no open license') END AS detail
FROM (SELECT *, CASE
    WHEN key IS NULL OR trim(key) = '' THEN 'missing:key'
    WHEN url IS NULL OR trim(url) = '' THEN 'missing:url'
    WHEN license_reason IS NOT NULL THEN license_reason
    WHEN license_id IS NULL OR license_id = 'other' THEN 'license:other' END AS reason
  FROM batch b LEFT JOIN lic USING (license, license_url))
"""


def read_table(unit: InputUnit, source: str, mapping: dict[str, str], caption_set: str | None,
               extra_columns: Sequence[str] = (), columns: Sequence[str] | None = None,
               prepare: Callable[[pa.Table], pa.Table] | None = None) -> Iterator[SourceBatch]:
    """One table file -> catalog rows and quarantine rows, batch by batch.

    `prepare` derives mapped columns from the file's `columns` (Megalith: the photo id from its page URL).
    """
    columns = sorted(columns or {*mapping.values(), *extra_columns})
    sql = _sql(source, mapping, extra_columns)
    con = duckdb.connect(config={"threads": 1})
    try:
        for file_batch in batches(Path(unit.path), columns):
            raw_batch = prepare(file_batch.table) if prepare else file_batch.table
            n = raw_batch.num_rows
            batch = pa.table({
                **{f: _text(raw_batch, mapping.get(f)) for f in FIELDS if f not in ("caption", "md5", "license",
                                                                                    "license_url")},
                # '' rather than NULL, so that the join with the license table matches every row
                "license": pc.fill_null(_text(raw_batch, mapping.get("license")), ""),
                "license_url": pc.fill_null(_text(raw_batch, mapping.get("license_url")), ""),
                "x_caption": _text(raw_batch, mapping.get("caption")), "x_md5": _text(raw_batch, mapping.get("md5")),
                **{f"x_{c}": _text(raw_batch, c) for c in extra_columns},
                "record_no": pa.array(file_batch.record_nos, pa.int64()),
                "pos": pa.array(range(n), pa.int64()),
            })
            con.register("batch", batch)
            con.register("lic", _license_table(batch))
            try:
                judged = con.sql(sql, params={"caption_set": caption_set or ""}).to_arrow_table()
            finally:
                con.unregister("batch")
                con.unregister("lic")
            yield _split(con, judged, raw_batch, file_batch.rejects, source, unit.path)
    finally:
        con.close()


def _split(con: duckdb.DuckDBPyConnection, table: pa.Table, raw_batch: pa.Table,
           unparsed: list[tuple[int, str, str]], source: str, path: str) -> SourceBatch:
    """(catalog rows, quarantine rows); only rejected rows pay for their raw JSON."""
    ok = pc.is_null(table["reason"])
    rows = table.select(CATALOG_SCHEMA.names).filter(ok).cast(CATALOG_SCHEMA)
    bad = table.filter(pc.invert(ok))
    n = bad.num_rows
    raw = pa.array([], pa.string())
    if n:
        con.register("raw_rows", raw_batch.take(bad["pos"]))
        try:
            raw = con.sql("SELECT to_json(r)::VARCHAR AS raw FROM raw_rows r").to_arrow_table()["raw"]
        finally:
            con.unregister("raw_rows")
    rejects = pa.table({
        "source": pa.array([source] * n, pa.string()), "input_file": pa.array([path] * n, pa.string()),
        "record_no": bad["record_no"], "raw": raw, "reason": bad["reason"], "detail": bad["detail"],
    }, schema=QUARANTINE_SCHEMA)
    if unparsed:
        rejects = pa.concat_tables([rejects, pa.Table.from_pylist(
            [{"source": source, "input_file": path, "record_no": no, "raw": safe_text(text), "reason": "malformed",
              "detail": safe_text(detail)} for no, text, detail in unparsed], schema=QUARANTINE_SCHEMA)])
    return SourceBatch(rows, rejects, rows.num_rows + rejects.num_rows)


# ---- the adapters ----------------------------------------------------------------

def _plan_pd12m(paths: Sequence[Path]) -> list[InputUnit]:
    return [InputUnit("pd12m", str(f)) for f in plan_files(paths, lambda p: check_columns(p, PD12M_MAP,
                                                                                             PD12M_EXTRA))]


def _read_pd12m(unit: InputUnit) -> Iterator[SourceBatch]:
    return read_table(unit, "pd12m", PD12M_MAP, "pd12m", PD12M_EXTRA)


def _plan_table(paths: Sequence[Path]) -> list[InputUnit]:
    return [InputUnit("table", str(f)) for f in plan_files(paths, _check_suffix)]


def _check_suffix(path: Path) -> None:
    table_format(path)  # raises InputFormatError for a file that is not .parquet, .jsonl or .csv


def _check_table(unit: InputUnit) -> None:
    """File-level checks that need the options: the map parses and names existing columns."""
    options = dict(unit.options)
    if "map" not in options:
        raise InputFormatError("catalog ingest table needs --map key=COL,url=COL,license=COL,...")
    check_columns(Path(unit.path), parse_map(options["map"]))


def _read_table(unit: InputUnit) -> Iterator[SourceBatch]:
    options = dict(unit.options)
    return read_table(unit, "table", parse_map(options["map"]), options.get("captions"))


# Megalith-10m: url (Flickr's 1024-px copy), url_highres (a larger copy, when there is one) and url_source
# (the photo page). Its images mix CC0, the Public Domain Mark, "no known copyright restrictions" and US
# Government works, and the metadata names none per image, so a license or license_url column is required.
MEGALITH_COLUMNS = ("url", "url_source")
_FLICKR_PHOTO_ID = r"flickr\.com/photos/[^/]+/(?P<id>\d+)"


def _check_megalith(path: Path) -> None:
    have = set(columns_of(path))
    check_columns(path, {c: c for c in MEGALITH_COLUMNS})
    if not {"license", "license_url"} & have:
        raise InputFormatError(
            f"{path}: no license or license_url column. Megalith-10m mixes CC0, Public Domain Mark, 'no known "
            "copyright restrictions' and US Government works without naming one per image; add the Flickr "
            "license per photo (e.g. from the Flickr API) as a license or license_url column, then re-run")


def _megalith_prepare(table: pa.Table) -> pa.Table:
    """photo_id from the page URL; the download URL is the high-resolution one when present."""
    best = table["url"]
    if "url_highres" in table.column_names:
        highres = pc.if_else(pc.equal(pc.utf8_trim_whitespace(table["url_highres"].cast(pa.string())), ""),
                             None, table["url_highres"].cast(pa.string()))
        best = pc.coalesce(highres, table["url"].cast(pa.string()))
    photo_id = pc.struct_field(pc.extract_regex(table["url_source"].cast(pa.string()), _FLICKR_PHOTO_ID), "id")
    return table.append_column("photo_id", photo_id).append_column("best_url", best)


def _plan_megalith(paths: Sequence[Path]) -> list[InputUnit]:
    return [InputUnit("megalith", str(f)) for f in plan_files(paths, _check_megalith)]


def _read_megalith(unit: InputUnit) -> Iterator[SourceBatch]:
    path = Path(unit.path)
    have = set(columns_of(path))
    licenses = [c for c in ("license", "license_url") if c in have]
    mapping: dict[str, str] = {"key": "photo_id", "url": "best_url", "landing_url": "url_source",
                               **{c: c for c in licenses}}
    columns = [*MEGALITH_COLUMNS, *licenses, *(["url_highres"] if "url_highres" in have else [])]
    return read_table(unit, "megalith", mapping, None, columns=columns, prepare=_megalith_prepare)


MEGALITH = SourceAdapter("megalith", "Megalith-10m metadata Parquet (url, url_highres, url_source) with a license "
                         "column; the high-resolution URL when present", _plan_megalith, _read_megalith)
PD12M = SourceAdapter("pd12m", "PD12M metadata Parquet (id, url, caption, width, height, mime_type, hash, license, "
                      "source); MD5 checked on fetch", _plan_pd12m, _read_pd12m)
TABLE = SourceAdapter("table", "any Parquet / JSON lines / CSV image-text dump, with --map FIELD=COLUMN,...",
                      _plan_table, _read_table, _check_table)
