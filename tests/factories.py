"""Small synthetic workspaces for tests of downstream stages.

`make_image_subset` writes what the catalog, subset and fetch stages would
(catalog part, subset file, image shards with indexes), with images whose
content matches their title ("a red circle", "a blue square", ...), so tests
of captioning, CLIP and diffusion have a signal to learn.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw

from opencanvas.captions import CAPTION_SCHEMA
from opencanvas.catalog.ingest import write_done_record
from opencanvas.catalog.schema import CATALOG_SCHEMA, SUBSET_SCHEMA
from opencanvas.shards import INDEX_SCHEMA, ShardWriter, shard_name
from opencanvas.storage import atomic_write_parquet, sha256_bytes
from opencanvas.workspace import Workspace

COLORS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 60, 220), "yellow": (240, 210, 20)}
SHAPES = ("circle", "square", "triangle")


def draw_shape(color: str, shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    img = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(img)
    r = size * rng.uniform(0.25, 0.4)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    fill = COLORS[color]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def catalog_row(key_id: str, title: str, license_id: str = "cc0") -> dict:
    return {
        "key": f"synthetic:{key_id}", "source": "synthetic", "source_id": key_id,
        "title": title, "description": "", "tags": title.split()[1:], "category": "shapes",
        "creator": "Test Author", "creator_url": "https://example.org/author",
        "landing_url": f"https://example.org/{key_id}", "download_url": None, "local_path": None,
        "license_id": license_id, "license_version": "1.0",
        "license_url": "https://creativecommons.org/publicdomain/zero/1.0/",
        "license_origin": "item", "commercial_ok": True, "derivatives_ok": True,
        "share_alike": False, "attribution_required": license_id not in ("cc0", "pdm"),
        "width": None, "height": None, "extra": "{}",
    }


def make_image_subset(ws: Workspace, name: str = "shapes", n: int = 48, size: int = 64,
                      shard_size: int = 16, seed: int = 0) -> list[str]:
    """Write catalog + subset + fetched shards for `n` shape images; returns the keys."""
    rng = np.random.default_rng(seed)
    rows, keys = [], []
    for i in range(n):
        color = list(COLORS)[i % len(COLORS)]
        shape = SHAPES[(i // len(COLORS)) % len(SHAPES)]
        row = catalog_row(f"{i:05d}", f"a {color} {shape}")
        rows.append(row)
        keys.append(row["key"])
    atomic_write_parquet(ws.source_dir("synthetic") / "part-00000.parquet",
                         pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))
    write_done_record(ws, "synthetic", "test", "(written by a test)", ["part-00000.parquet"], read=n, ingested=n)
    subset = pa.Table.from_pylist([{"key": r["key"], "source": "synthetic", "license_id": "cc0"} for r in rows],
                                  schema=SUBSET_SCHEMA)
    atomic_write_parquet(ws.subset_path(name), subset,
                         metadata={"policy": "commercial", "catalog_hash": "test", "policy_text": "test"})
    now = datetime.now(UTC)
    for s in range(0, n, shard_size):
        tar = ws.images_dir(name) / f"{shard_name(s // shard_size)}.tar"
        writer = ShardWriter(tar)
        index = []
        for row in rows[s:s + shard_size]:
            color, shape = row["title"].split()[1:]
            img = draw_shape(color, shape, size, rng)
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            data = buf.getvalue()
            writer.add(row["key"], data, "png", {**row, "width": size, "height": size})
            index.append({"key": row["key"], "status": "ok", "reason": "", "sha256": sha256_bytes(data),
                          "phash": "0" * 16, "width": size, "height": size, "original_width": size,
                          "original_height": size, "bytes": len(data), "fetched_at": now})
        writer.close()
        atomic_write_parquet(tar.with_suffix(".parquet"), pa.Table.from_pylist(index, schema=INDEX_SCHEMA))
    return keys


def make_captions(ws: Workspace, subset: str = "shapes", captioner: str = "metadata") -> None:
    """One caption per ok image (its title), one part per image shard."""
    import pyarrow.parquet as pq

    from opencanvas.shards import index_paths

    now = datetime.now(UTC)
    catalog = {r["key"]: r for r in pq.read_table(ws.source_dir("synthetic") / "part-00000.parquet").to_pylist()}
    for idx in index_paths(ws.images_dir(subset)):
        rows = [{"key": k, "caption": catalog[k]["title"], "captioner": captioner, "model_id": "",
                 "model_revision": "", "prompt": "", "generation": json.dumps({}), "preprocessing": "",
                 "flagged": "", "created_at": now}
                for k in pq.read_table(idx, columns=["key"]).column("key").to_pylist()]
        atomic_write_parquet(ws.captions_dir(captioner) / f"part-{idx.stem.split('-')[1]}.parquet",
                             pa.Table.from_pylist(rows, schema=CAPTION_SCHEMA))


def kill_when(cmd: Sequence[str], env: dict[str, str], ready: Callable[[], bool], timeout: float = 240,
              poll: float = 0.02) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` holds (a real kill, no clean-up in the child)."""
    proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the process exited early: {proc.stderr.read().decode()[-2000:]}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"not ready within {timeout} s"
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def kill_train_and_resume(ws: Workspace, latents: str, flags: Sequence[str], args: dict, kill_at: int
                          ) -> tuple[dict, dict, int]:
    """SIGKILL `opencanvas train` (run "killed", `flags` after the common ones) once its checkpoint at
    `kill_at` images exists, resume it in this process with `args`, and train the same run uninterrupted
    ("full"). Returns (resumed summary, full summary, images seen at the kill)."""
    import os
    import sys

    import torch

    from opencanvas.train import loop
    from opencanvas.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

    cli = [sys.executable, "-m", "opencanvas", "train", "--latents", latents, "--preset", "tiny", "--run", "killed",
           "--images", str(args["images"]), "--batch", str(args["batch"]), "--checkpoint-every",
           str(args["checkpoint_every"]), "--keep", str(args["keep"]), *flags, "-w", str(ws.root)]
    # Same thread count in the child as here: float reductions depend on it.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "OPENCANVAS_PROGRESS": "0"}
    run_dir = ws.run_dir("killed")
    name = f"ckpt-{kill_at:012d}.safetensors"
    kill_when(cli, env, lambda: any(p.name == name for p in list_checkpoints(run_dir)))
    path = latest_checkpoint(run_dir)
    assert path is not None
    at_kill = load_checkpoint(path).state.images_seen
    assert at_kill < args["images"], "the run finished before it could be killed"
    resumed = loop.train(ws, latents, "tiny", "killed", **args)
    full = loop.train(ws, latents, "tiny", "full", **args)
    assert resumed["session_images"] == args["images"] - at_kill
    return resumed, full, at_kill
