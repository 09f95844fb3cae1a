"""Image shards: WebDataset tars plus a Parquet index per shard (the done-marker).

    images/<subset>/shard-00000.tar      <stem>.png|jpg + <stem>.json (catalog row + fetch facts)
    images/<subset>/shard-00000.parquet  one row per attempted key (INDEX_SCHEMA)

Catalog keys hold ':' '/' and '.', which WebDataset reads as separators, so a
member's stem is the percent-encoded key; the JSON beside it holds the key itself.
A shard exists for readers only once its index is there: the index is written
last and atomically. The index's metadata records the tar's size and sha256
(`tar_bytes`, `tar_sha256`), so a truncated or altered tar is found (`tar_mismatch`)
and fetched again rather than read.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq

from opencanvas.storage import parquet_metadata, sha256_file

INDEX_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("status", pa.string()),           # ok | failed | skipped
    ("reason", pa.string()),           # "" for ok; e.g. "too-small: 120x80 < 256", "duplicate-of: <key>"
    ("sha256", pa.string()),           # of the stored image bytes
    ("phash", pa.string()),            # "<16 hex pHash>-<54 hex 3x3 YCbCr layout>" (opencanvas.fetch.dedup)
    ("width", pa.int64()),             # stored size
    ("height", pa.int64()),
    ("original_width", pa.int64()),
    ("original_height", pa.int64()),
    ("bytes", pa.int64()),             # stored image bytes
    ("fetched_at", pa.timestamp("us", tz="UTC")),
])

STATUSES = ("ok", "failed", "skipped")


def member_stem(key: str) -> str:
    """A tar-member-safe stem for a catalog key (reversible)."""
    return quote(key, safe="").replace(".", "%2E")


def key_from_stem(stem: str) -> str:
    return unquote(stem)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


class ShardWriter:
    """Writes one WebDataset tar; the caller writes the index after `close()`."""

    def __init__(self, tar_path: Path) -> None:
        self.tar_path = Path(tar_path)
        self.tar_path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.tar_path.with_name(f".{self.tar_path.name}.tmp")
        self._tar = tarfile.open(self._tmp, "w")

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = int(time.time())
        self._tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, image: bytes, ext: str, meta: dict[str, Any]) -> None:
        stem = member_stem(key)
        self._add(f"{stem}.{ext}", image)
        self._add(f"{stem}.json", json.dumps({**meta, "key": key}, default=str).encode())

    def close(self) -> None:
        """Finish the tar and move it into place (atomically)."""
        import os

        self._tar.close()
        os.replace(self._tmp, self.tar_path)

    def abort(self) -> None:
        self._tar.close()
        self._tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ShardImage:
    key: str
    data: bytes   # encoded image bytes as stored
    ext: str      # "png" | "jpg"
    meta: dict[str, Any]


class ShardError(ValueError):
    """A shard's tar cannot be read; the message names it and says how to repair it."""


def _damaged(tar_path: Path, problem: str) -> ShardError:
    subset = Path(tar_path).parent.name
    return ShardError(f"{tar_path} is damaged ({problem}): re-run `opencanvas fetch --subset {subset}`, "
                      "which fetches a shard again when its tar no longer matches its index")


def iter_shard(tar_path: Path) -> Iterator[ShardImage]:
    """The images of one shard, in stored order; raises ShardError naming a truncated or damaged tar."""
    try:
        yield from _read_shard(tar_path)
    except (tarfile.TarError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _damaged(tar_path, f"{type(e).__name__}: {e}") from None
    except FileNotFoundError:
        raise _damaged(tar_path, "the tar is missing") from None


def _read_shard(tar_path: Path) -> Iterator[ShardImage]:
    pending: dict[str, dict[str, Any]] = {}
    with tarfile.open(tar_path, "r") as tar:
        for member in tar:
            if not member.isfile():
                continue
            stem, _, ext = member.name.rpartition(".")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            entry = pending.setdefault(stem, {})
            if ext == "json":
                entry["meta"] = json.loads(data)
            else:
                entry["data"], entry["ext"] = data, ext
            if "meta" in entry and "data" in entry:
                del pending[stem]
                yield ShardImage(key_from_stem(stem), entry["data"], entry["ext"], entry["meta"])


def index_paths(images_dir: Path) -> list[Path]:
    """Indexes of finished shards, in shard order."""
    return sorted(Path(images_dir).glob("shard-*.parquet"))


def read_index(images_dir: Path) -> pa.Table:
    """All finished shards' index rows, with a `shard` column (e.g. 'shard-00003')."""
    tables = []
    for p in index_paths(images_dir):
        t = pq.read_table(p).select(INDEX_SCHEMA.names).cast(INDEX_SCHEMA)
        tables.append(t.append_column("shard", pa.array([p.stem] * len(t), pa.string())))
    if not tables:
        return INDEX_SCHEMA.append(pa.field("shard", pa.string())).empty_table()
    return pa.concat_tables(tables)


def tar_facts(tar_path: Path) -> dict[str, str]:
    """The tar's size and sha256, as recorded in its index's metadata."""
    return {"tar_bytes": str(Path(tar_path).stat().st_size), "tar_sha256": sha256_file(tar_path)}


def tar_mismatch(index_path: Path, sha256: bool = True) -> str | None:
    """Why a finished shard's tar no longer matches its index (missing, size, sha256), or None.

    `sha256=False` checks the size only (truncation), without reading the tar: a quick check for
    catalogs of many terabytes. Indexes written before the tar's facts were recorded are taken as they are.
    """
    meta = parquet_metadata(index_path)
    tar = Path(index_path).with_suffix(".tar")
    if "tar_sha256" not in meta:
        return None
    if not tar.exists():
        return f"{tar.name} is missing"
    size = tar.stat().st_size
    if str(size) != meta.get("tar_bytes"):
        return f"{tar.name} has {size} bytes, its index recorded {meta.get('tar_bytes')}"
    if sha256 and sha256_file(tar) != meta["tar_sha256"]:
        return f"{tar.name}'s sha256 differs from the one its index recorded"
    return None


def finished_shards(images_dir: Path) -> list[Path]:
    """Tars whose index (done-marker) exists."""
    return [p.with_suffix(".tar") for p in index_paths(images_dir)]
