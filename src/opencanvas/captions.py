"""Caption tables, captions/<captioner>/part-*.parquet (architecture.md): their schema and reader.

Foundation layer: stages before and after the caption stage read captions through here.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from opencanvas.storage import read_parquet_files
from opencanvas.workspace import Workspace

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


def read_captions(ws: Workspace, captioner: str, keys: list[str] | None = None) -> pa.Table:
    """All rows of captions/<captioner>/ (CAPTION_SCHEMA), optionally only `keys`."""
    table = read_parquet_files(ws.captions_dir(captioner).glob("part-*.parquet"), CAPTION_SCHEMA)
    if keys is not None:
        table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(list(keys), pa.string())))
    return table
