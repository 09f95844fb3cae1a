"""Arrow schema of caption tables: captions/<captioner>/part-*.parquet (architecture.md)."""

from __future__ import annotations

import pyarrow as pa

CAPTION_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("caption", pa.string()),
    ("captioner", pa.string()),        # name, e.g. "blip2", "metadata"
    ("model_id", pa.string()),         # hub id or local path ("" for metadata)
    ("model_revision", pa.string()),   # hub revision, or "sha256:<weights hash>"
    ("prompt", pa.string()),
    ("generation", pa.string()),       # JSON of generation params
    ("preprocessing", pa.string()),    # e.g. "center-crop 512"
    ("flagged", pa.string()),          # "" when fine, else e.g. "empty", "repetitive"
    ("created_at", pa.timestamp("us", tz="UTC")),
])
