"""`catalog stats`: what the catalog holds and what it turned away.

Counts by source, license, origin and policy; quarantine by reason; and per
source the check that nothing was lost: records read == ingested + quarantined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from opencanvas.catalog.ingest import done_records
from opencanvas.catalog.query import catalog_sources, query
from opencanvas.catalog.subset import catalog_hash
from opencanvas.licenses import LICENSE_IDS, POLICIES
from opencanvas.storage import atomic_write_figure
from opencanvas.workspace import Workspace

CHART_NAME = "license_composition.png"


def _nested(table, outer: str, inner: str) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for row in table.to_pylist():
        out.setdefault(row[outer], {})[row[inner]] = row["n"]
    return out


def catalog_stats(ws: Workspace) -> dict[str, Any]:
    """JSON-able counts of the finished catalog (see module doc)."""
    by_license = _nested(query(ws, "SELECT source, license_id, count(*) AS n FROM {catalog} GROUP BY ALL ORDER BY ALL"),
                         "source", "license_id")
    by_reason = _nested(query(ws, "SELECT source, reason, count(*) AS n FROM {quarantine} GROUP BY ALL ORDER BY ALL"),
                        "source", "reason")
    origins = {r["license_origin"]: r["n"] for r in query(
        ws, "SELECT license_origin, count(*) AS n FROM {catalog} GROUP BY ALL ORDER BY ALL").to_pylist()}
    sources: dict[str, dict[str, Any]] = {}
    for source in catalog_sources(ws):
        records = done_records(ws, source)
        read = sum(r["read"] for r in records)
        ingested = sum(by_license.get(source, {}).values())
        quarantined = sum(by_reason.get(source, {}).values())
        sources[source] = {"inputs": len(records), "read": read, "ingested": ingested, "quarantined": quarantined,
                           "balanced": read == ingested + quarantined}
    licenses = {lic: sum(per.get(lic, 0) for per in by_license.values()) for lic in LICENSE_IDS}
    policies = {name: sum(licenses[lic] for lic in allowed if lic in licenses) for name, allowed in POLICIES.items()}
    quarantine: dict[str, int] = {}
    for per in by_reason.values():
        for reason, n in per.items():
            quarantine[reason] = quarantine.get(reason, 0) + n
    return {
        "total": {k: sum(s[k] for s in sources.values()) for k in ("read", "ingested", "quarantined")}
        | {"balanced": all(s["balanced"] for s in sources.values())},
        "sources": sources,
        "licenses": {k: v for k, v in licenses.items() if v},
        "licenses_by_source": by_license,
        "license_origin": origins,
        "policies": policies,
        "quarantine": dict(sorted(quarantine.items())),
        "quarantine_by_source": by_reason,
        "catalog_hash": catalog_hash(ws),
    }


def write_license_chart(stats: dict[str, Any], path: Path) -> Path:
    """One stacked bar per source: the share of its images under each license (counts in the labels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_source = stats["licenses_by_source"]
    sources = sorted(per_source)
    totals = [sum(per_source[s].values()) for s in sources]
    labels = [f"{s}\n{n:,} images" for s, n in zip(sources, totals, strict=True)] or ["(empty catalog)"]
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.6 * max(1, len(sources))))
    left = [0.0] * len(labels)
    colors = plt.get_cmap("tab10")
    for i, lic in enumerate(LICENSE_IDS):
        shares = [100 * per_source[s].get(lic, 0) / n for s, n in zip(sources, totals, strict=True)]
        if any(shares):
            ax.barh(labels, shares, left=left, label=f"{lic} ({stats['licenses'].get(lic, 0):,})", color=colors(i))
            left = [a + b for a, b in zip(left, shares, strict=True)]
    total = stats["total"]
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of the source's images")
    ax.set_title(f"License composition: {total['ingested']:,} images, {total['quarantined']:,} quarantined")
    if sources:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title="license (images)")
    fig.tight_layout()
    return atomic_write_figure(fig, path)
