"""What the gallery shows of a run, read from its records: summary, sample grids, eval reports, the
training curve and the cards. Every path returned is relative to the run directory."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from opencanvas.workspace import Workspace

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# The only run sub-folders the server serves files from, and the only kinds of file.
SERVED_FOLDERS = ("samples", "eval", "cards")
SERVED_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def run_names(ws: Workspace) -> list[str]:
    root = ws.root / "runs"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and RUN_NAME.match(p.name)
                  and (p / "config.json").is_file())


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_summary(ws: Workspace, run: str) -> dict[str, Any]:
    """One line of the run list."""
    d = ws.run_dir(run)
    config, summary = _json(d / "config.json"), _json(d / "summary.json")
    data = config.get("data", {})
    grids = sorted((d / "samples").glob("*.png")) if (d / "samples").is_dir() else []
    return {"name": run, "preset": config.get("preset"), "images_seen": summary.get("images_seen"),
            "steps": summary.get("steps"), "subset": data.get("subset"), "policy": data.get("policy"),
            "catalog_hash": data.get("catalog_hash"), "weights_sha256": summary.get("weights_sha256"),
            "latest_grid": grids[-1].relative_to(d).as_posix() if grids else None}


def training_curve(ws: Workspace, run: str, width: int = 560, height: int = 180) -> dict[str, Any]:
    """Loss against images seen, and an SVG polyline of it (drawn server-side: no script needed)."""
    points = []
    path = ws.run_dir(run) / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                points.append((float(row["images_seen"]), float(row["loss"])))
            except (ValueError, KeyError, TypeError):
                continue   # a torn last line of a killed run
    if len(points) < 2:
        return {"points": points, "svg_points": "", "width": width, "height": height}
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 20) / ((x1 - x0) or 1)
    sy = (height - 20) / ((y1 - y0) or 1)
    svg = " ".join(f"{10 + (x - x0) * sx:.1f},{height - 10 - (y - y0) * sy:.1f}" for x, y in points)
    return {"points": points, "svg_points": svg, "width": width, "height": height,
            "x_range": [x0, x1], "y_range": [y0, y1]}


def eval_reports(ws: Workspace, run: str) -> list[dict[str, Any]]:
    out = []
    root = ws.run_dir(run) / "eval"
    for report in sorted(root.glob("*/report.json")) if root.is_dir() else []:
        r = _json(report)
        if not r:
            continue
        folder = report.parent.relative_to(ws.run_dir(run)).as_posix()
        plots = [f"{folder}/{p}" for p in ("tradeoff.png", "memorization.png") if (report.parent / p).is_file()]
        out.append({"id": report.parent.name, "report": r, "plots": plots})
    return out


def run_detail(ws: Workspace, run: str) -> dict[str, Any]:
    """Everything the run page shows (the JSON of /api/runs/{run})."""
    d = ws.run_dir(run)
    samples = d / "samples"
    grids = sorted(p.relative_to(d).as_posix() for p in samples.rglob("*.png")
                   if p.name.startswith("grid")) if samples.is_dir() else []
    cards = sorted(p.name for p in (d / "cards").glob("*.md")) if (d / "cards").is_dir() else []
    return {**run_summary(ws, run), "grids": grids, "evals": eval_reports(ws, run),
            "curve": training_curve(ws, run), "cards": cards, "config": _json(d / "config.json")}


def served_file(ws: Workspace, run: str, rel: str) -> Path | None:
    """The file `rel` under the run's samples/, eval/ or cards/ folder, or None: no other path is served
    (`..`, absolute paths and links out of those folders resolve elsewhere and are refused)."""
    if not RUN_NAME.match(run) or run not in run_names(ws):
        return None
    base = ws.run_dir(run).resolve()
    target = (base / rel).resolve()
    allowed = any(target.is_relative_to(base / folder) for folder in SERVED_FOLDERS)
    if not allowed or target.suffix.lower() not in SERVED_SUFFIXES or not target.is_file():
        return None
    return target
