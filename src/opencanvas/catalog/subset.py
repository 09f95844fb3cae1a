"""`catalog subset`: the keys a license policy admits (CommonCatalog-C / -NC).

The subset file records the policy, its text and `catalog_hash`, a hash of the
finished catalog parts it was cut from, so a trained model can name its data.

For studies a subset may be a nested random fraction of the policy's images: a key
is kept when its position for the seed, `key_position(key, seed)` (from SHA-256 of
seed and key), is below the fraction, so with one seed the 10% subset lies inside
the 30% one, inside the whole policy. `max_rows` keeps the lowest positions, which
nests too. This is independent of the held-out split (`splits.key_fraction`), which
has no seed, so a study's fractions never move which keys are held out.
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path

from opencanvas.catalog.ingest import done_records
from opencanvas.catalog.query import EmptyResult, catalog_sources, copy_to_parquet
from opencanvas.catalog.schema import SUBSET_SCHEMA
from opencanvas.licenses import POLICIES, POLICY_TEXT
from opencanvas.workspace import Workspace


def catalog_hash(ws: Workspace) -> str:
    """SHA-256 over the content hashes of the finished catalog parts (names and order do not matter)."""
    hashes = sorted(h for s in catalog_sources(ws) for r in done_records(ws, s) for h in r["parts"].values())
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()


# A key's position for a seed: the first 8 bytes of SHA-256("<seed>\0<key>") as an unsigned integer.
# The same formula in SQL, so that the selection streams through DuckDB (tested equal to `key_position`).
_POSITION_SQL = "('0x' || left(sha256($seed || chr(0) || key), 16))::UBIGINT"


def key_position(key: str, seed: int) -> int:
    """The key's place in the seed's random order of the catalog, in [0, 2**64)."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")


def fraction_threshold(fraction: float) -> int:
    """Positions below this are in the `fraction` subset."""
    return min(2**64, math.floor(fraction * 2**64))


def check_fraction(fraction: float) -> None:
    if not isinstance(fraction, int | float) or not 0 < fraction <= 1:  # NaN fails both comparisons
        raise ValueError(f"fraction {fraction!r} must be in (0, 1], e.g. 0.1 for a 10% subset")


def make_subset(ws: Workspace, policy: str, name: str, *, fraction: float = 1.0, seed: int = 0,
                max_rows: int | None = None) -> Path:
    """Write subsets/<name>.parquet with the keys `policy` admits; returns its path.

    `fraction` < 1 keeps the keys whose position for `seed` falls in the first `fraction` of
    the range; `max_rows` keeps at most that many, the lowest positions first. Both nest.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    ws.subset_path(name)   # validates the name before the catalog query
    check_fraction(fraction)
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows {max_rows} must be at least 1")
    licenses = sorted(POLICIES[policy])
    # derivatives_ok too: ND never enters, whatever a policy list says.
    where = "list_contains($licenses, license_id) AND derivatives_ok"
    params: dict = {"licenses": licenses}
    if fraction < 1 or max_rows is not None:
        params["seed"] = str(seed)
        if fraction < 1:
            where += f" AND {_POSITION_SQL} < $threshold::UBIGINT"
            params["threshold"] = fraction_threshold(fraction)
        if max_rows is not None:
            where += f" QUALIFY row_number() OVER (ORDER BY {_POSITION_SQL}, key) <= {int(max_rows)}"
    metadata = {
        "policy": policy, "policy_text": POLICY_TEXT[policy], "licenses": ",".join(licenses),
        "fraction": repr(float(fraction)), "seed": str(seed), "max_rows": "" if max_rows is None else str(max_rows),
        "selection": "all images the policy admits" if fraction == 1 and max_rows is None else
        "keys whose sha256('<seed>\\0<key>')[:8] < fraction * 2^64, lowest first up to max_rows",
        "catalog_hash": catalog_hash(ws), "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path = ws.subset_path(name)
    try:  # streamed from DuckDB to the file in batches: a 10^8-row subset is never held whole
        copy_to_parquet(ws, f"SELECT key, source, license_id FROM {{catalog}} WHERE {where} ORDER BY key", path,
                        SUBSET_SCHEMA, params=params, metadata=metadata)
    except EmptyResult:
        hint = (f"fraction {fraction} of it is empty; raise --fraction" if fraction < 1 else
                "ingest a source first (`opencanvas catalog ingest SOURCE PATH`)")
        raise ValueError(f"policy {policy!r} selects no images: {hint}") from None
    return path
