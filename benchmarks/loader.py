"""Samples/s the training loader delivers at 256 px (latent 4x32x32) with 77x1024 text embeddings.

Writes a synthetic latent set in the real store format (opencanvas.encode.synthetic),
then times LatentLoader over several epochs (warm page cache, as in training after
the first epoch), with 0 and 2 workers, and compares the .npy memory-map store with
two alternatives holding the same bytes per record: an Arrow IPC file read through a
memory map (`Table.take`), and Parquet (uncompressed, 64-row row groups) where a
shuffled batch reads every row group it touches.

    .venv/bin/python benchmarks/loader.py --records 5000 --epochs 3 --workers 2

Goal (issue 6): >= 5,000 samples/s with 2 workers, > 10x what one H100 trains on.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from opencanvas.encode import LatentLoader, open_latents
from opencanvas.encode.loader import epoch_batches
from opencanvas.encode.store import LatentSet
from opencanvas.encode.synthetic import write_random_latents
from opencanvas.workspace import Workspace


class Meter:
    """Wall-clock samples/s and samples per CPU-second of this process (all threads).

    The sandbox's 2 cores are shared with other jobs, so wall time includes time
    spent waiting for a core; CPU time is what the loader itself costs.
    """

    def __enter__(self) -> Meter:
        self.samples, self.t0, self.r0 = 0, time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc: object) -> None:
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        self.wall = time.perf_counter() - self.t0
        self.cpu = (r1.ru_utime - self.r0.ru_utime) + (r1.ru_stime - self.r0.ru_stime)

    def result(self) -> dict[str, int]:
        return {"samples_per_s": round(self.samples / self.wall),
                "samples_per_cpu_s": round(self.samples / max(self.cpu, 1e-9))}


def time_loader(latents: LatentSet, batch_size: int, epochs: int, workers: int) -> dict[str, int]:
    """Over `epochs` epochs after one warm-up epoch (page cache hot)."""
    loader = LatentLoader(latents, batch_size=batch_size, seed=0, workers=workers)
    for _ in loader:  # warm-up: first touch of every page
        pass
    with Meter() as meter:
        for _ in range(epochs):
            for batch in loader:
                meter.samples += batch["mean"].shape[0]
    return meter.result()


def record_bytes(latents: LatentSet) -> dict[str, np.ndarray]:
    """Every record's arrays as numpy (N, ...) with the first caption (for the alternative formats)."""
    n = len(latents)
    batch = latents.gather(np.arange(n), np.zeros(n, np.int64))
    return {k: batch[k] for k in ("mean", "std", "text", "mask")}


def write_alternatives(latents: LatentSet, out: Path) -> tuple[Path, Path]:
    arrays = record_bytes(latents)
    n = len(latents)
    table = pa.table({
        "key": latents.keys(),
        **{k: pa.array([a.tobytes() for a in v], pa.binary(v[0].nbytes)) for k, v in arrays.items()},
    })
    arrow_path, parquet_path = out / "latents.arrow", out / "latents.parquet"
    with pa.OSFile(str(arrow_path), "wb") as f, ipc.new_file(f, table.schema) as writer:
        writer.write_table(table.combine_chunks())  # one record batch: take() on many chunks concatenates them
    pq.write_table(table, parquet_path, compression="none", row_group_size=64)
    del table, arrays
    assert n
    return arrow_path, parquet_path


def decode_columns(table: pa.Table, shapes: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
    out = {}
    for name, (shape, dtype) in shapes.items():
        col = table.column(name).combine_chunks()
        buf = np.frombuffer(col.buffers()[1], dtype=np.uint8)[: len(col) * col.type.byte_width]
        out[name] = buf.view(dtype).reshape(len(col), *shape).copy()
    return out


def time_epochs(read_batch, latents: LatentSet, batch_size: int, epochs: int) -> dict[str, int]:
    """`read_batch(indices)` over the loader's epochs (epoch 0 warms up, then `epochs` timed)."""
    for idx in epoch_batches(latents, batch_size, 0, 0):
        read_batch(idx)
    with Meter() as meter:
        for epoch in range(1, epochs + 1):
            for idx in epoch_batches(latents, batch_size, 0, epoch):
                read_batch(idx)
                meter.samples += len(idx)
    return meter.result()


def arrow_reader(path: Path, shapes: dict):
    table = ipc.open_file(pa.memory_map(str(path), "r")).read_all()  # zero-copy over the mapping
    return lambda idx: decode_columns(table.take(pa.array(idx)), shapes)


def parquet_reader(path: Path, shapes: dict):
    pf = pq.ParquetFile(path)
    rows_per_group = pf.metadata.row_group(0).num_rows

    def read(idx: np.ndarray) -> dict[str, np.ndarray]:
        groups = np.unique(idx // rows_per_group)  # every row group the shuffled batch touches
        table = pf.read_row_groups(groups.tolist())
        local = np.searchsorted(groups, idx // rows_per_group) * rows_per_group + idx % rows_per_group
        return decode_columns(table.take(pa.array(local)), shapes)

    return read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000, help="Synthetic records to write.")
    parser.add_argument("--epochs", type=int, default=3, help="Timed epochs (after one warm-up epoch).")
    parser.add_argument("--batch-size", type=int, default=128, help="Samples per batch.")
    parser.add_argument("--workers", type=int, default=2, help="Loader threads for the main figure.")
    parser.add_argument("--compare", action="store_true", help="Also time Arrow IPC and Parquet stores.")
    parser.add_argument("--compare-epochs", type=int, default=1, help="Timed epochs for the other formats.")
    parser.add_argument("--dir", type=Path, default=None, help="Where to write the stores (default: a temp dir).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        t0 = time.perf_counter()
        write_random_latents(ws, "bench", args.records, resolution=256, text_len=77, text_dim=1024)
        write_s = time.perf_counter() - t0
        latents = open_latents(ws, "bench")
        gib = sum(p.stat().st_size for p in ws.latents_dir("bench").rglob("*.npy")) / 2**30
        results: dict[str, object] = {
            "records": len(latents), "store_gib": round(gib, 2), "write_s": round(write_s, 1),
            "batch_size": args.batch_size, "epochs": args.epochs,
        }
        results["npy_memmap_0_workers"] = time_loader(latents, args.batch_size, args.epochs, 0)
        results[f"npy_memmap_{args.workers}_workers"] = time_loader(latents, args.batch_size, args.epochs,
                                                                      args.workers)
        if args.compare:
            arrow_path, parquet_path = write_alternatives(latents, Path(tmp))
            shapes = {"mean": ((4, 32, 32), np.float16), "std": ((4, 32, 32), np.float16),
                      "text": ((77, 1024), np.float16), "mask": ((77,), np.bool_)}
            results["arrow_ipc_mmap_0_workers"] = time_epochs(
                arrow_reader(arrow_path, shapes), latents, args.batch_size, args.compare_epochs)
            results["parquet_rowgroups_0_workers"] = time_epochs(
                parquet_reader(parquet_path, shapes), latents, args.batch_size, args.compare_epochs)
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
