"""Caption report: how the captioners of one subset compare.

Per captioner: count and coverage of the subset's ok images, flags, length in
words and tokens (PNG histogram), vocabulary size, share of duplicate captions,
and a Markdown table of the metadata (alt-text) caption beside the synthetic
ones for a sample of images, the comparison CommonCanvas makes in its Fig. 3.
Where `caption score` has scored a captioner, its CLIP scores too (scores.png).

    captions/stats/<subset>/stats.json  lengths.png  samples.md  [scores.png]
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from opencanvas.caption.captioners import RESERVED_NAMES, metadata_caption
from opencanvas.captions import read_captions
from opencanvas.shards import iter_shard, read_index
from opencanvas.storage import atomic_write_figure, atomic_write_json, atomic_write_text
from opencanvas.workspace import Workspace

_TOKEN = re.compile(r"\w+|[^\w\s]")


def report_dir(ws: Workspace, subset: str) -> Path:
    return ws.root / "captions" / "stats" / subset


def scores_path(ws: Workspace, subset: str, captioner: str) -> Path:
    """Where `caption score` writes a captioner's CLIP scores on `subset`."""
    return report_dir(ws, subset) / "scores" / f"{captioner}.parquet"


def _summary(values: np.ndarray, digits: int) -> dict[str, float]:
    return {"mean": round(float(values.mean()), digits), "median": round(float(np.median(values)), digits),
            "p10": round(float(np.percentile(values, 10)), digits),
            "p90": round(float(np.percentile(values, 90)), digits)}


def clip_scores(ws: Workspace, subset: str, captioner: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """({"clip_score": values, ["round_trip": values]}, summary) from `caption score`; None where it has not run."""
    import pyarrow.parquet as pq

    path = scores_path(ws, subset, captioner)
    if not path.exists():
        return None
    table = pq.read_table(path)
    meta = pq.read_schema(path).metadata or {}
    values = {c: np.asarray(table.column(c).drop_null().to_numpy(), dtype=np.float64)
              for c in ("clip_score", "round_trip") if c in table.column_names}
    values = {c: v for c, v in values.items() if len(v) or c == "clip_score"}
    summary: dict[str, Any] = {"clip": meta.get(b"clip", b"").decode(), "scored": len(values["clip_score"]),
                               "quarantined": table.num_rows - len(values["clip_score"])}
    if len(values["clip_score"]):
        summary.update(_summary(values["clip_score"], 3))
    if "round_trip" in values:
        summary["round_trip"] = {"run": meta.get(b"run", b"").decode(), "scored": len(values["round_trip"]),
                                 **_summary(values["round_trip"], 4)}
    return values, summary


def _plot_scores(values: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(c, label) for c, label in (("clip_score", "CLIP score (100 x image-text cosine)"),
                                          ("round_trip", "round trip (generated-original image cosine)"))
              if any(c in v for v in values.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 3.6), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        everything = np.concatenate([v[column] for v in values.values() if column in v])
        bins = np.linspace(float(everything.min()), float(everything.max()) + 1e-6, 31)
        for name, v in values.items():
            if column in v:
                ax.hist(v[column], bins=bins, histtype="step", linewidth=1.5,
                        label=f"{name} (mean {v[column].mean():.3g})")
        ax.set_xlabel(label)
        ax.set_ylabel("captions")
        ax.legend(fontsize=8)
    fig.suptitle("Caption quality by captioner")
    fig.tight_layout()
    atomic_write_figure(fig, path)


def caption_tables(ws: Workspace) -> list[str]:
    """Names of the caption tables in the workspace (captions/<name>/ with parts)."""
    root = ws.root / "captions"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and p.name not in RESERVED_NAMES and any(p.glob("part-*.parquet")))


def _percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0.0}
    a = np.asarray(values)
    return {"mean": round(float(a.mean()), 2), "median": float(np.median(a)),
            "p95": float(np.percentile(a, 95)), "max": float(a.max())}


def text_stats(captions: list[str], flagged: list[str], count_tokens) -> dict[str, Any]:
    """Counts, length distributions, vocabulary and duplicate share of one captioner's captions."""
    usable = [c for c in captions if c.strip()]
    words = [len(c.split()) for c in usable]
    tokens = [count_tokens(c) for c in usable]
    normalised = Counter(" ".join(c.lower().split()) for c in usable)
    duplicates = sum(n for n in normalised.values() if n > 1)
    vocab = {w for c in usable for w in _TOKEN.findall(c.lower()) if w[0].isalnum()}
    return {
        "count": len(captions),
        "flagged": dict(Counter(f for f in flagged if f)),
        "words": _percentiles(words), "tokens": _percentiles(tokens),
        "vocabulary": len(vocab),
        "duplicate_share": round(duplicates / len(usable), 4) if usable else 0.0,
        "_words": words, "_tokens": tokens,
    }


def _token_counter(tokenizer: str | None):
    """Tokens per caption: a transformers tokenizer (e.g. the text encoder's) or a regex fallback."""
    if tokenizer is None:
        return lambda text: len(_TOKEN.findall(text)), "regex \\w+|[^\\w\\s]"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"]), tokenizer


def _metadata_captions(ws: Workspace, subset: str, keys: list[str], index: Any) -> dict[str, str]:
    """Alt-text captions built from the shard JSON of `keys` (when no metadata table exists)."""
    shard_of = dict(zip(index.column("key").to_pylist(), index.column("shard").to_pylist()))
    wanted, out = set(keys), {}
    for shard in sorted({shard_of[k] for k in keys}):
        for img in iter_shard(ws.images_dir(subset) / f"{shard}.tar"):
            if img.key in wanted:
                out[img.key] = metadata_caption(img.meta)
    return out


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|") or "∅"


def _plot_lengths(per_captioner: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, field in zip(axes, ("_words", "_tokens")):
        top = max([1, *(max(s[field], default=0) for s in per_captioner.values())])
        bins = np.arange(0, top + 2) - 0.5 if top <= 60 else 40
        for name, s in per_captioner.items():
            if s[field]:
                ax.hist(s[field], bins=bins, histtype="step", linewidth=1.5, label=name)
        ax.set_xlabel(field.strip("_") + " per caption")
        ax.set_ylabel("captions")
    axes[0].legend(fontsize=8)
    fig.suptitle("Caption length by captioner")
    fig.tight_layout()
    atomic_write_figure(fig, path)


def caption_stats(ws: Workspace, subset: str, sample: int = 8, seed: int = 0,
                  tokenizer: str | None = None) -> dict[str, Any]:
    """Compute the report for `subset`, write it under captions/stats/<subset>/, return it (JSON-able)."""
    index = read_index(ws.images_dir(subset))
    index = index.filter(pc.equal(index.column("status"), "ok"))
    ok_keys = index.column("key").to_pylist()
    if not ok_keys:
        raise FileNotFoundError(f"no ok images for subset {subset!r}: run `opencanvas fetch --subset {subset}` first")
    count_tokens, token_source = _token_counter(tokenizer)
    per: dict[str, dict[str, Any]] = {}
    by_key: dict[str, dict[str, str]] = {}
    for name in caption_tables(ws):
        table = read_captions(ws, name, keys=ok_keys)
        if table.num_rows == 0:
            continue  # a table of another subset
        captions, flagged = table.column("caption").to_pylist(), table.column("flagged").to_pylist()
        s = text_stats(captions, flagged, count_tokens)
        s["coverage"] = round(len(set(table.column("key").to_pylist())) / len(ok_keys), 4)
        s["model_ids"] = sorted(set(table.column("model_id").to_pylist()))
        per[name] = s
        by_key[name] = dict(zip(table.column("key").to_pylist(), captions))
    if not per:
        raise FileNotFoundError(f"no captions for subset {subset!r}: run `opencanvas caption --subset {subset} "
                                f"--captioner metadata` (or blip2) first")

    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(ok_keys, size=min(sample, len(ok_keys)), replace=False).tolist())
    alt_text = by_key.get("metadata") or _metadata_captions(ws, subset, picked, index)
    synthetic = [n for n in per if n != "metadata"]
    columns = ["key", "metadata", *(f"`{n}`" for n in synthetic)]   # as many header cells as row cells
    lines = [f"# Captions of subset `{subset}`: metadata vs synthetic ({len(picked)} sampled images)", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for k in picked:
        key = k.replace("|", "\\|")
        cells = [f"`{key}`", _md_cell(alt_text.get(k, ""))] + [_md_cell(by_key[n].get(k, "")) for n in synthetic]
        lines.append("| " + " | ".join(cells) + " |")

    out = report_dir(ws, subset)
    paths = {"json": out / "stats.json", "histogram": out / "lengths.png", "samples": out / "samples.md"}
    _plot_lengths(per, paths["histogram"])
    scored: dict[str, dict[str, np.ndarray]] = {}
    for name in per:
        found = clip_scores(ws, subset, name)
        if found is not None:
            per[name]["clip_score"] = found[1]
            if len(found[0]["clip_score"]):
                scored[name] = found[0]
    if scored:
        paths["score_histogram"] = out / "scores.png"
        _plot_scores(scored, paths["score_histogram"])
    atomic_write_text(paths["samples"], "\n".join(lines) + "\n")
    report = {"subset": subset, "ok_images": len(ok_keys), "token_counter": token_source,
              "captioners": {n: {k: v for k, v in s.items() if not k.startswith("_")} for n, s in per.items()},
              "paths": {k: ws.relative(p) for k, p in paths.items()}}
    atomic_write_json(paths["json"], report)
    return report
