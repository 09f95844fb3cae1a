"""The attribution list: every image the run used, with the credit its license asks for.

CC BY-family licenses require, for adapted material, the title (where given),
the author, the source, the license with a link, and an indication that it
was changed (CC BY 4.0 §3(a)(1)); training images are resized and cropped.
Public-domain and CC0 images need no credit; they are listed in
`attribution.csv` too (marked so), as a courtesy.

Both files stream from DuckDB (`records.UsedImages`), so they cost the same
memory at 25M images as at 25: `attribution.csv` is written batch by batch,
and `ATTRIBUTION.md` lists every credit line only up to `FULL_LIST_MAX`
images; beyond that it gives a summary and the top authors, and points to the
CSV. Every catalog field goes through `opencanvas.untrusted` first.
"""

from __future__ import annotations

import csv
from pathlib import Path

from opencanvas.cards.records import UsedImages
from opencanvas.storage import atomic_path, atomic_write_text
from opencanvas.untrusted import csv_cell, markdown_link, markdown_text, safe_url

MODIFICATION_NOTE = "resized and center-cropped for training"
CSV_FIELDS = ("key", "title", "creator", "creator_url", "landing_url", "license_id",
              "license_version", "license_url", "attribution_required", "use", "modification")
_URL_FIELDS = frozenset({"creator_url", "landing_url", "license_url"})
FULL_LIST_MAX = 2000       # credit lines in ATTRIBUTION.md; above this, a summary and the top authors
TOP_AUTHORS = 100
NO_AUTHOR = "(author not given)"

_AUTHOR_SQL = f"coalesce(nullif(trim(creator), ''), '{NO_AUTHOR}')"
_ORDER_SQL = f"lower({_AUTHOR_SQL}), {_AUTHOR_SQL}, lower(coalesce(title, '')), key"


def _license_label(license_id: str, version: str | None) -> str:
    label = (license_id or "unknown").upper().replace("CC-", "CC ")
    return f"{label} {version or ''}".strip()


def _csv_url(value: object) -> str:
    return csv_cell(safe_url(value) or "")


def write_attribution_csv(path: Path, images: UsedImages) -> int:
    """attribution.csv: one row per used image, streamed in credit order; returns the row count."""
    reader = images.batches(
        "SELECT key, title, creator, creator_url, landing_url, license_id, license_version, license_url, "
        "attribution_required, heldout "
        f"FROM used ORDER BY {_ORDER_SQL}")
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for batch in reader:
            # Column by column: one escaping pass per field, then rows (the hot loop at 10^7 images).
            # Only http(s) URLs are kept, here as in the Markdown (a spreadsheet makes links of them too).
            columns = [list(map(_csv_url if name in _URL_FIELDS else csv_cell, batch.column(name).to_pylist()))
                       for name in CSV_FIELDS[:8]]
            columns.append(["yes" if v else "no" for v in batch.column("attribution_required").to_pylist()])
            columns.append(["held out for evaluation" if v else "training"
                            for v in batch.column("heldout").to_pylist()])
            columns.append([MODIFICATION_NOTE] * batch.num_rows)
            writer.writerows(zip(*columns, strict=True))
            count += batch.num_rows
    return count


def _credit_lines(images: UsedImages) -> list[str]:
    """Per-author sections with one credit line per image (only called for at most FULL_LIST_MAX images)."""
    lines: list[str] = []
    author = None
    for batch in images.batches(
            f"SELECT {_AUTHOR_SQL} AS author, count(*) OVER (PARTITION BY {_AUTHOR_SQL}) AS n, "
            "first(creator_url) OVER (PARTITION BY " + _AUTHOR_SQL + f" ORDER BY {_ORDER_SQL}) AS author_url, "
            "title, landing_url, license_id, license_version, license_url FROM used "
            f"WHERE attribution_required ORDER BY {_ORDER_SQL}"):
        for r in batch.to_pylist():
            if r["author"] != author:
                if author is not None:
                    lines.append("")
                author = r["author"]
                lines += [f"## {markdown_link(author, r['author_url'])} ({r['n']})", ""]
            title = markdown_text(r["title"]) or "Untitled"
            source = markdown_link("source", r["landing_url"]) if safe_url(r["landing_url"]) else "source not given"
            lic = markdown_link(_license_label(r["license_id"], r["license_version"]), r["license_url"])
            lines.append(f"- \"{title}\" by {markdown_text(author)}, {source}, {lic}; {MODIFICATION_NOTE}.")
    return lines + ([""] if author is not None else [])


def _top_authors(images: UsedImages, authors: int) -> list[str]:
    rows = images.rows(
        f"SELECT {_AUTHOR_SQL} AS author, min(creator_url), count(*) AS n, string_agg(DISTINCT license_id, ', ' "
        f"ORDER BY license_id) FROM used WHERE attribution_required GROUP BY 1 ORDER BY n DESC, lower(author), "
        f"author LIMIT {TOP_AUTHORS}")
    lines = [f"## The {len(rows)} authors with the most images", "",
             "| author | images | licenses |", "|---|---|---|"]
    lines += [f"| {markdown_link(a, url)} | {n:,} | {markdown_text(lic)} |" for a, url, n, lic in rows]
    if authors > len(rows):
        lines += ["", f"... and {authors - len(rows):,} more authors: every image, with its title, author, "
                  "source and license, is in `attribution.csv`."]
    return lines + [""]


def write_attribution(cards_dir: Path, images: UsedImages) -> dict[str, int]:
    """Credit every image the run used: trained on, or held out as an evaluation reference."""
    listed = write_attribution_csv(cards_dir / "attribution.csv", images)
    used, heldout, required, authors = images.rows(
        "SELECT count(*), count(*) FILTER (WHERE heldout), count(*) FILTER (WHERE attribution_required), "
        f"count(DISTINCT {_AUTHOR_SQL}) FILTER (WHERE attribution_required) FROM used")[0]
    no_attribution = used - required
    lines = [
        "# Attribution",
        "",
        f"This model used {used:,} images: {used - heldout:,} for training and {heldout:,} held out as "
        f"evaluation references. {required:,} of them are under licenses that require attribution"
        + (", credited below, grouped by author" if 0 < required <= FULL_LIST_MAX else "")
        + f". {no_attribution:,} are public domain or CC0 and need no attribution (the data card counts them by "
        "license).",
        "",
    ]
    if required:
        lines += [f"Every image credited here was {MODIFICATION_NOTE}. `attribution.csv` lists all {listed:,} "
                  "images, public-domain ones included (column `attribution_required`), with the same fields.", ""]
    else:
        lines += [f"No image here needs attribution, so none is listed below. `attribution.csv` lists all "
                  f"{listed:,} images with their authors, as a courtesy; each was {MODIFICATION_NOTE}.", ""]
    if required > FULL_LIST_MAX:
        lines += _top_authors(images, authors)
    elif required:
        lines += _credit_lines(images)
    atomic_write_text(cards_dir / "ATTRIBUTION.md", "\n".join(lines))
    return {"attribution_required": int(required), "no_attribution_needed": int(no_attribution),
            "authors": int(authors), "listed": listed}
