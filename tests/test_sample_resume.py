"""Kill `opencanvas sample` for real (SIGKILL mid-run), re-run the same command, compare record by record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.sample.pngmeta import read_png_meta
from opencanvas.sample.tiny import write_tiny_folder

N = 6


def _args(folder: Path, out: Path) -> list[str]:
    return ["sample", "--pipeline", str(folder), "a red circle", "-n", str(N), "--steps", "8",
            "--batch-size", "1", "--seed", "3", "--out", str(out), "-w", str(out.parent / "ws")]


@pytest.mark.slow
def test_killed_sample_resumes_without_duplicates_or_losses(tmp_path: Path) -> None:
    folder = write_tiny_folder(tmp_path / "tiny")
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "opencanvas", *_args(folder, killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(killed.glob("0*.png"))) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = sorted(killed.glob("0*.png"))
    assert 2 <= len(partial) < N, "the kill should land mid-run"
    for p in partial:
        Image.open(p).load()                  # every visible PNG is whole (atomic writes)
    assert not (killed / "grid.png").exists()

    assert CliRunner().invoke(app, _args(folder, killed)).exit_code == 0
    full = tmp_path / "full"
    assert CliRunner().invoke(app, _args(folder, full)).exit_code == 0
    resumed, reference = sorted(killed.glob("0*.png")), sorted(full.glob("0*.png"))
    assert [p.name for p in resumed] == [p.name for p in reference] and len(resumed) == N
    for a, b in zip(resumed, reference):
        assert read_png_meta(a) == read_png_meta(b)
        np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
