"""What a new user hits on the command line (issue 19 items 5 and 8, issue 22 items 1 and 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from opencanvas import __version__
from opencanvas.cli import app
from opencanvas.workspace import Workspace
from tests.factories import make_image_subset

runner = CliRunner()


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


BAD_NAME_COMMANDS = [
    ["train", "--latents", "lat", "--run", "../../x", "--images", "16"],
    ["train", "--latents", "../lat", "--run", "r", "--images", "16"],
    ["autoencoder", "train", "--subset", "shapes", "--name", "/elsewhere/ae", "--steps", "1"],
    ["clip", "train", "--subset", "shapes", "--captioner", "metadata", "--name", "..", "--steps", "1"],
    ["fetch", "--subset", "../../x"],
    ["caption", "--subset", "shapes", "--captioner", "metadata", "--name", ".."],
    ["caption", "--subset", "shapes", "--captioner", "metadata", "--name", "."],
    ["encode", "--subset", "shapes", "--autoencoder", "a", "--text-encoder", "t", "--captioners", "metadata",
     "--name", "../x"],
    ["catalog", "subset", "--policy", "commercial", "--name", "../x"],
    ["export", "--run", "../r", "--out", "exported"],
    ["card", "--run", ".."],
]


@pytest.mark.parametrize("args", BAD_NAME_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_names_that_would_leave_the_workspace_fail_with_one_message(tmp_path: Path, args: list[str]) -> None:
    ws = Workspace.open(tmp_path / "ws")
    make_image_subset(ws, n=8, shard_size=8)
    before = _files(tmp_path)
    result = runner.invoke(app, [*args, "-w", str(ws.root)])
    assert result.exit_code == 2, result.output
    assert "is not allowed: use 1-128 letters, digits" in result.output
    assert isinstance(result.exception, SystemExit)   # fail(), not an uncaught InvalidName
    assert _files(tmp_path) == before   # nothing written, inside or outside the workspace


def test_version_prints_without_a_command() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"opencanvas {__version__}"


@pytest.mark.parametrize("verb", [["train"], ["sample"], ["fetch"], ["autoencoder", "train"], ["caption"]])
def test_help_at_80_columns_shows_every_option_name_whole(verb: list[str]) -> None:
    env = {**os.environ, "COLUMNS": "80", "TERM": "xterm-256color"}
    out = subprocess.run([sys.executable, "-m", "opencanvas", *verb, "--help"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert "…" not in out
    assert max(len(line) for line in out.splitlines()) <= 80
    command = get_command(app)
    for name in verb:
        command = command.commands[name]
    for param in command.params:
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("--"):
                assert opt in out, f"{opt} missing from `{' '.join(verb)} --help` at 80 columns"


def test_demo_fresh_refuses_a_workspace_with_the_users_files(tmp_path: Path) -> None:
    root = tmp_path / "here"
    (root / "src").mkdir(parents=True)
    (root / "my_notes.txt").write_text("mine")
    (root / "runs" / "old").mkdir(parents=True)
    result = runner.invoke(app, ["demo", "--fresh", "--max-images", "50", "--categories", "food", "-w", str(root)])
    assert result.exit_code == 2
    assert "OpenCanvas did not write (my_notes.txt, src/)" in result.output
    assert (root / "my_notes.txt").read_text() == "mine"
    assert (root / "src").is_dir() and (root / "runs" / "old").is_dir()
