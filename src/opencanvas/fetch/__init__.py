"""Fetch stage: subset keys -> WebDataset image shards with a per-shard Parquet index.

Library API: `fetch(ws, subset, ...) -> FetchStats`, `fetch_stats(ws, subset) -> dict`,
and `decode.load_rgb(data, max_pixels)` for later stages. Heavy imports stay lazy so
`opencanvas --help` is fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opencanvas.fetch.stage import FetchStats, fetch
    from opencanvas.fetch.stats import fetch_stats

__all__ = ["FetchStats", "fetch", "fetch_stats"]


def __getattr__(name: str) -> Any:
    if name in ("fetch", "FetchStats"):
        from opencanvas.fetch import stage

        return getattr(stage, name)
    if name == "fetch_stats":
        from opencanvas.fetch.stats import fetch_stats

        return fetch_stats
    raise AttributeError(name)
