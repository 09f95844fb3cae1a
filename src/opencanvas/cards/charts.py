"""License composition chart for the data card."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from opencanvas.storage import atomic_write_bytes  # noqa: E402


def license_bar_chart(counts: dict[str, int], title: str, path: Path) -> Path:
    import io

    labels = sorted(counts, key=lambda k: -counts[k])
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(labels) + 1.2))
    bars = ax.barh(labels[::-1], [counts[k] for k in labels[::-1]], color="#4c72b0")
    ax.bar_label(bars, padding=3)
    ax.set_xlabel("images")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
