"""GPIC-format ingest + shard copy (images/s) and PD12M metadata ingest (rows/s).

    .venv/bin/python benchmarks/ingest_datasets.py [--images 2000] [--rows 1000000] [--workers 1]

GPIC: tars of {key}.json + {key}.jpg with 512-px photo-like JPEGs (1,000 pairs per tar), ingested
(`catalog ingest gpic`), cut into a subset, then fetched into shards with max_side 0 (no
re-encoding): the bytes are copied out of the tars by their recorded range, decoded and checked
(size, perceptual hash, exact duplicates, placeholders; 64 distinct pictures, so near-duplicate
matching is off: its pHash is still computed). The rate is images over ingest + fetch wall time.
PD12M: Parquet with PD12M's nine columns (two licenses, 1% of rows with a non-open license URL),
100k-row row groups, `catalog ingest pd12m`. Peak RSS is printed for both (flat-memory check).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.subset import make_subset
from opencanvas.fetch.stage import FetchOptions, fetch
from opencanvas.fetch.testing import noise_image
from opencanvas.workspace import Workspace

PER_TAR = 1000


def write_gpic(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    variants = [noise_image(seed, (512, 512)) for seed in range(64)]  # distinct bytes per key below
    for t in range(0, n, PER_TAR):
        with tarfile.open(folder / f"gpic-{t // PER_TAR:05d}.tar", "w") as tar:
            for i in range(t, min(n, t + PER_TAR)):
                key = f"{i:08d}"
                meta = json.dumps({"key": key, "license": "CC BY 2.0",
                                   "license_url": "https://creativecommons.org/licenses/by/2.0/",
                                   "attribution": f"Photo by Person {i} (https://www.flickr.com/people/p{i}/)",
                                   "img_width": 512, "img_height": 512, "split": "nano", "caption_type": "short",
                                   "caption": f"a photo number {i}"}).encode()
                # A JPEG comment makes every image's bytes distinct, so exact-duplicate checks keep them all.
                image = variants[i % len(variants)]
                image = image[:2] + b"\xff\xfe\x00\x0a" + i.to_bytes(8, "big") + image[2:]
                for name, data in ((f"{key}.json", meta), (f"{key}.jpg", image)):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))


def write_pd12m(path: Path, rows: int) -> None:
    writer = None
    for lo in range(0, rows, 100_000):
        n = min(100_000, rows - lo)
        ids = np.arange(lo, lo + n)
        lic = np.where(ids % 2 == 0, "https://creativecommons.org/publicdomain/zero/1.0/",
                       "https://creativecommons.org/publicdomain/mark/1.0/").astype(object)
        lic[ids % 100 == 7] = "https://example.org/all-rights-reserved"
        table = pa.table({
            "id": pa.array([f"{i:09d}" for i in ids]),
            "url": pa.array([f"https://cdn.example.org/{i}.jpg" for i in ids]),
            "caption": pa.array([f"a public domain image number {i} of something" for i in ids]),
            "width": pa.array(np.full(n, 1024)), "height": pa.array(np.full(n, 768)),
            "mime_type": pa.array(["image/jpeg"] * n), "hash": pa.array([f"{i:032x}" for i in ids]),
            "license": pa.array(list(lic)), "source": pa.array(["wikimedia"] * n)})
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    if writer:
        writer.close()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.images:
            write_gpic(root / "gpic", args.images)
            ws = Workspace.open(root / "ws")
            start = time.perf_counter()
            stats = ingest(ws, "gpic", [root / "gpic"], workers=args.workers)
            ingest_s = time.perf_counter() - start
            make_subset(ws, "commercial", "gpic")
            start = time.perf_counter()
            fetched = fetch(ws, "gpic", shard_size=1000, workers=args.workers, progress=False,
                            options=FetchOptions(max_side=0, min_side=16, threads=2, near_dup_distance=-1))
            fetch_s = time.perf_counter() - start
            assert fetched.counts.get("ok") == args.images, fetched.counts
            print(f"GPIC {args.images} images: ingest {stats.ingested} in {ingest_s:.2f}s "
                  f"({args.images / ingest_s:,.0f} img/s), fetch {fetch_s:.2f}s "
                  f"({args.images / fetch_s:,.0f} img/s); ingest + shard copy "
                  f"{args.images / (ingest_s + fetch_s):,.0f} img/s; peak RSS {peak_rss_mb():.0f} MB")
        if args.rows:
            write_pd12m(root / "pd12m.parquet", args.rows)
            ws = Workspace.open(root / "ws-pd")
            start = time.perf_counter()
            stats = ingest(ws, "pd12m", [root / "pd12m.parquet"])
            seconds = time.perf_counter() - start
            print(f"PD12M {args.rows:,} rows: ingested {stats.ingested:,}, quarantined {stats.quarantined:,} in "
                  f"{seconds:.2f}s = {args.rows / seconds:,.0f} rows/s; peak RSS {peak_rss_mb():.0f} MB")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
