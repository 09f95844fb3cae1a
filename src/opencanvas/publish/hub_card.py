"""What the Hub's README YAML header says: the license of a mix, the size category, the header itself."""

from __future__ import annotations

from collections import Counter
from typing import Any

# Hub license ids for the catalog's licenses, by version (https://huggingface.co/docs/hub/repositories-licenses).
HUB_LICENSES = {
    ("cc0", "1.0"): "cc0-1.0", ("cc-by", "2.0"): "cc-by-2.0", ("cc-by", "2.5"): "cc-by-2.5",
    ("cc-by", "3.0"): "cc-by-3.0", ("cc-by", "4.0"): "cc-by-4.0", ("cc-by-sa", "3.0"): "cc-by-sa-3.0",
    ("cc-by-sa", "4.0"): "cc-by-sa-4.0", ("cc-by-nc", "2.0"): "cc-by-nc-2.0", ("cc-by-nc", "3.0"): "cc-by-nc-3.0",
    ("cc-by-nc", "4.0"): "cc-by-nc-4.0", ("cc-by-nc-sa", "2.0"): "cc-by-nc-sa-2.0",
    ("cc-by-nc-sa", "3.0"): "cc-by-nc-sa-3.0", ("cc-by-nc-sa", "4.0"): "cc-by-nc-sa-4.0",
}
# Obligations of each license; one license is "most restrictive" in a set when it owes everything the
# others owe. Share-alike binds to its own license, so two different SA licenses never merge into one.
OBLIGATIONS = {"cc0": set(), "pdm": set(), "cc-by": {"by"}, "cc-by-sa": {"by", "sa"}, "cc-by-nc": {"by", "nc"},
               "cc-by-nc-sa": {"by", "nc", "sa"}}
ND_LICENSES = frozenset({"cc-by-nd", "cc-by-nc-nd"})
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(n: int) -> str:
    return next((label for limit, label in SIZE_CATEGORIES if n < limit), "n>1T")


def hub_license(mix: Counter[tuple[str, str]]) -> tuple[str, str | None]:
    """(Hub license id, explanation when it is `other`) for images licensed as `mix` ((id, version) -> count)."""
    ids = {lid for lid, _ in mix}
    if ids and ids <= set(OBLIGATIONS):
        top = max(ids, key=lambda lid: (len(OBLIGATIONS[lid]), lid))
        covers = all(OBLIGATIONS[lid] <= OBLIGATIONS[top] for lid in ids)
        one_sa = len({lid for lid in ids if "sa" in OBLIGATIONS[lid]}) <= 1
        versions = sorted({v for lid, v in mix if lid == top})
        if covers and one_sa and len(versions) == 1 and (top, versions[0]) in HUB_LICENSES:
            return HUB_LICENSES[(top, versions[0])], None
    explained = ", ".join(f"{lid} {v}".strip() + f": {n}" for (lid, v), n in sorted(mix.items()))
    return "other", f"a mix of licenses, each image under its own (see the license_id column): {explained}"


def header_fields(license_id: str, explanation: str | None) -> dict[str, Any]:
    return {"license": license_id} | ({"license_name": "mixed-open-licenses", "license_details": explanation}
                                      if explanation else {})
