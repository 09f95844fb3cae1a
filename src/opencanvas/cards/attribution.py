"""The attribution list: every training image whose license requires credit.

CC BY-family licenses require, for adapted material, the title (where given),
the author, the source, the license with a link, and an indication that it
was changed (CC BY 4.0 §3(a)(1)); training images are resized and cropped.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from opencanvas.storage import atomic_write_text

MODIFICATION_NOTE = "resized and center-cropped for training"
CSV_FIELDS = ("key", "title", "creator", "creator_url", "landing_url", "license_id",
              "license_version", "license_url", "modification")


def attribution_rows(catalog_rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """(rows needing attribution, count of items needing none: public domain / CC0)."""
    rows, no_attribution = [], 0
    for r in catalog_rows:
        if not r.get("attribution_required"):
            no_attribution += 1
            continue
        rows.append({f: r.get(f) or "" for f in CSV_FIELDS if f != "modification"}
                    | {"modification": MODIFICATION_NOTE})
    rows.sort(key=lambda r: (r["creator"].lower(), r["title"].lower(), r["key"]))
    return rows, no_attribution


def _license_label(r: dict[str, Any]) -> str:
    label = r["license_id"].upper().replace("CC-", "CC ").replace("-", "-")
    return f"{label} {r['license_version']}".strip()


def write_attribution(cards_dir: Path, catalog_rows: list[dict[str, Any]], heldout: int = 0) -> dict[str, int]:
    """Credit every image the run used: trained on, or held out as an evaluation reference."""
    rows, no_attribution = attribution_rows(catalog_rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(cards_dir / "attribution.csv", buf.getvalue())

    by_author: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_author[r["creator"] or "(author not given)"].append(r)
    lines = [
        "# Attribution",
        "",
        f"This model used {len(catalog_rows)} images: {len(catalog_rows) - heldout} for training and "
        f"{heldout} held out as evaluation references. "
        f"{len(rows)} of them are under licenses that require attribution and are credited below, "
        f"grouped by author. {no_attribution} are public domain or CC0 and need no attribution "
        "(the data card counts them by license).",
        "",
        f"Every image listed was {MODIFICATION_NOTE}. The same list is in `attribution.csv`.",
        "",
    ]
    for author in sorted(by_author, key=str.lower):
        items = by_author[author]
        url = items[0]["creator_url"]
        lines += [f"## {f'[{author}]({url})' if url else author} ({len(items)})", ""]
        for r in items:
            title = r["title"] or "Untitled"
            source = f"[source]({r['landing_url']})" if r["landing_url"] else "source not given"
            lic = f"[{_license_label(r)}]({r['license_url']})" if r["license_url"] else _license_label(r)
            lines.append(f"- \"{title}\" by {author}, {source}, {lic}; {MODIFICATION_NOTE}.")
        lines.append("")
    atomic_write_text(cards_dir / "ATTRIBUTION.md", "\n".join(lines))
    return {"attribution_required": len(rows), "no_attribution_needed": no_attribution,
            "authors": len(by_author)}
