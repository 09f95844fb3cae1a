"""Report files of a trained component: report.json, report.md and PNG figures."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from opencanvas.storage import atomic_write_bytes, atomic_write_json, atomic_write_text


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_grid(rows: Sequence[Sequence[Image.Image]], pad: int = 2) -> Image.Image:
    """Rows of equal-sized images on a white canvas (e.g. originals above reconstructions)."""
    w, h = rows[0][0].size
    cols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (cols * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            canvas.paste(img, (pad + c * (w + pad), pad + r * (h + pad)))
    return canvas


def similarity_png(similarity: np.ndarray, labels: Sequence[str], title: str) -> bytes:
    """A heatmap of image (rows) x caption (columns) cosine similarities."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = similarity.shape[0]
    fig, ax = plt.subplots(figsize=(2 + 0.45 * n, 1.5 + 0.45 * n), dpi=100)
    im = ax.imshow(similarity, cmap="viridis")
    short = [(t[:28] + "...") if len(t) > 31 else t for t in labels]
    ax.set_xticks(range(n), short, rotation=70, ha="right", fontsize=7)
    ax.set_yticks(range(n), [f"image {i}" for i in range(n)], fontsize=7)
    ax.set_xlabel("caption")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(out_dir: Path, report: dict[str, Any], markdown: str, figures: dict[str, bytes]) -> None:
    """Figures first, then report.md, then report.json (what readers look for)."""
    for name, data in figures.items():
        atomic_write_bytes(out_dir / name, data)
    atomic_write_text(out_dir / "report.md", markdown)
    atomic_write_json(out_dir / "report.json", report)


def markdown_table(rows: Sequence[tuple[str, Any]]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)
