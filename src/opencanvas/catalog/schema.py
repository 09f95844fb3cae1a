"""Arrow schemas of the catalog, its quarantine and subsets (see architecture.md)."""

from __future__ import annotations

import pyarrow as pa

from opencanvas.licenses import LICENSE_IDS  # noqa: F401 (re-exported)

CATALOG_SCHEMA = pa.schema([
    ("key", pa.string()),              # "<source>:<source_id>", stable across re-ingests
    ("source", pa.string()),
    ("source_id", pa.string()),
    ("title", pa.string()),
    ("description", pa.string()),
    ("tags", pa.list_(pa.string())),
    ("category", pa.string()),         # e.g. the Open Clip Art top-level folder
    ("creator", pa.string()),
    ("creator_url", pa.string()),
    ("landing_url", pa.string()),
    ("download_url", pa.string()),
    ("local_path", pa.string()),
    ("license_id", pa.string()),
    ("license_version", pa.string()),
    ("license_url", pa.string()),
    ("license_origin", pa.string()),   # "item" | "collection"
    ("commercial_ok", pa.bool_()),
    ("derivatives_ok", pa.bool_()),
    ("share_alike", pa.bool_()),
    ("attribution_required", pa.bool_()),
    ("width", pa.int64()),
    ("height", pa.int64()),
    ("extra", pa.string()),            # JSON: source-specific fields kept verbatim (e.g. blip2_caption)
])

QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("input_file", pa.string()),
    ("record_no", pa.int64()),         # line / row / item number within the input file
    ("raw", pa.string()),              # the raw record, as text (JSON for structured inputs)
    ("reason", pa.string()),           # short machine-readable reason, e.g. "license:other"
    ("detail", pa.string()),           # human explanation
])

# subsets/<name>.parquet: the chosen keys with what a card needs without a join;
# file metadata holds policy, policy_text, catalog_hash, created_at.
SUBSET_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("source", pa.string()),
    ("license_id", pa.string()),
])
