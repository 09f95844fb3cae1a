"""Evaluation outputs for people: report.md, the FD-vs-CLIP trade-off curve, the memorization gallery."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from opencanvas.storage import atomic_write_bytes, atomic_write_text

GALLERY_PAIRS = 8


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def memorization_gallery(path: Path, results: list[tuple[float, list[Image.Image], Any]], ref: Any,
                         options: Any) -> dict[str, Any]:
    """The closest (generated, nearest training image) pairs by feature cosine, over all guidance scales."""
    from opencanvas.sample.grid import contact_sheet

    pairs = [(float(mem.cosine[i]), g, i, images, mem) for g, images, mem in results for i in range(len(images))]
    pairs.sort(key=lambda p: -p[0])
    best: dict[int, tuple] = {}   # one pair per sample index: its seed recurs at every guidance scale
    for pair in pairs:
        best.setdefault(pair[2], pair)
    tiles, captions, listed = [], [], []
    for cosine, g, i, images, mem in list(best.values())[:GALLERY_PAIRS]:
        j = int(mem.nearest[i])
        tiles += [images[i], ref.images[j].resize(images[i].size, Image.Resampling.BICUBIC)]
        captions += [f"generated g={g:g} #{i}", f"nearest {ref.names[j]} cos {cosine:.3f}"
                     f" phash {int(mem.phash_distance[i])}"]
        listed.append({"guidance": g, "index": i, "reference": ref.names[j], "cosine": cosine,
                       "phash_nearest": ref.names[int(mem.phash_nearest[i])],
                       "phash_distance": int(mem.phash_distance[i])})
    atomic_write_bytes(path, _png(contact_sheet(tiles, captions, columns=2)))
    return {"path": path.name, "pairs": listed, "cosine_threshold": options.cosine_threshold,
            "phash_threshold": options.phash_threshold}


def tradeoff_plot(path: Path, rows: list[dict[str, Any]], fd_name: str, clip_model: str | None) -> None:
    """FD (lower is better) against CLIP score (higher is better), one point per guidance scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guided = [r for r in rows if not r["baseline"]]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    ax.plot([r["clip_score"] for r in guided], [r[fd_name] for r in guided], "o-", label="guided")
    for r in guided:
        ax.annotate(f"g={r['guidance']:g}", (r["clip_score"], r[fd_name]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    for r in rows:
        if r["baseline"]:
            ax.plot([r["clip_score"]], [r[fd_name]], "x", color="tab:red", markersize=9,
                    label="unconditional (g=0)")
    ax.set_xlabel(f"CLIP score ({clip_model})")
    ax.set_ylabel(f"{fd_name} (lower is better)")
    ax.set_title("Guidance trade-off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    fd, kid = report.get("fd_metric"), report.get("kid_metric")
    columns: list[tuple[Any, Any]] = [("guidance", "guidance"), ("CLIP score", "clip_score")]
    if "prompt_retrieval_chance" in report:
        columns += [("retrieval top-1", "prompt_retrieval_top1"), ("retrieval top-5", "prompt_retrieval_top5")]
    if fd:
        columns += [(fd, fd), (kid, kid), ("precision", "precision"), ("recall", "recall")]
    header = [name for name, _ in columns] + ["memorized (cos)", "memorized (phash)"]
    lines = [f"# Evaluation of `{report['model']}` ({report['eval_id']})", "",
             f"- weights sha256 `{report['weights_hash']}`; training data policy `{report['license_policy']}`, "
             f"catalog `{report['catalog_hash']}`",
             f"- prompts: {report['prompts']['source']} ({report['prompts']['count']}); reference: "
             f"{report['reference']['source']} ({report['reference']['count']} images)",
             f"- sampler {report['settings']['sampler']}, {report['settings']['steps']} steps, "
             f"n={report['settings']['n']} per guidance scale",
             f"- CLIP score model: {report.get('clip_model') or '-'}; distribution features: "
             f"{report.get('features') or '-'}", ""]
    if report.get("memorization_reference"):
        lines.insert(-1, f"- memorization searched {report['memorization_reference']['description']}")
    lines += [line for note in report.get("notes", []) for line in (f"> {note}", "")] or [""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        cells = [_fmt(row.get(key)) for _, key in columns]
        cells[0] = f"{row['guidance']:g}" + (" (unconditional)" if row["baseline"] else "")
        mem = row.get("memorization") or {}
        cells += [_fmt(mem.get("share_cosine_above")), _fmt(mem.get("share_phash_within"))]
        lines.append("| " + " | ".join(cells) + " |")
    if "clip_gain_over_unconditional" in report:
        lines += ["", f"Best guided CLIP score minus unconditional (g=0): "
                  f"{report['clip_gain_over_unconditional']:+.3f}."]
    if chance := report.get("prompt_retrieval_chance"):
        lines += ["", f"Prompt retrieval: share of images whose own prompt the CLIP ranks first (top-1) or in the "
                  f"first five (top-5) of the {chance['prompts']} distinct prompts; chance is "
                  f"{chance['top1']:.3f} / {chance['top5']:.3f}."]
    if report.get("tradeoff_plot"):
        lines += ["", f"![trade-off]({report['tradeoff_plot']})"]
    if report.get("memorization_gallery"):
        gallery = report["memorization_gallery"]
        lines += ["", f"Memorization: share of samples with feature cosine >= {gallery['cosine_threshold']} "
                  f"or perceptual-hash distance <= {gallery['phash_threshold']} bits to a training image.",
                  "", f"![closest pairs]({gallery['path']})"]
    atomic_write_text(path, "\n".join(lines) + "\n")
