"""Checkpoints by default, damaged checkpoints, deleted checkpoints, and the one loop's schedule."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch

from opencanvas.encode.synthetic import write_random_latents
from opencanvas.train import loop
from opencanvas.training.checkpoint import (
    DamagedCheckpointWarning,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
)
from opencanvas.training.loop import LoopSettings, RestartWarning
from opencanvas.workspace import Workspace
from tests.factories import kill_when


def latents(ws: Workspace, n: int = 16) -> None:
    write_random_latents(ws, "lat", n, resolution=64, text_len=8, text_dim=32, shard_size=8)


def rows(ws: Workspace, run: str, name: str = "metrics.jsonl") -> list[int]:
    return [json.loads(line)["images_seen"] for line in (ws.run_dir(run) / name).read_text().splitlines()]


def test_default_schedule_suits_the_run_length():
    settings = LoopSettings(name="x", images=960, batch=16, lr=1.0)
    assert settings.checkpoint_every is None and settings.checkpoint_interval == 48  # a twentieth, whole steps
    assert LoopSettings(name="x", images=32, batch=16, lr=1.0).checkpoint_interval == 16  # at least one step
    assert LoopSettings(name="x", images=960, batch=16, lr=1.0, checkpoint_every=0).checkpoint_interval == 0
    assert settings.keep == 3 and settings.checkpoint_minutes == 30


def test_train_checkpoints_by_default_and_keeps_the_last_three(ws):
    latents(ws)
    loop.train(ws, "lat", "tiny", "r", images=64, batch=8)  # every step (a twentieth is less), keep 3
    names = [p.name for p in list_checkpoints(ws.run_dir("r"))]
    assert names == [f"ckpt-{n:012d}.safetensors" for n in (48, 56, 64)]


def test_wall_time_checkpoints_come_first_when_due(ws):
    latents(ws)
    loop.train(ws, "lat", "tiny", "t", images=32, batch=8, checkpoint_every=0, checkpoint_minutes=1e-9, keep=0)
    assert [int(p.name[5:17]) for p in list_checkpoints(ws.run_dir("t"))] == [8, 16, 24, 32]


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_newest_checkpoint_is_named_and_skipped(ws, damage):
    latents(ws)
    loop.train(ws, "lat", "tiny", "d", images=32, batch=8, checkpoint_every=8, keep=0)
    run_dir = ws.run_dir("d")
    newest = latest_checkpoint(run_dir)
    data = newest.read_bytes()
    newest.write_bytes(b"not a checkpoint" * 8 if damage == "garbage" else data[: len(data) // 2])

    # A reader (card, sample) names the file and uses the previous checkpoint.
    with pytest.warns(DamagedCheckpointWarning, match=f"{newest.name} is damaged"):
        assert latest_checkpoint(run_dir).name == "ckpt-000000000024.safetensors"
    with pytest.warns(DamagedCheckpointWarning, match=newest.name):
        from opencanvas.train.pipeline import find_checkpoint

        assert find_checkpoint(run_dir).name == "ckpt-000000000024.safetensors"
    with pytest.warns(DamagedCheckpointWarning, match=newest.name):
        from opencanvas.cards.model_facts import run_facts
        from opencanvas.cards.records import Sources

        facts = run_facts(ws, "d", Sources())  # what `opencanvas card` reads of the run
    assert facts["checkpoint"].endswith("ckpt-000000000024.safetensors") and facts["unet_parameters"] > 0
    with pytest.raises(ValueError, match="not a readable OpenCanvas training checkpoint"):
        load_checkpoint(newest)

    # train resumes from the intact one, renames the damaged file aside, and ends where a clean run ends.
    with pytest.warns(DamagedCheckpointWarning, match="renamed to"):
        summary = loop.train(ws, "lat", "tiny", "d", images=32, batch=8, checkpoint_every=8, keep=0)
    assert summary["session_images"] == 8 and (run_dir / "checkpoints" / (newest.name + ".damaged")).exists()
    clean = loop.train(ws, "lat", "tiny", "clean", images=32, batch=8, checkpoint_every=8, keep=0)
    assert summary["weights_sha256"] == clean["weights_sha256"]
    assert rows(ws, "d") == [8, 16, 24, 32]


def test_deleting_every_checkpoint_restarts_loudly_and_keeps_the_old_log(ws):
    latents(ws)
    loop.train(ws, "lat", "tiny", "gone", images=24, batch=8)
    run_dir = ws.run_dir("gone")
    old_log = (run_dir / "metrics.jsonl").read_text()
    for path in list_checkpoints(run_dir):
        path.unlink()
    with pytest.warns(RestartWarning, match="no checkpoint left.*starts again from image 0.*metrics-before-"):
        summary = loop.train(ws, "lat", "tiny", "gone", images=24, batch=8)
    assert summary["session_images"] == 24
    kept = list(run_dir.glob("metrics-before-*.jsonl"))
    assert len(kept) == 1 and kept[0].read_text() == old_log
    assert list(run_dir.glob("tb-before-*")) and rows(ws, "gone") == [8, 16, 24]


@pytest.mark.slow
def test_sigkill_with_default_settings_resumes_instead_of_restarting(ws):
    """The issue's repro: no --checkpoint-every given, killed mid-run, the same command again resumes."""
    latents(ws, n=24)
    args = [sys.executable, "-m", "opencanvas", "train", "--latents", "lat", "--preset", "tiny", "--run", "r2",
            "--images", "960", "--batch", "16", "-w", str(ws.root)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "OPENCANVAS_PROGRESS": "0"}
    run_dir = ws.run_dir("r2")
    kill_when(args, env, lambda: latest_checkpoint(run_dir) is not None, poll=0.05)
    at_kill = load_checkpoint(latest_checkpoint(run_dir)).state.images_seen
    assert 0 < at_kill < 960
    resumed = loop.train(ws, "lat", "tiny", "r2", images=960, batch=16)
    assert resumed["session_images"] == 960 - at_kill and resumed["images_seen"] == 960
    assert rows(ws, "r2") == list(range(16, 961, 16))


def test_minutes_become_recorded_images_and_a_rerun_is_exact(ws):
    latents(ws)
    first = loop.train(ws, "lat", "tiny", "timed", minutes=0.01, batch=8)
    config = json.loads((ws.run_dir("timed") / "config.json").read_text())
    assert config["minutes"] == 0.01 and config["measured_images_per_s"] > 0 and config["images"] % 8 == 0
    assert first["images_seen"] == config["images"] >= 24  # the warm-up alone is 3 steps
    assert load_checkpoint(latest_checkpoint(ws.run_dir("timed"))).config == config
    again = loop.train(ws, "lat", "tiny", "timed", minutes=0.01, batch=8)  # the recorded rate: nothing to do
    assert again["session_images"] == 0 and again["weights_sha256"] == first["weights_sha256"]
    counted = loop.train(ws, "lat", "tiny", "counted", images=config["images"], batch=8)
    assert counted["weights_sha256"] == first["weights_sha256"]
    assert rows(ws, "timed") == list(range(8, config["images"] + 1, 8))
    with pytest.raises(ValueError, match="--images or --minutes, not both"):
        loop.train(ws, "lat", "tiny", "both", images=8, minutes=1.0)
    with pytest.raises(ValueError, match="--minutes needs --lr-schedule constant"):
        loop.train(ws, "lat", "tiny", "cos", minutes=1.0, lr_schedule="cosine")
