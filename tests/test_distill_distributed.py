"""`torchrun --nproc_per_node 2 -m opencanvas distill` on CPU (gloo) gives the student of one process that
accumulates the same global batch in two micro-batches (the check `train` has in test_train_distributed.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from opencanvas.distill.settings import DistillSettings
from opencanvas.distill.stage import distill
from opencanvas.training.checkpoint import latest_checkpoint, load_checkpoint
from tests.test_distill import _teacher

SETTINGS = dict(teacher="teacher", base_steps=4, target_steps=2, images_per_round=16, batch=8)


@pytest.mark.slow
def test_torchrun_two_ranks_matches_one_process(tmp_path: Path) -> None:
    ws = _teacher(tmp_path / "ws")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCANVAS_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "opencanvas", "distill", "--run-name", "teacher", "--name", "ranks", "--base-steps", "4",
           "--target-steps", "2", "--images-per-round", "16", "--batch", "8", "--device", "cpu", "-w", str(ws.root)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    # One process, micro-batches of 4: micro-batch g = micro * world + rank draws the same records and noise.
    distill(ws, DistillSettings(student="single", micro_batch=4, **SETTINGS), device="cpu")
    teacher = load_checkpoint(latest_checkpoint(ws.run_dir("teacher")), parts=("ema",)).ema
    for phase in ("guided", "round-2"):
        a = load_checkpoint(latest_checkpoint(ws.run_dir("ranks") / "phases" / phase))
        b = load_checkpoint(latest_checkpoint(ws.run_dir("single") / "phases" / phase))
        assert a.state.images_seen == b.state.images_seen == 16
        worst = max(float((a.ema[k] - b.ema[k]).abs().max()) for k in b.ema)
        moved = max(float((b.ema[k] - teacher[k]).abs().max()) for k in teacher)
        assert worst < 1e-5, (phase, worst)  # only the order of float reductions differs ...
        assert moved > 100 * worst, (phase, moved, worst)  # ... while distilling moved the weights far more
    final = load_checkpoint(latest_checkpoint(ws.run_dir("ranks")), parts=())
    assert final.config["distilled"]["phase"] == "round-2"


def test_a_batch_that_ranks_cannot_split_is_refused() -> None:
    settings = DistillSettings(student="s", micro_batch=3, **SETTINGS)
    with pytest.raises(ValueError, match="--batch 8 must be a multiple of --micro-batch 3 x 2 ranks"):
        settings.check_world(2)
    assert DistillSettings(student="s", **SETTINGS).accumulation(2) == 1
    assert DistillSettings(student="s", micro_batch=2, **SETTINGS).accumulation(2) == 2
