"""A finished study's report: results.parquet, REPORT.md and PNG plots with bootstrap intervals."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from opencanvas.storage import atomic_write_bytes, atomic_write_text  # noqa: E402
from opencanvas.study import shared  # noqa: E402
from opencanvas.study.cells import Cell  # noqa: E402
from opencanvas.study.results import bootstrap_mean, result_rows, write_results  # noqa: E402
from opencanvas.study.spec import StudySpec  # noqa: E402
from opencanvas.workspace import Workspace  # noqa: E402


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def _save(fig: Any, path: Path) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    # A fixed date keeps the PNG bytes a function of the figures alone.
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _series_key(record: dict[str, Any], spec: StudySpec, exclude: set[str]) -> str:
    names = [k for k in spec.axis_names() if k not in exclude]
    return ", ".join(f"{k}={record['values'][k]}" for k in names) or spec.preset


def _grouped(records: Sequence[dict[str, Any]], spec: StudySpec, guidance: float, prompts: int,
             exclude: set[str]) -> dict[str, list[tuple[Any, float, tuple[float, float] | None]]]:
    """series -> [(x, mean CLIP score, interval)], pooling the seeds of an x (error bars across seeds too)."""
    pools: dict[str, dict[Any, list[list[float]]]] = {}
    axis = "conditioning" if "conditioning" in exclude else "captioner"
    for r in records:
        if r["status"] != "ok":
            continue
        row = next((x for x in r["rows"] if x["guidance"] == guidance and x.get("clip_scores")), None)
        if row is None:
            continue
        x = r["fraction"] if "fraction" in exclude else r["values"].get(axis, r["captioner"])
        pools.setdefault(_series_key(r, spec, exclude), {}).setdefault(x, []).append(row["clip_scores"])
    out: dict[str, list[tuple[Any, float, tuple[float, float] | None]]] = {}
    for series, by_x in pools.items():
        points = []
        for x, replicates in by_x.items():
            mean = float(sum(sum(s) / len(s) for s in replicates) / len(replicates))
            points.append((x, mean, bootstrap_mean(replicates, prompts, spec.eval.bootstrap)))
        out[series] = sorted(points, key=lambda p: p[0]) if "fraction" in exclude else points
    return out


def scaling_plot(path: Path, records: Sequence[dict[str, Any]], spec: StudySpec, prompts: int) -> str:
    """CLIP score against the data fraction (log x), one line per other axis value, one panel per guidance."""
    scales = spec.eval.guidance
    fig, axes = plt.subplots(1, len(scales), figsize=(4.2 * len(scales), 3.4), squeeze=False)
    for ax, g in zip(axes[0], scales, strict=True):
        lines = sorted(_grouped(records, spec, g, prompts, {"fraction", "seed"}).items())
        for i, (series, points) in enumerate(lines):
            dodge = 1.0 + 0.04 * (i - (len(lines) - 1) / 2)  # side by side, so the error bars do not overlap
            xs = [p[0] * dodge for p in points]
            ys = [p[1] for p in points]
            lo = [p[1] - p[2][0] if p[2] else 0.0 for p in points]
            hi = [p[2][1] - p[1] if p[2] else 0.0 for p in points]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=series)
        ax.set_xscale("log")
        fractions = sorted({float(f) for f in dict(spec.axes)["fraction"]})
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.minorticks_off()
        ax.set_xlabel("data fraction (log scale)")
        ax.set_ylabel("CLIP score")
        ax.set_title(f"guidance {g:g}")
        ax.legend(fontsize=7)
    fig.suptitle(f"{spec.name}: 95% bootstrap intervals over eval prompts (and seeds)", fontsize=9)
    return _save(fig, path)


def captions_plot(path: Path, records: Sequence[dict[str, Any]], spec: StudySpec, prompts: int,
                  axis: str = "captioner") -> str:
    """Bars of CLIP score per captioner (or conditioning, and other setting), one group per guidance scale."""
    scales = spec.eval.guidance
    captioners = spec.captioners() if axis == "captioner" else spec.conditionings()
    groups = [_grouped(records, spec, g, prompts, {axis, "seed"}) for g in scales]
    series = sorted({name for grouped in groups for name in grouped})
    bars = [(name, c) for name in series for c in captioners]  # one bar per (other setting, captioner)
    width = 0.8 / max(1, len(bars))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 0.5 * len(scales) * len(bars)), 3.6))
    for gi, grouped in enumerate(groups):
        for bi, (name, captioner) in enumerate(bars):
            point = next((p for p in grouped.get(name, []) if p[0] == captioner), None)
            if point is None:
                continue
            _, mean, interval = point
            err = [[mean - interval[0]], [interval[1] - mean]] if interval else None
            label = (captioner if len(series) == 1 else f"{captioner}, {name}") if gi == 0 else None
            ax.bar(gi + bi * width, mean, width, yerr=err, capsize=3, color=f"C{bi}", label=label)
    ax.set_xticks([gi + width * (len(bars) - 1) / 2 for gi in range(len(scales))],
                  [f"guidance {g:g}" for g in scales])
    ax.set_ylabel("CLIP score")
    ax.set_title(f"{spec.name}: {'captioners' if axis == 'captioner' else 'conditioning'} "
                 "(CLIP score, 95% bootstrap intervals)", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


def side_by_side(spec: StudySpec, rows: list[dict[str, Any]], axis: str = "captioner") -> list[str]:
    """The captions (or conditioning) comparison: one column per value, one line per guidance and other setting."""
    captioners = spec.captioners() if axis == "captioner" else spec.conditionings()
    others = [k for k in spec.axis_names() if k != axis]
    lines: dict[tuple[Any, ...], dict[str, str]] = {}
    for r in rows:
        line = (r["guidance"], *(r[k] if k != "images" else r["train_images"] for k in others))
        cell = f"{_fmt(r['clip_score'])} [{_fmt(r['clip_score_lo'])}, {_fmt(r['clip_score_hi'])}]" \
            if r["clip_score_lo"] is not None else (_fmt(r["clip_score"]) if r["status"] == "ok" else r["status"])
        lines.setdefault(line, {})[r[axis]] = cell
    header = ["guidance", *others, *captioners]
    title = "Captioners" if axis == "captioner" else "Conditioning"
    out = ["", f"## {title} side by side (CLIP score [95% interval])", "", "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
    for line, by_captioner in lines.items():
        values = [f"{line[0]:g}", *(str(v) for v in line[1:]), *(by_captioner.get(c, "–") for c in captioners)]
        out.append("| " + " | ".join(values) + " |")
    return out


def _mem(row: dict[str, Any]) -> str:
    if row["memorization_lo"] is None:
        return _fmt(row["memorization"])
    return f"{_fmt(row['memorization'])} [{_fmt(row['memorization_lo'])}, {_fmt(row['memorization_hi'])}]"


def _markdown(spec: StudySpec, cells: Sequence[Cell], records: Sequence[dict[str, Any]], rows: list[dict[str, Any]],
              shared_record: dict[str, Any], prompts: dict[str, Any], plots: list[str]) -> str:
    fd_name = next((r.get("fd_metric") for r in records if r.get("fd_metric")), None) or "FD"
    kid_name = next((r.get("kid_metric") for r in records if r.get("kid_metric")), None) or "KID"
    compute = "equal, every cell trains on the same number of images" if spec.mode == "images" else \
        f"{spec.epochs} epochs of each cell’s own data"
    varied = ", ".join(f"{k} = {list(v)}" for k, v in spec.axes) or "nothing (one cell)"
    out = [f"# Study {spec.name}", ""]
    if spec.description:
        out += [spec.description, ""]
    out += [f"Study file: `{spec.source}` (copied to `study.toml`). {len(cells)} cells, axes "
            f"{'zipped' if spec.combine == 'zip' else 'crossed'}.", "",
            "## What varied and what was shared", "",
            f"- Varied: {varied}.",
            f"- Compute: {compute} (batch {spec.batch or 'the preset’s'}).",
            f"- Subset `{spec.subset}`; data fractions are nested (key in fraction F when the first 8 bytes of "
            f"sha256(\"{spec.fraction_seed}:<key>\") / 2^64 < F); the held-out split is left out at every fraction.",
            f"- One autoencoder `{spec.autoencoder}` and one text encoder `{spec.text_encoder}` for every cell; "
            f"resolution {spec.resolution}.",
            f"- Images: {shared_record.get('images', '–')}. Captions: "
            + ", ".join(f"`{c}` {how}" for c, how in shared_record.get("captions", {}).items()) + ". Latents "
            "(encoded once per captioner, read by every fraction through a key filter): "
            + ", ".join(f"`{n}`" for n in shared_record.get("latents", {}).values()) + ".",
            f"- Evaluation, the same for every cell: {len(prompts['prompts'])} prompts "
            f"({', '.join(prompts['sources'])}; held-out captions by `{prompts['captioner']}`), n = {spec.eval.n} "
            f"images per guidance scale, {spec.eval.steps} {spec.eval.sampler} steps, seed {spec.eval.seed}, "
            f"CLIP `{spec.eval.clip or spec.text_encoder}`.", "",
            "## Results", "",
            f"CLIP score with its 95% bootstrap interval over eval prompts ({spec.eval.bootstrap} resamples); "
            f"{fd_name} and {kid_name} against `{spec.eval.reference or spec.subset}`; memorization is the share of "
            "samples whose nearest reference image has cosine ≥ 0.95. Every row traces to "
            "`runs/<run>/eval/<eval id>/`.",
            "", f"| cell | setting | status | train images | guidance | CLIP score | interval | uncond. CLIP | "
                f"{fd_name} | {kid_name} | memorization [95%] | run | eval id |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        interval = f"[{_fmt(r['clip_score_lo'])}, {_fmt(r['clip_score_hi'])}]" if r["clip_score_lo"] is not None \
            else "–"
        out.append(f"| {r['cell']} | {r['label']} | {r['status']} | {_fmt(r['train_images'])} | {r['guidance']:g} | "
                   f"{_fmt(r['clip_score'])} | {interval} | {_fmt(r['clip_score_unconditional'])} | {_fmt(r['fd'])} | "
                   f"{_fmt(r['kid'], 4)} | {_mem(r)} | `{r['run']}` | `{r['eval_id'] or '–'}` |")
    if len(dict(spec.axes).get("captioner", ())) > 1:
        out += side_by_side(spec, rows)
    if len(spec.conditionings()) > 1:
        out += side_by_side(spec, rows, "conditioning")
    out += ["", "## Compute per cell", "",
            "| cell | setting | training images (keys) | steps | wall s | images/s | device x ranks |",
            "|---|---|---|---|---|---|---|"]
    for rec in records:
        c = rec.get("compute") or {}
        out.append(f"| {rec['cell']} | {rec['label']} | {_fmt(rec.get('train_images'))} "
                   f"({_fmt(rec.get('train_keys'))}) | {_fmt(c.get('steps'))} | {_fmt(c.get('wall_seconds'), 1)} | "
                   f"{_fmt(c.get('images_per_s'), 1)} | "
                   f"{c.get('device') or '–'} x {c.get('world_size') or 1} |")
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        out += ["", "## Failed cells", ""] + [f"- cell {r['cell']} ({r['label']}): {r['reason']}" for r in failed]
    if plots:
        out += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    if fd_name not in ("FID", "FD"):
        out += ["", f"{fd_name}/{kid_name} are distances in CLIP image features, not FID: not comparable to "
                "published FID numbers."]
    return "\n".join(out) + "\n"


def write_report(ws: Workspace, spec: StudySpec, cells: Sequence[Cell], records: Sequence[dict[str, Any]]) -> Path:
    """results.parquet, the plots and REPORT.md under studies/<name>/; returns REPORT.md's path."""
    root = shared.study_dir(ws, spec.name)
    prompts = json.loads((root / "prompts.json").read_text())
    shared_path = root / "shared.json"
    shared_record = json.loads(shared_path.read_text()) if shared_path.exists() else {}
    n_prompts = len(prompts["prompts"])
    rows = result_rows(spec.name, records, spec.eval.guidance, n_prompts, spec.eval.bootstrap, spec.eval.n)
    write_results(root / "results.parquet", rows)
    plots = []
    axes = dict(spec.axes)
    have_clip = "clip" in spec.eval.metrics and any(r["status"] == "ok" for r in records)
    if have_clip and len(axes.get("fraction", ())) > 1:
        plots.append(scaling_plot(root / "scaling.png", records, spec, n_prompts))
    if have_clip and len(axes.get("captioner", ())) > 1:
        plots.append(captions_plot(root / "captions.png", records, spec, n_prompts))
    if have_clip and len(spec.conditionings()) > 1:
        plots.append(captions_plot(root / "conditioning.png", records, spec, n_prompts, "conditioning"))
    path = root / "REPORT.md"
    atomic_write_text(path, _markdown(spec, cells, records, rows, shared_record, prompts, plots))
    return path
