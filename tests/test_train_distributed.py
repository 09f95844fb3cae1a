"""`torchrun --nproc_per_node 2 -m opencanvas train` on CPU (gloo): DDP replicas agree, and DDP and
FSDP2 (fully_shard) both match one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from opencanvas.encode.synthetic import write_random_latents
from opencanvas.train import loop
from opencanvas.train.checkpoint import latest_checkpoint, load_checkpoint
from opencanvas.train.presets import build_unet

IMAGES, BATCH = 32, 8


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_ranks_matches_one_process(ws, parallel):
    write_random_latents(ws, "lat", 24, resolution=64, text_len=8, text_dim=32, shard_size=8)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCANVAS_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "opencanvas", "train", "--latents", "lat", "--preset", "tiny", "--run-name", parallel,
           "--images", str(IMAGES), "--batch", str(BATCH), "--device", "cpu", "--parallel", parallel,
           "--holdout", "0", "-w", str(ws.root)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((ws.run_dir(parallel) / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["images_seen"] == IMAGES
    ranks = summary["rank_weights_sha256"]
    if parallel == "ddp":
        assert len(ranks) == 2 and ranks[0] == ranks[1] == summary["weights_sha256"]  # replicas identical
    else:
        assert ranks == [None, None]  # sharded: no rank holds a replica; the checkpoint is gathered
    config = json.loads((ws.run_dir(parallel) / "config.json").read_text())
    assert config["micro_batch"] == BATCH // 2

    # One process, same global batch as 2 micro-batches of 4: the same images and noise per step.
    # (--holdout 0: every record trains, so an epoch has an even number of micro-batches for both.)
    loop.train(ws, "lat", "tiny", "single", images=IMAGES, batch=BATCH, micro_batch=BATCH // 2, holdout=0.0)
    a = load_checkpoint(latest_checkpoint(ws.run_dir(parallel))).model
    b = load_checkpoint(latest_checkpoint(ws.run_dir("single"))).model
    init = build_unet(config["unet"], config["seed"]).state_dict()
    worst = max(float((a[k] - b[k]).abs().max()) for k in b)
    moved = max(float((b[k] - init[k]).abs().max()) for k in b)
    assert worst < 1e-5, worst  # only the order of float reductions differs ...
    assert moved > 100 * worst, (moved, worst)  # ... while training moved the weights far more
