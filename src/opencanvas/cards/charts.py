"""License composition chart for the data card: the subset and the images trained on, side by side."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from opencanvas.storage import atomic_write_bytes  # noqa: E402

COLORS = ("#4c72b0", "#dd8452", "#55a868")


def license_bar_chart(series: dict[str, dict[str, int]], title: str, path: Path) -> Path:
    """Grouped horizontal bars: one group per license, one bar per series (e.g. subset, trained on)."""
    labels = sorted({k for counts in series.values() for k in counts},
                    key=lambda k: (-max(c.get(k, 0) for c in series.values()), k))[::-1]
    height = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(6, 0.5 * max(1, len(labels)) * max(1, len(series)) ** 0.5 + 1.4))
    for i, (name, counts) in enumerate(series.items()):
        ys = [j + (i - (len(series) - 1) / 2) * height for j in range(len(labels))]
        bars = ax.barh(ys, [counts.get(k, 0) for k in labels], height=height, label=name,
                       color=COLORS[i % len(COLORS)])
        ax.bar_label(bars, padding=3, fontsize=8)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("images")
    ax.set_title(title, fontsize=10)
    if series:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
