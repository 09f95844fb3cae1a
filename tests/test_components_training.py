"""The components on the one training loop: budgets in images, minutes made exact, default checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from opencanvas.components.autoencoder import train_autoencoder
from opencanvas.components.training import Budget
from opencanvas.training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from opencanvas.training.metrics_log import read_rows
from tests.factories import make_image_subset

FAST = dict(resolution=32, batch_size=4, holdout=0.25)


def test_budget_is_the_least_limit_in_whole_steps():
    assert Budget(images=100, steps=10).to_images(4, None) == 40
    assert Budget(minutes=1.0).to_images(4, None) is None  # needs a measured rate first
    assert Budget(minutes=1.0).to_images(4, 2.5) == 148  # 150 images at 2.5/s, whole steps of 4
    assert Budget(minutes=1.0, images=20).to_images(4, 2.5) == 20
    with pytest.raises(ValueError, match="give a training budget"):
        Budget()


def test_minutes_become_recorded_images_and_a_rerun_is_exact(ws):
    make_image_subset(ws, "shapes", n=40, size=32)
    report = train_autoencoder(ws, "shapes", "timed", minutes=0.01, **FAST)
    out = ws.autoencoder_dir("timed")
    record = json.loads((out / "opencanvas.json").read_text())
    assert record["minutes"] == 0.01 and record["measured_images_per_s"] > 0
    assert record["images"] % 4 == 0 and report["images_seen"] == record["images"] >= 12  # warm-up: 3 steps
    config = load_checkpoint(latest_checkpoint(out)).config
    assert config["images"] == record["images"] and config["measured_images_per_s"] == record["measured_images_per_s"]
    # The same command again: finished, nothing trained (the recorded rate converts the minutes).
    before = (out / "opencanvas.json").stat().st_mtime_ns
    assert train_autoencoder(ws, "shapes", "timed", minutes=0.01, **FAST) == report
    assert (out / "opencanvas.json").stat().st_mtime_ns == before
    # Minutes are a convenience for images: the recorded count gives the same weights.
    train_autoencoder(ws, "shapes", "counted", images=record["images"], **FAST)
    a, b = (load_checkpoint(latest_checkpoint(ws.autoencoder_dir(n))).model for n in ("timed", "counted"))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [r["images_seen"] for r in read_rows(out)] == list(range(4, record["images"] + 1, 4))


def test_components_checkpoint_by_default_and_keep_three(ws):
    make_image_subset(ws, "shapes", n=40, size=32)
    train_autoencoder(ws, "shapes", "ae", steps=6, **FAST)  # a twentieth of 24 images is less than a step
    assert [int(p.name[5:17]) for p in list_checkpoints(ws.autoencoder_dir("ae"))] == [16, 20, 24]
    assert (ws.autoencoder_dir("ae") / "tb").is_dir()
