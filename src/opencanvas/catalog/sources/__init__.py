"""Source adapters: each turns one real source format into catalog rows.

`ADAPTERS` maps a source name (the `catalog ingest SOURCE` argument and the
catalog/<source>/ folder) to its adapter.
"""

from __future__ import annotations

from opencanvas.catalog.sources import (
    commoncatalog,
    folder,
    gpic,
    openclipart,
    openverse,
    tables,
    wikimedia,
    yfcc100m,
)
from opencanvas.catalog.sources.base import InputFormatError, InputUnit, SourceAdapter

ADAPTERS: dict[str, SourceAdapter] = {
    a.name: a for a in (openclipart.ADAPTER, yfcc100m.ADAPTER, commoncatalog.ADAPTER, openverse.ADAPTER,
                        wikimedia.ADAPTER, folder.ADAPTER, gpic.ADAPTER, tables.PD12M, tables.MEGALITH,
                        tables.TABLE)
}

__all__ = ["ADAPTERS", "InputFormatError", "InputUnit", "SourceAdapter"]
