"""Kill the fetch stage for real (SIGKILL, mid-run) and resume it with the same command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from opencanvas.fetch.testing import ServerState, image_server, noise_image, write_catalog_subset
from opencanvas.shards import index_paths, iter_shard, read_index
from opencanvas.storage import sha256_bytes
from opencanvas.workspace import Workspace
from tests.factories import catalog_row

N_KEYS, SHARD_SIZE = 30, 3


def test_sigkill_mid_run_then_resume_keeps_every_key_exactly_once(ws: Workspace) -> None:
    images = {f"i{i}.jpg": noise_image(100 + i, (320, 320)) for i in range(N_KEYS)}
    state = ServerState(images={k: (v, "image/jpeg") for k, v in images.items()}, delay=0.06)
    with image_server(state) as (url, _):
        rows = []
        for i in range(N_KEYS):
            row = catalog_row(f"{i:04d}", f"image {i}")
            row["download_url"] = f"{url}/img/i{i}.jpg"
            rows.append(row)
        write_catalog_subset(ws, "s", rows)
        cmd = [sys.executable, "-m", "opencanvas", "fetch", "-w", str(ws.root), "--subset", "s",
               "--shard-size", str(SHARD_SIZE), "--threads", "1", "--allow-private-addresses", "--domain-rps", "0"]
        env = {**os.environ, "OPENCANVAS_PROGRESS": "0"}
        out_dir = ws.images_dir("s")

        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(index_paths(out_dir)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]

        finished = index_paths(out_dir)
        assert 2 <= len(finished) < N_KEYS // SHARD_SIZE, "the kill must land mid-run"
        before = {p: p.stat().st_mtime_ns for f in finished for p in (f, f.with_suffix(".tar"))}
        hits_before = sum(state.hits.values())

        resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr[-2000:]

    # Finished shards were not redone: same files, untouched.
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # Only unfinished shards' images were requested again (robots.txt, tdmrep.json and ai.txt once more).
    redone = N_KEYS - SHARD_SIZE * len(finished)
    assert sum(state.hits.values()) - hits_before <= redone + 3
    # Key by key: every subset key exactly once in the indexes and in the tars, with the served bytes.
    keys = read_index(out_dir).column("key").to_pylist()
    assert sorted(keys) == sorted(r["key"] for r in rows) and len(keys) == len(set(keys)) == N_KEYS
    assert set(read_index(out_dir).column("status").to_pylist()) == {"ok"}
    stored = [img for tar in sorted(out_dir.glob("shard-*.tar")) for img in iter_shard(tar)]
    assert sorted(i.key for i in stored) == sorted(keys)
    for img in stored:
        assert img.data == images[f"i{int(img.key[-4:])}.jpg"]
        assert img.meta["sha256"] == sha256_bytes(img.data)
    assert not [p for p in Path(out_dir).iterdir() if p.name.endswith("tmp")]
