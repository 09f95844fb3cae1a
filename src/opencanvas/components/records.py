"""Provenance records of components trained here (`opencanvas.json`, the done-marker)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from opencanvas.components.loading import RECORD_FILE, quiet_hub_logs, read_record
from opencanvas.storage import atomic_write_json, parquet_metadata
from opencanvas.workspace import Workspace


def subset_metadata(ws: Workspace, subset: str) -> dict[str, Any]:
    """What a card needs about the training subset: policy and catalog snapshot."""
    path = ws.subset_path(subset)
    if not path.exists():
        raise FileNotFoundError(f"no subset {subset!r} ({path}): make one with "
                                f"`opencanvas catalog subset --policy commercial --name {subset}`")
    meta = parquet_metadata(path)
    return {"subset": subset, "policy": meta.get("policy", "unknown"),
            "catalog_hash": meta.get("catalog_hash", "unknown"), "subset_created_at": meta.get("created_at", "")}


def finished_record(out_dir: Path) -> dict[str, Any] | None:
    """The record of a finished component, or None while it is missing or unfinished."""
    record = read_record(out_dir)
    return record if record.get("finished") else None


def publish(out_dir: Path, save: Callable[[Path], None]) -> None:
    """Write `save(tmp_dir)`'s files into `out_dir` file by file, each with an atomic rename."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".export-*"):  # left by a run killed while saving
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        with quiet_hub_logs():  # no "Writing model shards" bars
            save(tmp)
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                target = out_dir / path.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_record(out_dir: Path, record: dict[str, Any]) -> None:
    """Write opencanvas.json last: its `finished: true` marks the component complete."""
    atomic_write_json(out_dir / RECORD_FILE,
                      {**record, "finished": True, "created_at": datetime.now(UTC).isoformat()})
