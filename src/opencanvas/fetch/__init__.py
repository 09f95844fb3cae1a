"""Fetch stage: subset keys -> WebDataset image shards with a per-shard Parquet index.

Library API: `stage.fetch(ws, subset, ...) -> FetchStats`, `stats.fetch_stats(ws, subset) -> dict`,
and `decode.load_rgb(data, max_pixels)` for later stages. Nothing is re-exported here, so
`opencanvas --help` stays fast.
"""
