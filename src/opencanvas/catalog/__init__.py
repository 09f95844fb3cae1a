"""The license-aware catalog (CommonCatalog builder): ingest, subsets, stats."""
