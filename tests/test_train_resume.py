"""Kill a real training process with SIGKILL mid-run, resume it, and get the same bits."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from opencanvas.encode.synthetic import write_random_latents
from opencanvas.train import loop
from opencanvas.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from tests.factories import kill_when

ARGS = dict(images=96, batch=8, checkpoint_every=16, keep=2)


def cli_args(ws_root, run: str) -> list[str]:
    return [sys.executable, "-m", "opencanvas", "train", "--latents", "lat", "--preset", "tiny", "--run", run,
            "--images", str(ARGS["images"]), "--batch", str(ARGS["batch"]),
            "--checkpoint-every", str(ARGS["checkpoint_every"]), "--keep", str(ARGS["keep"]), "-w", str(ws_root)]


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_identical(ws):
    write_random_latents(ws, "lat", 24, resolution=64, text_len=8, text_dim=32, shard_size=8)
    # Same thread count in the child as here: float reductions depend on it.
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "OPENCANVAS_PROGRESS": "0"}
    run_dir = ws.run_dir("killed")
    kill_when(cli_args(ws.root, "killed"), env,
              lambda: any(p.name == "ckpt-000000000032.safetensors" for p in list_checkpoints(run_dir)))
    at_kill = load_checkpoint(latest_checkpoint(run_dir)).state.images_seen
    assert at_kill < ARGS["images"], "the run finished before it could be killed"

    # Resume with the same settings (in this process), and run the same thing uninterrupted.
    resumed = loop.train(ws, "lat", "tiny", "killed", **ARGS)
    assert resumed["session_images"] == ARGS["images"] - at_kill
    full = loop.train(ws, "lat", "tiny", "full", **ARGS)
    assert resumed["weights_sha256"] == full["weights_sha256"]
    a = load_checkpoint(latest_checkpoint(run_dir))
    b = load_checkpoint(latest_checkpoint(ws.run_dir("full")))
    assert a.state.images_seen == b.state.images_seen == ARGS["images"]
    for name in b.model:
        assert torch.equal(a.model[name], b.model[name]), name
        assert torch.equal(a.ema[name], b.ema[name]), name
    for name, fields in b.optimizer["state"].items():
        for key, value in fields.items():
            assert torch.equal(a.optimizer["state"][name][key], value), (name, key)
    # The metrics log has each step once, however many steps the kill made it redo.
    rows = [json.loads(line)["images_seen"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(8, ARGS["images"] + 1, 8))
    assert len(list_checkpoints(run_dir)) == ARGS["keep"]
