"""Progress off a terminal, the closing summary of `train`, and how `train` starts torchrun
(issue 22 item 3, issue 19 item 8)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.encode.synthetic import write_random_latents
from opencanvas.progress import progress_bar
from opencanvas.workspace import Workspace

runner = CliRunner()
LINE = re.compile(r"^train r: (\d[\d,]*)/100 img \(\d+%\), [\d,.]+ img/s(, ETA \d+:\d\d:\d\d)?, loss ([\d.]+)$")


@pytest.fixture
def lines_every(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENCANVAS_PROGRESS", raising=False)   # conftest silences progress for other tests
    monkeypatch.setenv("OPENCANVAS_PROGRESS_EVERY", "0.05")


def test_progress_lines_off_a_terminal_carry_count_rate_eta_and_mean_loss(lines_every, capsys) -> None:
    with progress_bar() as bar:
        task = bar.add_task("train r", total=100, unit="img")
        for step in range(1, 11):
            bar.update(task, completed=10 * step, loss=1.0 / step)
            if step in (4, 8):
                time.sleep(0.06)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines   # at the first update after each pause (steps 5 and 9), and a closing line
    matches = [LINE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches] == [50, 90, 100]
    assert matches[0].group(2) and not matches[2].group(2)   # an ETA while running, none when done
    # The loss shown is the mean since the previous line, not the last (noisy) step's.
    assert float(matches[0].group(3)) == pytest.approx(round(sum(1 / s for s in range(1, 6)) / 5, 4), abs=1e-4)


def test_no_lines_when_silenced_or_on_other_ranks(lines_every, capsys, monkeypatch) -> None:
    for disable in (True, None):
        if disable is None:
            monkeypatch.setenv("OPENCANVAS_PROGRESS", "0")
        with progress_bar(disable=disable) as bar:
            task = bar.add_task("x", total=3)
            for _ in range(3):
                time.sleep(0.06)
                bar.advance(task)
    assert capsys.readouterr().out == ""


@pytest.fixture
def latents_ws(tmp_path: Path) -> Workspace:
    ws = Workspace.open(tmp_path / "ws")
    write_random_latents(ws, "lat", 24, resolution=64, text_len=8, text_dim=32, shard_size=8)
    return ws


def test_train_logs_progress_prints_resolved_settings_and_ends_with_loss_and_log_paths(
        latents_ws: Workspace, lines_every, monkeypatch) -> None:
    monkeypatch.setenv("OPENCANVAS_PROGRESS_EVERY", "0.000001")   # a line at every step
    monkeypatch.setenv("COLUMNS", "200")
    result = runner.invoke(app, ["train", "--latents", "lat", "--run", "r", "--images", "32", "--batch", "8",
                                 "--device", "cpu", "-w", str(latents_ws.root)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(r"^train r: 8/32 img \(25%\), [\d,.]+ img/s, ETA \d+:\d\d:\d\d, loss [\d.]+$", out, re.M), out
    assert re.search(r"^train r: 32/32 img \(100%\)", out, re.M)
    # Settings: the preset's values, never null.
    assert "null" not in out
    assert re.search(r"│ lr\s+│ 0\.001\s+│", out) and re.search(r"│ warmup_images\s+│ 64\s+│", out)
    run_dir = latents_ws.run_dir("r")
    last_loss = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["loss"]
    assert re.search(rf"│ final_loss\s+│ {float(f'{last_loss:.4g}')}\s+│", out), out
    assert str(run_dir / "metrics.jsonl") in out and f"tensorboard --logdir {run_dir / 'tb'}" in out
    # Floats rounded: no 17.94586798299997 in the summary.
    assert not re.search(r"\d\.\d{6,}", out)


def _exec_argv(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> tuple[list[str], str]:
    seen: list[list[str]] = []

    def fake_exec(file: str, argv: list[str]) -> None:
        seen.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(os, "execvp", fake_exec)
    result = runner.invoke(app, args)
    return (seen[0] if seen else []), result.output


def test_nproc_per_node_execs_torchrun_with_run_name(monkeypatch, tmp_path: Path) -> None:
    argv, out = _exec_argv(monkeypatch, [
        "-w", str(tmp_path), "train", "--latents", "lat", "--run", "r", "--images", "64", "--nproc-per-node", "2",
        "--no-compile", "--bf16", "--lr", "0.002"])
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"], out
    launcher, _, command = " ".join(argv[3:]).partition(" -m opencanvas train ")
    assert launcher == "--nproc_per_node 2 --nnodes 1 --standalone"
    assert "--run-name r" in command and "--run " not in command
    assert "--nproc" not in command and "--nnodes" not in command   # the ranks must not start torchrun again
    for part in ("--latents lat", "--images 64", "--no-compile", "--bf16", "--lr 0.002",
                 f"--workspace {tmp_path.resolve()}"):
        assert part in command


def test_multi_node_needs_an_endpoint_and_uses_c10d(monkeypatch, tmp_path: Path) -> None:
    argv, out = _exec_argv(monkeypatch, ["train", "--latents", "lat", "--run", "r", "--nproc-per-node", "8",
                                         "--nnodes", "2", "-w", str(tmp_path)])
    assert argv == [] and "--nnodes 2 needs --rdzv-endpoint HOST:PORT" in out
    argv, _ = _exec_argv(monkeypatch, ["train", "--latents", "lat", "--run", "r", "--nproc-per-node", "8",
                                       "--nnodes", "2", "--rdzv-endpoint", "node0:29500", "-w", str(tmp_path)])
    assert "--nproc_per_node 8 --nnodes 2 --rdzv_backend c10d --rdzv_endpoint node0:29500" in " ".join(argv)


def test_a_run_name_lost_to_torchrun_says_to_use_run_name(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    result = runner.invoke(app, ["train", "--latents", "lat", "-w", str(tmp_path)])
    assert result.exit_code == 2 and "under torchrun write --run-name NAME" in result.output
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    result = runner.invoke(app, ["train", "--latents", "lat", "-w", str(tmp_path)])
    assert result.exit_code == 2 and "give the run a name with --run NAME" in result.output


@pytest.mark.slow
def test_nproc_per_node_trains_on_two_ranks(latents_ws: Workspace) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCANVAS_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "opencanvas", "train", "--latents", "lat", "--run", "two", "--images", "16",
           "--batch", "8", "--device", "cpu", "--holdout", "0", "--nproc-per-node", "2", "-w", str(latents_ws.root)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((latents_ws.run_dir("two") / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["images_seen"] == 16
