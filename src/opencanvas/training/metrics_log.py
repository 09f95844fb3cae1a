"""metrics.jsonl and TensorBoard, keyed by images seen: the log every trainer writes.

A resumed run drops the rows a killed session logged after its last checkpoint, so each
step appears once. A run that restarts from nothing (every checkpoint deleted) never
truncates the old log: it is renamed aside first (`set_aside`).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from opencanvas.storage import atomic_write_text

LOG_NAME = "metrics.jsonl"
TB_NAME = "tb"


class MetricsLog:
    """metrics.jsonl + TensorBoard, keyed by images seen (rank 0 only)."""

    def __init__(self, run_dir: Path, images_seen: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(run_dir) / LOG_NAME
        truncate_after(self.path, images_seen)
        # purge_step drops events a killed run logged after its last checkpoint.
        self.tb = SummaryWriter(log_dir=str(Path(run_dir) / TB_NAME), purge_step=images_seen or None)
        self._file = self.path.open("a")

    def log(self, images_seen: int, scalars: dict[str, Any]) -> None:
        # Non-finite values (a skipped step's loss) become null: NaN is not JSON.
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in scalars.items()}
        self._file.write(json.dumps({"images_seen": images_seen, **clean}) + "\n")
        self._file.flush()
        for k, v in clean.items():
            if isinstance(v, (int, float)):
                self.tb.add_scalar(f"train/{k}", v, images_seen)

    def image(self, tag: str, pixels_hwc: Any, images_seen: int) -> None:
        self.tb.add_image(tag, pixels_hwc, images_seen, dataformats="HWC")

    def close(self) -> None:
        self._file.close()
        self.tb.close()


def truncate_after(path: Path, images_seen: int) -> None:
    """Drop rows logged after `images_seen` (a killed run's steps that will be redone)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["images_seen"] <= images_seen:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut by the kill
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def set_aside(run_dir: Path) -> list[Path]:
    """Rename an existing metrics.jsonl and tb/ to `*-before-<UTC time>` (a restart keeps the old log)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    moved = []
    for name, new in ((LOG_NAME, f"metrics-before-{stamp}.jsonl"), (TB_NAME, f"tb-before-{stamp}")):
        path = Path(run_dir) / name
        if path.exists():
            target = path.with_name(new)
            path.rename(target)
            moved.append(target)
    return moved


def has_rows(run_dir: Path) -> bool:
    path = Path(run_dir) / LOG_NAME
    return path.exists() and path.stat().st_size > 0


def read_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The logged rows (lines cut by a kill skipped)."""
    path = Path(run_dir) / LOG_NAME
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows
