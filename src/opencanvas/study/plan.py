"""`opencanvas study plan`: every cell as its own command, for a SLURM array or a Ray job."""

from __future__ import annotations

import shlex

from opencanvas.study.cells import study_cells
from opencanvas.study.spec import StudySpec


def plan_commands(spec: StudySpec, workspace: str, nproc: int | None = None) -> list[tuple[str, str]]:
    """(command, comment) lines: the shared preparation, one line per cell, then the report."""
    study = shlex.quote(spec.source.removeprefix("builtin:"))
    base = f"opencanvas study run {study} -w {shlex.quote(workspace)}"
    extra = f" --nproc {nproc}" if nproc else ""
    lines = [(f"{base} --prepare", "shared: images, captions, latents, eval prompts (run once, first)")]
    lines += [(f"{base} --cell {c.index}{extra}", c.label()) for c in study_cells(spec)]
    lines.append((base, "after the cells: skips them all and writes results.parquet, REPORT.md and the plots"))
    return lines
