"""`catalog subset`: the keys a license policy admits (CommonCatalog-C / -NC).

The subset file records the policy, its text and `catalog_hash`, a hash of the
finished catalog parts it was cut from, so a trained model can name its data.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from pathlib import Path

from opencanvas.catalog.ingest import done_records
from opencanvas.catalog.query import catalog_sources, query
from opencanvas.catalog.schema import SUBSET_SCHEMA
from opencanvas.storage import atomic_write_parquet
from opencanvas.workspace import Workspace

COMMERCIAL = frozenset({"cc0", "pdm", "cc-by", "cc-by-sa"})
POLICIES: dict[str, frozenset[str]] = {
    "commercial": COMMERCIAL,
    "noncommercial": COMMERCIAL | {"cc-by-nc", "cc-by-nc-sa"},
}
POLICY_TEXT = {
    "commercial": "CommonCatalog-C: CC0, Public Domain Mark, CC BY and CC BY-SA images; commercial use allowed, "
                  "attribution owed for BY licenses, BY-SA terms apply to adaptations. ND and unknown licenses excluded.",
    "noncommercial": "CommonCatalog-NC: the commercial set plus CC BY-NC and CC BY-NC-SA images; non-commercial "
                     "use only, attribution owed, BY-NC-SA terms apply to adaptations. ND and unknown licenses excluded.",
}


def catalog_hash(ws: Workspace) -> str:
    """SHA-256 over the content hashes of the finished catalog parts (names and order do not matter)."""
    hashes = sorted(h for s in catalog_sources(ws) for r in done_records(ws, s) for h in r["parts"].values())
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


def make_subset(ws: Workspace, policy: str, name: str) -> Path:
    """Write subsets/<name>.parquet with the keys `policy` admits; returns its path."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    ws.subset_path(name)   # validates the name before the catalog query
    licenses = sorted(POLICIES[policy])
    # derivatives_ok too: ND never enters, whatever a policy list says.
    rows = query(ws, "SELECT key, source, license_id FROM {catalog} "
                     "WHERE list_contains($licenses, license_id) AND derivatives_ok ORDER BY key",
                 params={"licenses": licenses})
    if rows.num_rows == 0:
        raise ValueError(f"policy {policy!r} selects no images: ingest a source first "
                         "(`opencanvas catalog ingest SOURCE PATH`)")
    path = ws.subset_path(name)
    atomic_write_parquet(path, rows.cast(SUBSET_SCHEMA), metadata={
        "policy": policy, "policy_text": POLICY_TEXT[policy], "licenses": ",".join(licenses),
        "catalog_hash": catalog_hash(ws), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    return path
