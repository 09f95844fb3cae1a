"""`opencanvas study run`: the cells of a study, each an ordinary training run plus an evaluation.

    studies/<name>/study.toml, study.json      the file as given, and its resolved settings
    studies/<name>/prompts.json                the one evaluation prompt list of the study
    studies/<name>/keys/fraction-F-seed-S.parquet   the key filter of each nested data fraction
    studies/<name>/cells/<k>.json              a finished cell (its done-marker, written last)
    studies/<name>/results.parquet, REPORT.md, *.png   once every cell has finished

A kill at any point loses nothing: a finished cell has its record and is skipped, an interrupted
one resumes its run from the newest checkpoint (bit for bit on CPU) and its evaluation from the
images already written, so `results.parquet` equals that of an uninterrupted study.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opencanvas.progress import console
from opencanvas.storage import atomic_write_json, atomic_write_text
from opencanvas.study import shared
from opencanvas.study.cells import Cell, study_cells
from opencanvas.study.spec import StudyError, StudySpec, check_workspace, conditioning_options, parse_study
from opencanvas.workspace import Workspace

Engine = str  # "local" (cells one after another) or "ray" (cells as Ray tasks)


def check_unchanged(ws: Workspace, spec: StudySpec) -> None:
    """Refuse a study whose settings changed since its cells ran, naming the changed keys."""
    path = shared.study_dir(ws, spec.name) / "study.json"
    if not path.exists():
        return
    old, new = json.loads(path.read_text()), json.loads(json.dumps(spec.resolved()))
    changed = sorted(_diff(old, new))
    if changed:
        raise StudyError(f"study {spec.name!r} ran with other settings (changed: {', '.join(changed)}): restore them, "
                         f"or give the study a new [study] name (its finished cells stay under "
                         f"{ws.relative(path.parent)})")


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _diff(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def cell_record_path(ws: Workspace, spec: StudySpec, cell: Cell) -> Path:
    return shared.study_dir(ws, spec.name) / "cells" / f"{cell.index:03d}.json"


def train_arguments(ws: Workspace, spec: StudySpec, cell: Cell) -> dict[str, Any]:
    """The `train()` arguments of a cell: same images for every cell unless mode = "epochs"."""
    from opencanvas.encode import open_latents
    from opencanvas.splits import key_fraction
    from opencanvas.train.config import TrainConfig
    from opencanvas.train.data import read_key_filter
    from opencanvas.train.presets import get_preset

    latents = shared.latents_name(spec, cell.captioner)
    keys_path = shared.key_filter(ws, spec, cell.fraction, cell.fraction_seed)
    options = {**dict(spec.train_options), **conditioning_options(spec, cell.conditioning)}
    holdout = float(options.get("holdout", TrainConfig.holdout))
    chosen = read_key_filter(ws, keys_path)
    train_keys = sum(1 for k in open_latents(ws, latents, spec.resolution).keys()
                     if k in chosen and key_fraction(k) >= holdout)
    batch = spec.batch or get_preset(cell.preset).batch
    if train_keys < batch:
        raise ValueError(f"fraction {cell.fraction:g} keeps {train_keys} training images, fewer than one batch of "
                         f"{batch}: raise the fraction or lower [train] batch")
    images = cell.images if cell.images is not None else (spec.epochs or 1) * (train_keys // batch) * batch
    every = spec.checkpoint_every or max(batch, images // 4 // batch * batch)
    return {"latents": latents, "preset": cell.preset, "run": cell.run_name(spec), "images": images, "batch": batch,
            "seed": cell.seed, "key_filter": keys_path, "checkpoint_every": every, **options,
            "_train_keys": train_keys}


def _train(ws: Workspace, spec: StudySpec, cell: Cell, args: dict[str, Any], nproc: int | None) -> dict[str, Any]:
    from opencanvas.train.loop import train

    kwargs = {k: v for k, v in args.items() if not k.startswith("_")}
    if not nproc:
        return train(ws, kwargs.pop("latents"), kwargs.pop("preset"), kwargs.pop("run"), **kwargs)
    # Training alone runs under torchrun; everything else stays in this process.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "opencanvas", "study", "train-cell", _study_arg(ws, spec), "--cell", str(cell.index),
           "-w", str(ws.root)]
    done = subprocess.run(cmd, check=False)
    if done.returncode:
        raise RuntimeError(f"torchrun exited with status {done.returncode} ({' '.join(cmd)})")
    return json.loads((ws.run_dir(args["run"]) / "summary.json").read_text())


def _study_arg(ws: Workspace, spec: StudySpec) -> str:
    """The study as a command argument: a built-in's name, else the copy kept in the workspace."""
    if spec.source.startswith("builtin:"):
        return spec.source.removeprefix("builtin:")
    return str(shared.study_dir(ws, spec.name) / "study.toml")


def _evaluate(ws: Workspace, spec: StudySpec, run: str, prompts: list[str], evaluator: Any) -> dict[str, Any]:
    """Evaluate a run on the study's prompts; adds per-image CLIP scores for the bootstrap."""
    import numpy as np
    from PIL import Image

    from opencanvas.sample.evaluate import evaluate, guidance_dir

    e = spec.eval
    report = evaluate(ws, run, prompts, e.reference or spec.subset, metrics=e.metrics, guidance_scales=e.guidance,
                      n=e.n, steps=e.steps, sampler=e.sampler, seed=e.seed, max_reference=e.max_reference,
                      clip=evaluator)
    root = ws.run_dir(run) / "eval" / report["eval_id"]
    texts = [prompts[i % len(prompts)] for i in range(e.n)]
    rows = []
    for row in report["rows"]:
        out = {"guidance": float(row["guidance"]), "baseline": bool(row["baseline"]),
               "clip_score": row.get("clip_score"), "fd": row.get(report.get("fd_metric") or ""),
               "kid": row.get(report.get("kid_metric") or ""),
               "memorization": (row.get("memorization") or {}).get("share_cosine_above")}
        if "clip" in e.metrics:
            images = [Image.open(guidance_dir(root, row["guidance"]) / f"{i:05d}.png").convert("RGB")
                      for i in range(e.n)]
            out["clip_scores"] = [float(v) for v in np.asarray(evaluator.clip_score(images, texts), np.float64)]
        rows.append(out)
    return {"eval_id": report["eval_id"], "fd_metric": report.get("fd_metric"),
            "kid_metric": report.get("kid_metric"), "rows": rows}


def run_cell(ws: Workspace, spec: StudySpec, cell: Cell, prompts: list[str], evaluator: Any,
             nproc: int | None = None) -> dict[str, Any]:
    """Train and evaluate one cell; a cell that fails is recorded with its reason, never raised."""
    record: dict[str, Any] = {"cell": cell.index, "label": cell.label(), "values": cell.values,
                              "run": cell.run_name(spec), "latents": shared.latents_name(spec, cell.captioner),
                              "fraction": cell.fraction, "fraction_seed": cell.fraction_seed,
                              "captioner": cell.captioner, "preset": cell.preset, "seed": cell.seed}
    started = time.perf_counter()
    try:
        args = train_arguments(ws, spec, cell)
        record.update(train_images=args["images"], train_keys=args["_train_keys"], key_filter=args["key_filter"])
        console.rule(f"[bold]study {spec.name}: cell {cell.index} ({cell.label()})")
        summary = _train(ws, spec, cell, args, nproc)
        record["compute"] = {k: summary.get(k) for k in ("images_seen", "steps", "wall_seconds", "images_per_s",
                                                         "device", "world_size", "weights_sha256")}
        record.update(_evaluate(ws, spec, record["run"], prompts, evaluator))
        record.update(status="ok", reason="")
    except (RuntimeError, ValueError, OSError) as err:  # NaN loss, out of memory, too little data, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        console.print(f"[red]cell {cell.index} ({cell.label()}) failed:[/] {reason}")
        record.update(status="failed", reason=f"{type(err).__name__}: {reason}")
    record["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(cell_record_path(ws, spec, cell), record)
    return record


@dataclass(frozen=True)
class CellTask:
    """One cell for a Ray worker: the workspace must be on a filesystem the workers share."""

    root: str
    source: str
    text: str
    cell: int
    nproc: int | None


def run_cell_task(task: CellTask) -> dict[str, Any]:
    """run_cell in a fresh process (a Ray task): reopens the workspace and re-reads the study."""
    ws = Workspace.open(task.root)
    spec = parse_study(task.text, task.source)
    cell = study_cells(spec)[task.cell]
    return run_cell(ws, spec, cell, shared.eval_prompts(ws, spec), _clip_evaluator(ws, spec), task.nproc)


def _ray_options(nproc: int | None) -> dict[str, Any]:
    import torch

    return {"num_cpus": 1, **({"num_gpus": nproc or 1} if torch.cuda.is_available() else {})}


def read_cell_records(ws: Workspace, spec: StudySpec) -> dict[int, dict[str, Any]]:
    out = {}
    for path in sorted((shared.study_dir(ws, spec.name) / "cells").glob("*.json")):
        record = json.loads(path.read_text())
        out[int(record["cell"])] = record
    return out


def _clip_evaluator(ws: Workspace, spec: StudySpec) -> Any:
    if "clip" not in spec.eval.metrics and not set(spec.eval.metrics) & {"fid", "kid", "memorization"}:
        return None
    from opencanvas.components.loading import load_clip_evaluator

    return load_clip_evaluator(ws, spec.eval.clip or spec.text_encoder)


def run_study(ws: Workspace, spec: StudySpec, *, cell: int | None = None, nproc: int | None = None,
              prepare_only: bool = False, retry_failed: bool = False, engine: Engine = "local",
              on_cell: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run (or finish) a study in `ws`; returns {"cells": records, "report": path or None}."""
    check_workspace(ws, spec)
    check_unchanged(ws, spec)
    cells = study_cells(spec)
    if cell is not None and not 0 <= cell < len(cells):
        raise StudyError(f"--cell {cell} is out of range: study {spec.name!r} has cells 0..{len(cells) - 1}")
    if engine not in ("local", "ray"):
        raise StudyError(f"--engine {engine!r} is unknown: use local (one cell after another here) or ray "
                         "(cells as Ray tasks on the cluster in RAY_ADDRESS, or a local one)")
    root = shared.study_dir(ws, spec.name)
    atomic_write_json(root / "study.json", spec.resolved())
    if not (root / "study.toml").exists() or (root / "study.toml").read_text(encoding="utf-8") != spec.text:
        atomic_write_text(root / "study.toml", spec.text)
    chosen = cells if cell is None else [cells[cell]]
    shared_record = shared.prepare(ws, spec, sorted({c.captioner for c in chosen}, key=spec.captioners().index))
    if cell is None:
        atomic_write_json(root / "shared.json", shared_record)
    if prepare_only:
        return {"cells": {}, "report": None, "shared": shared_record}
    prompts = shared.eval_prompts(ws, spec)
    records = read_cell_records(ws, spec)
    todo = []
    for c in chosen:
        old = records.get(c.index)
        if old is not None and (old["status"] == "ok" or not retry_failed):
            console.print(f"[dim]✓ cell {c.index} ({c.label()}): {old['status']} before, skipped[/]")
        else:
            todo.append(c)
    if engine == "ray":
        from opencanvas.engines import map_shards

        tasks = [CellTask(str(ws.root), spec.source, spec.text, c.index, nproc) for c in todo]
        finished = map_shards(run_cell_task, tasks, engine="ray", ray_options=_ray_options(nproc))
    else:
        evaluator = _clip_evaluator(ws, spec) if todo else None
        finished = (run_cell(ws, spec, c, prompts, evaluator, nproc) for c in todo)
    for record in finished:
        records[record["cell"]] = record
        if on_cell:
            on_cell(record)
    report = None
    if all(c.index in records for c in cells):
        from opencanvas.study.report import write_report

        report = write_report(ws, spec, cells, [records[c.index] for c in cells])
    return {"cells": records, "report": report}


def train_cell(ws: Workspace, spec: StudySpec, cell: int) -> dict[str, Any]:
    """The training of one cell alone (what `--nproc` runs under torchrun on every rank)."""
    from opencanvas.train.loop import train

    check_workspace(ws, spec)
    c = study_cells(spec)[cell]
    kwargs = {k: v for k, v in train_arguments(ws, spec, c).items() if not k.startswith("_")}
    return train(ws, kwargs.pop("latents"), kwargs.pop("preset"), kwargs.pop("run"), **kwargs)
