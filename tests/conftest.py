"""Shared fixtures. Stage-specific fixtures live in each stage's test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One OpenMP thread per process: tests start subprocesses (torchrun ranks, kill-and-resume), and
# two OpenMP threads per process on 2 shared cores spin-wait each other ~10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OPENCANVAS_PROGRESS", "0")

from opencanvas.workspace import Workspace  # noqa: E402

CLIPART_ROOT = Path("/usr/share/openclipart")


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.open(tmp_path / "ws")


@pytest.fixture(scope="session")
def clipart_root() -> Path:
    if not (CLIPART_ROOT / "svg").is_dir():
        pytest.skip("Open Clip Art Library missing: `make test` installs openclipart-svg/png")
    return CLIPART_ROOT
