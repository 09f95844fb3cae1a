"""`caption select`: a caption table keeping each image's best-scoring caption among several captioners.

Rows are the chosen captioner's own rows (CAPTION_SCHEMA), so each row's `captioner` names its source;
captions/<name>/selection.json records the sources, the CLIP and how many captions each gave.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from opencanvas.caption_quality.score import read_scores
from opencanvas.captions import CAPTION_SCHEMA, read_captions
from opencanvas.shards import read_index
from opencanvas.storage import atomic_write_json, atomic_write_parquet
from opencanvas.workspace import Workspace


def select_captions(ws: Workspace, subset: str, sources: Sequence[str], name: str) -> dict[str, Any]:
    """Write captions/<name>/part-NNNNN.parquet (one per shard of `subset`); return the selection record."""
    sources = list(dict.fromkeys(sources))
    if len(sources) < 2:
        raise ValueError(f"--from needs two or more captioners to choose between, got {sources}")
    if name in sources:
        raise ValueError(f"--name {name!r} is one of the sources: pick a new caption table name")
    out_dir = ws.captions_dir(name)  # a bad or reserved name fails here, before any work
    scored = {src: read_scores(ws, subset, src) for src in sources}
    clips = {clip for _, clip in scored.values()}
    if len(clips) != 1:
        raise ValueError(f"the sources were scored with different CLIPs ({', '.join(sorted(clips))}): re-run "
                         "`opencanvas caption score` for them with one --clip")
    best: dict[str, tuple[float, str]] = {}  # key -> (score, source); ties go to the first source named
    for src in sources:
        table = scored[src][0]
        for key, score in zip(table.column("key").to_pylist(), table.column("clip_score").to_pylist()):
            if score is not None and (key not in best or score > best[key][0]):
                best[key] = (score, src)
    index = read_index(ws.images_dir(subset))
    index = index.filter(pc.equal(index.column("status"), "ok"))
    rows_by_source = {src: read_captions(ws, src, keys=[k for k, (_, s) in best.items() if s == src])
                      for src in sources}
    chosen = pa.concat_tables([t.select(CAPTION_SCHEMA.names).cast(CAPTION_SCHEMA) for t in rows_by_source.values()])
    shard_of = dict(zip(index.column("key").to_pylist(), index.column("shard").to_pylist()))
    shards = chosen.column("key").to_pylist()
    shard_column = pa.array([shard_of.get(k, "") for k in shards], pa.string())
    for shard in sorted(set(index.column("shard").to_pylist())):
        part = chosen.filter(pc.equal(shard_column, shard)).sort_by("key")
        atomic_write_parquet(out_dir / f"part-{shard.split('-', 1)[1]}.parquet", part)
    counts = Counter(s for _, s in best.values())
    record = {"subset": subset, "name": name, "sources": sources, "clip": clips.pop(), "images": len(best),
              "chosen": {src: counts.get(src, 0) for src in sources}}
    atomic_write_json(out_dir / "selection.json", record)
    return record
