"""Fetch throughput (images/s) from a local HTTP server and from local files, 1 and 2 workers.

    .venv/bin/python benchmarks/fetch_local.py [--images 1000] [--out benchmarks/results/fetch.md]

512-px JPEGs (photo-like, ~25 KB), max_side 1024 so nothing is resized: this measures the
fetcher itself (HTTP, decode, checks, perceptual hash, tar + index), not the network.
The server runs in its own process (`python -m opencanvas.fetch.testing DIR`), as a
real server would, so it does not share the fetcher's GIL; on a 2-core machine it still
shares the CPU. Politeness limits are opened up (the server is ours).
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from opencanvas.fetch.http import HttpConfig
from opencanvas.fetch.stage import FetchOptions, fetch
from opencanvas.fetch.testing import noise_image, write_catalog_subset
from opencanvas.workspace import Workspace


def catalog(ws: Workspace, name: str, n: int, url: str | None, folder: Path) -> None:
    rows = []
    for i in range(n):
        row = {"key": f"bench:{i:06d}", "source": "bench", "source_id": str(i), "title": f"image {i}",
               "license_id": "cc0", "tags": []}
        if url:
            row["download_url"] = f"{url}/img/{i:06d}.jpg"
        else:
            row["local_path"] = str(folder / f"{i:06d}.jpg")
        rows.append(row)
    write_catalog_subset(ws, name, rows, source="bench")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker pool, not the server)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(root: Path, name: str, workers: int, options: FetchOptions, shard_size: int) -> tuple[float, float, dict]:
    """(images/s, fetcher CPU cores busy on average, status counts)."""
    ws = Workspace.open(root)
    start, cpu = time.perf_counter(), cpu_seconds()
    stats = fetch(ws, name, shard_size=shard_size, workers=workers, options=options, progress=False)
    seconds = time.perf_counter() - start
    assert stats.counts.get("ok", 0) == stats.images, stats.counts  # every image must be fetched
    return stats.images / seconds, (cpu_seconds() - cpu) / seconds, stats.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="512-px JPEGs per scenario")
    parser.add_argument("--shard-size", type=int, default=125, help="images per shard")
    parser.add_argument("--threads", type=int, default=8, help="fetch threads per worker")
    parser.add_argument("--out", type=Path, default=None, help="write a Markdown table here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fetch-bench-"))
    folder = tmp / "images"
    folder.mkdir()
    for i in range(args.images):
        (folder / f"{i:06d}.jpg").write_bytes(noise_image(i, (512, 512)))
    server = subprocess.Popen([sys.executable, "-m", "opencanvas.fetch.testing", str(folder)],
                              stdout=subprocess.PIPE, text=True)
    url = server.stdout.readline().strip()  # type: ignore[union-attr]
    http = HttpConfig(allow_private_addresses=True, domain_rps=0, domain_concurrency=64, timeout=30)
    options = FetchOptions(threads=args.threads, http=http)
    results = []
    try:
        for source in ("http", "local"):
            for workers in (1, 2):
                root = tmp / f"ws-{source}-{workers}"
                ws = Workspace.open(root)
                catalog(ws, "bench", args.images, url if source == "http" else None, folder)
                rate, cores, counts = run(root, "bench", workers, options, args.shard_size)
                results.append((source, workers, rate, cores))
                print(f"{source:5s} workers={workers}: {rate:7.1f} images/s  {cores:.2f} cores  {counts}", flush=True)
                shutil.rmtree(root)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    base = {s: r for s, w, r, _ in results if w == 1}
    lines = [
        "| source | workers | images/s | vs 1 worker | fetcher CPU cores busy | images per CPU-second |",
        "|---|---|---|---|---|---|",
        *[f"| {s} | {w} | {r:.1f} | {r / base[s]:.2f}x | {c:.2f} | {r / c:.0f} |" for s, w, r, c in results],
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        header = (f"Command: `.venv/bin/python benchmarks/fetch_local.py --images {args.images} "
                  f"--shard-size {args.shard_size} --threads {args.threads}`\n"
                  f"Machine: 2-core CPU sandbox ({platform.processor() or platform.machine()}), {when}\n")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(header + "\n" + table + "\n")


if __name__ == "__main__":
    main()
