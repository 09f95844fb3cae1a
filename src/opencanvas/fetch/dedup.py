"""Exact (sha256) and near-duplicate (perceptual hash + colour layout) detection within a subset.

The rule, which makes the result independent of workers, engines and resumes:
walk the stored images in key order; an image is a duplicate when it matches
*any* earlier image (kept or itself a duplicate), and it names the first match.
A shard applies the rule to its own keys as it writes (so duplicates never
reach its tar); after all shards are finished, `reconcile_duplicates` applies
it across shards in key order. That pass can only turn `ok` into `skipped`
(and re-point a duplicate at its earliest match), never the reverse, since an
earlier image in the same shard is also earlier in the subset; so the
within-shard decisions stay valid and re-running the pass changes nothing.

Near-duplicate search uses multi-index hashing (Norouzi et al., CVPR 2012):
with a Hamming threshold d, split the 64 bits into d+1 bands; two hashes within
distance d agree exactly on at least one band (pigeonhole), so only hashes
sharing a band are compared.

pHash alone confuses two kinds of images seen in Open Clip Art: colour
variants (a red and a blue version of one drawing are different training
images, "a red ..." / "a blue ...": pHash sees luminance only) and small
objects on large white pages (little signal, near-random bits). The stored
hash therefore carries a coarse colour layout too (in the spirit of MPEG-7's
colour layout descriptor): `<16 hex pHash>-<54 hex: mean Y, Cb, Cr of each
cell of a 3x3 grid>`, and a near duplicate must also agree on every cell and
channel within LAYOUT_TOLERANCE.
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import duckdb
import imagehash
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from opencanvas.fetch.plan import duckdb_connection
from opencanvas.shards import INDEX_SCHEMA, index_paths, key_from_stem, tar_facts
from opencanvas.storage import atomic_path, atomic_write_parquet, parquet_metadata

HASH_BITS = 64
# Re-encodes and resizes land at 0-2 bits; at 4, distinct Open Clip Art warning signs and
# playing-card faces (same frame, different symbol) started to merge.
DEFAULT_DISTANCE = 2
LAYOUT_TOLERANCE = 16  # of 255, per grid cell and channel
LAYOUT_GRID = 3
HASH_SIDE = 64  # imagehash.phash looks at 32 x 32 pixels; a 64-px box-reduced copy holds all it needs


def hash_thumbnail(img: Image.Image) -> Image.Image:
    """A box-reduced copy (short side >= 64): phash and blank checks on it cost ~0.1 ms, not ~5 ms."""
    factor = max(1, min(img.size) // HASH_SIDE)
    return img.reduce(factor) if factor > 1 else img


def perceptual_hash(thumbnail: Image.Image) -> str:
    """'<pHash>-<layout>' of `hash_thumbnail(img)`: imagehash.phash (64 bits) and the mean
    (Y, Cb, Cr) of each cell of a 3x3 grid (27 bytes), both as hex."""
    cells = thumbnail.convert("YCbCr").resize((LAYOUT_GRID, LAYOUT_GRID), Image.Resampling.BOX)  # (3, 3, 3)
    return f"{imagehash.phash(thumbnail, hash_size=8)}-{cells.tobytes().hex()}"


def _split_hash(phash: str) -> tuple[int, bytes]:
    value, _, layout = phash.partition("-")
    return int(value, 16), bytes.fromhex(layout)


def _same_layout(a: bytes, b: bytes) -> bool:
    # A hash without a layout (older or foreign indexes) is compared on pHash alone.
    return len(a) != len(b) or all(abs(x - y) <= LAYOUT_TOLERANCE for x, y in zip(a, b, strict=True))


def same_image_hash(a: str, b: str, max_distance: int) -> bool:
    """Two perceptual hashes within `max_distance` pHash bits whose colour layouts agree."""
    if not a or not b:
        return False
    (va, la), (vb, lb) = _split_hash(a), _split_hash(b)
    return (va ^ vb).bit_count() <= max_distance and _same_layout(la, lb)


@dataclass(frozen=True)
class Match:
    key: str          # the earlier image this one duplicates
    distance: int     # Hamming distance of the perceptual hashes (0 for exact)
    exact: bool       # same stored bytes

    @property
    def reason(self) -> str:
        if self.exact:
            return f"duplicate-of: {self.key}"
        return f"near-duplicate-of: {self.key} (phash distance {self.distance})"


class DuplicateIndex:
    """Images seen so far; `add` returns the first earlier match, if any. Feed in key order."""

    def __init__(self, max_distance: int = DEFAULT_DISTANCE) -> None:
        # max_distance < 0 disables near-duplicates (exact sha256 only).
        self.max_distance = max_distance
        self._by_sha: dict[str, str] = {}
        self._hashes: list[tuple[int, bytes]] = []  # (pHash, colour layout) in the order added
        bands = max(1, max_distance + 1) if max_distance >= 0 else 0
        self._band_edges = [round(i * HASH_BITS / bands) for i in range(bands + 1)] if bands else []
        self._bands: list[defaultdict[int, list[tuple[int, str]]]] = [defaultdict(list) for _ in range(bands)]

    def _band_values(self, value: int) -> list[int]:
        edges = self._band_edges
        return [(value >> lo) & ((1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:], strict=False)]

    def find(self, sha256: str, phash: str) -> Match | None:
        if sha256 in self._by_sha:
            return Match(self._by_sha[sha256], 0, True)
        if not self._bands or not phash:
            return None
        value, layout = _split_hash(phash)
        best: tuple[int, int, str] | None = None  # (order, distance, key): the earliest match wins
        for band, part in zip(self._bands, self._band_values(value), strict=True):
            for order, other in band.get(part, ()):
                other_value, other_layout = self._hashes[order]
                distance = (value ^ other_value).bit_count()
                if (distance <= self.max_distance and (best is None or order < best[0])
                        and _same_layout(layout, other_layout)):
                    best = (order, distance, other)
        return Match(best[2], best[1], False) if best else None

    def add(self, key: str, sha256: str, phash: str) -> Match | None:
        """Record an image and return what it duplicates (it is recorded either way)."""
        match = self.find(sha256, phash)
        self._by_sha.setdefault(sha256, key)
        if self._bands and phash:
            value, layout = _split_hash(phash)
            order = len(self._hashes)
            self._hashes.append((value, layout))
            for band, part in zip(self._bands, self._band_values(value), strict=True):
                band[part].append((order, key))
        return match


def reconcile_duplicates(images_dir: Path, max_distance: int = DEFAULT_DISTANCE,
                         placeholder_copies: int = 0) -> int:
    """Apply the duplicate rule across all finished shards; returns how many `ok` rows became duplicates
    (or placeholders: the same bytes behind `placeholder_copies` keys or more, when > 0).

    The search runs in DuckDB over the shard indexes (`duplicate_matches`), spilling to disk,
    so memory does not grow with the subset. Each changed shard's tar is rewritten first, then
    its index (with the new tar's size and sha256). Killed in between, the index no longer
    matches its tar, and the next `fetch` fetches that one shard again.
    """
    paths = index_paths(images_dir)
    if not paths:
        return 0
    dropped_total = 0
    with duckdb_connection(Path(images_dir) / ".dedup.duckdb.tmp") as con:
        changes = duplicate_matches(con, paths, max_distance, placeholder_copies)
        shard: str | None = None
        reasons: dict[str, str] = {}
        dropped: set[str] = set()
        while batch := changes.fetchmany(10_000):
            for name, key, status, reason in batch:
                if name != shard:
                    dropped_total += _apply(Path(images_dir), shard, reasons, dropped)
                    shard, reasons, dropped = name, {}, set()
                reasons[key] = reason
                if status == "ok":
                    dropped.add(key)
        dropped_total += _apply(Path(images_dir), shard, reasons, dropped)
    return dropped_total


def _apply(images_dir: Path, shard: str | None, reasons: dict[str, str], dropped: set[str]) -> int:
    """Mark one shard's duplicates `skipped` (tar first, then index); returns how many left its tar."""
    if shard is None or not reasons:
        return 0
    tar_path, index_path = images_dir / f"{shard}.tar", images_dir / f"{shard}.parquet"
    if dropped:
        _drop_members(tar_path, dropped)
    rows = pq.read_table(index_path).to_pylist()
    for r in rows:
        if r["key"] in reasons:
            r.update(status="skipped", reason=reasons[r["key"]], bytes=0)
    metadata = {**parquet_metadata(index_path), **(tar_facts(tar_path) if tar_path.exists() else {})}
    atomic_write_parquet(index_path, pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), metadata=metadata)
    return len(dropped)


def _band_edges(max_distance: int) -> list[int]:
    bands = max(1, max_distance + 1)
    return [round(i * HASH_BITS / bands) for i in range(bands + 1)]


def duplicate_matches(con: duckdb.DuckDBPyConnection, index_files: list[Path], max_distance: int = DEFAULT_DISTANCE,
                      placeholder_copies: int = 0) -> duckdb.DuckDBPyConnection:
    """The rows whose duplicate reason must change, as (shard, key, status, new reason), by shard and key.

    The same rule as `DuplicateIndex` fed in key order: an exact match (same sha256) with the
    first key holding those bytes wins; otherwise the earliest earlier key whose pHash is within
    `max_distance` (found by a band join: multi-index hashing) and whose colour layout agrees.
    Only the first key of each sha256 needs the near search: the others have an exact match.
    With `placeholder_copies` > 0, bytes shared by that many keys or more mark every one of
    them, the first included, as a placeholder (`fetch.placeholders`).
    """
    con.execute("""
        CREATE OR REPLACE TEMP TABLE r AS
        SELECT regexp_extract(filename, '(shard-[0-9]+)[.]parquet$', 1) AS shard, key, status,
               coalesce(reason, '') AS reason, sha256, coalesce(phash, '') AS phash,
               first_value(key) OVER (PARTITION BY sha256 ORDER BY key) AS first_key,
               count(*) OVER (PARTITION BY sha256) AS copies
        FROM read_parquet($paths, filename = true) WHERE coalesce(sha256, '') <> ''""",
                {"paths": [str(p) for p in index_files]})
    near = "SELECT NULL::VARCHAR AS key, NULL::VARCHAR AS other, NULL::INTEGER AS distance WHERE false"
    if max_distance >= 0:
        _near_table(con, max_distance)
        near = "SELECT key, other, distance FROM near"
    return con.execute(f"""
        WITH m AS (
            SELECT r.shard, r.key, r.status, r.reason,
                   CASE WHEN {int(placeholder_copies)} > 0 AND r.copies >= {int(placeholder_copies)}
                        THEN 'placeholder: the same bytes as ' || (r.copies - 1) || ' other items (first: '
                             || r.first_key || ')'
                        WHEN r.key <> r.first_key THEN 'duplicate-of: ' || r.first_key
                        WHEN n.other IS NOT NULL
                        THEN 'near-duplicate-of: ' || n.other || ' (phash distance ' || n.distance || ')'
                   END AS new_reason
            FROM r LEFT JOIN ({near}) n USING (key))
        SELECT shard, key, status, new_reason FROM m
        WHERE new_reason IS NOT NULL AND new_reason <> reason ORDER BY shard, key""")


def _near_table(con: duckdb.DuckDBPyConnection, max_distance: int) -> None:
    """TEMP TABLE near(key, other, distance): the earliest near duplicate of each key without an exact one.

    Candidates are one per distinct hash string, its earliest key: any later key with the same
    hash matches the same keys at the same distance, only later. So N copies of one image cost
    one candidate, not N.
    """
    cells = LAYOUT_GRID * LAYOUT_GRID * 3
    layout = ", ".join(f"CASE WHEN length(layout) >= {2 * i + 2} THEN ('0x' || substr(layout, {2 * i + 1}, 2))"
                       f"::SMALLINT END AS c{i}" for i in range(cells))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE hashes AS
        SELECT phash, key, ('0x' || split_part(phash, '-', 1))::UBIGINT AS value, length(layout) AS layout_len,
               {layout}
        FROM (SELECT phash, min(key) AS key,
                     CASE WHEN contains(phash, '-') THEN split_part(phash, '-', 2) ELSE '' END AS layout
              FROM r WHERE phash <> '' GROUP BY phash)""")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE searched AS
        SELECT r.key, h.* EXCLUDE (key, phash) FROM r JOIN hashes h USING (phash) WHERE r.key = r.first_key""")
    edges = _band_edges(max_distance)

    def band(table: str, lo: int, hi: int) -> str:
        part = "value" if hi - lo == HASH_BITS else f"(value >> {lo}) & {(1 << (hi - lo)) - 1}::UBIGINT"
        return f"SELECT key, {part} AS part FROM {table}"

    # One band at a time: each join's hash table holds one band of the hashes, not all of them at
    # once, which keeps the join within DuckDB's memory limit at 10^7 rows (it spills the rest).
    con.execute("CREATE OR REPLACE TEMP TABLE pairs (key VARCHAR, other VARCHAR)")
    for lo, hi in zip(edges, edges[1:], strict=False):
        con.execute(f"""
            INSERT INTO pairs SELECT x.key, y.key FROM ({band("searched", lo, hi)}) x
            JOIN ({band("hashes", lo, hi)}) y ON x.part = y.part AND y.key < x.key""")
    # A layout without a grid (older or foreign indexes) is compared on pHash alone, as _same_layout does.
    same = " AND ".join(f"(a.c{i} IS NULL OR abs(a.c{i} - b.c{i}) <= {LAYOUT_TOLERANCE})" for i in range(cells))
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE near AS
        WITH close AS (SELECT DISTINCT p.key, p.other, bit_count(xor(a.value, b.value)) AS distance
                       FROM pairs p JOIN searched a ON a.key = p.key JOIN hashes b ON b.key = p.other
                       WHERE bit_count(xor(a.value, b.value)) <= {max_distance}
                         AND (a.layout_len <> b.layout_len OR ({same})))
        SELECT key, arg_min(other, other) AS other, arg_min(distance, other) AS distance
        FROM close GROUP BY key""")
    con.execute("DROP TABLE pairs")


def _drop_members(tar_path: Path, keys: set[str]) -> None:
    """Rewrite a tar without the members of `keys` (atomically)."""
    with atomic_path(tar_path) as tmp, open(tmp, "wb") as f, tarfile.open(tar_path, "r") as src, \
            tarfile.open(fileobj=f, mode="w") as dst:
        for member in src:
            if key_from_stem(member.name.rpartition(".")[0]) not in keys:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
