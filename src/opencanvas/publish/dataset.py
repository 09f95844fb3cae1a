"""`opencanvas publish dataset`: a subset as a Hub dataset folder (Parquet shards + README with YAML).

    README.md                                   YAML header (license, task_categories, configs, size) + data card
    data/train-NNNNN-of-MMMMM.parquet           one row per image: key, url, size, license, attribution,
                                                one caption column per captioner (+ its provenance as JSON)

With images, each shard holds the fetched bytes of one image shard under an `image` column that the
`datasets` library reads as an Image feature; without, rows point at the source URLs.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from opencanvas.publish.hub_card import ND_LICENSES, header_fields, hub_license, size_category
from opencanvas.storage import atomic_write_text, parquet_metadata
from opencanvas.workspace import Workspace

_VALUE_TYPES = {pa.string(): "string", pa.int32(): "int32", pa.int64(): "int64"}


def _features(schema: pa.Schema) -> dict[str, Any]:
    """The `huggingface` schema metadata that makes `datasets` read `image` as an Image feature."""
    return {f.name: {"_type": "Image"} if f.name == "image" else {"dtype": _VALUE_TYPES[f.type], "_type": "Value"}
            for f in schema}


def attribution_text(row: dict[str, Any]) -> str:
    """'"Title" by Creator (creator URL), CC BY 4.0 <license URL>, from <landing URL>' (CC BY 4.0 §3(a)(1))."""
    title = f'"{row["title"]}" ' if row.get("title") else "Untitled "
    creator = f"by {row['creator']}" + (f" ({row['creator_url']})" if row.get("creator_url") else "") \
        if row.get("creator") else "author not given"
    lic = f"{row['license_id'].upper().replace('CC-', 'CC ')} {row.get('license_version') or ''}".strip()
    return f"{title}{creator}, {lic} <{row.get('license_url') or ''}>, from {row.get('landing_url') or ''}"


def _caption_columns(ws: Workspace, captioners: list[str], keys: list[str]) -> dict[str, dict[str, tuple[str, str]]]:
    from opencanvas.captions import read_captions

    out = {}
    for name in captioners:
        rows = read_captions(ws, name, keys).to_pylist()
        if not rows:
            raise ValueError(f"no captions from captioner {name!r} for subset keys: run `opencanvas caption` first")
        out[name] = {r["key"]: (r["caption"], json.dumps(
            {k: r[k] for k in ("model_id", "model_revision", "prompt", "generation", "preprocessing")},
            sort_keys=True)) for r in rows}
    return out


def dataset_rows(ws: Workspace, subset: str, captioners: list[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One row per subset image (catalog facts, fetched size, captions); and the subset's metadata.

    ValueError for an ND subset: ND images may not be redistributed as training data."""
    from opencanvas.catalog.query import catalog_rows
    from opencanvas.shards import read_index

    path = ws.subset_path(subset)
    if not path.exists():
        raise ValueError(f"no subset {subset!r} under {path.parent}: make one with `opencanvas subset`")
    meta = parquet_metadata(path)
    keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
    catalog = catalog_rows(ws, keys).to_pylist()
    nd = sorted({r["license_id"] for r in catalog if r["license_id"] in ND_LICENSES})
    if nd or meta.get("policy") == "nd-eval":
        raise ValueError(f"subset {subset!r} holds no-derivatives images ({', '.join(nd) or 'policy nd-eval'}): ND "
                         "images may not be redistributed as training data; publish a commercial or "
                         "noncommercial subset")
    sizes: dict[str, tuple[int, int]] = {}
    if ws.images_dir(subset).is_dir():
        for r in read_index(ws.images_dir(subset)).to_pylist():
            if r["status"] == "ok":
                sizes[r["key"]] = (r["width"], r["height"])
    captions = _caption_columns(ws, captioners, keys)
    rows = []
    for r in catalog:
        width, height = sizes.get(r["key"], (r["width"], r["height"]))
        row = {"key": r["key"], "url": r["landing_url"], "download_url": r["download_url"], "width": width,
               "height": height, "license_id": r["license_id"], "license_version": r["license_version"],
               "license_url": r["license_url"], "creator": r["creator"], "attribution": attribution_text(r)}
        for name, by_key in captions.items():
            caption, provenance = by_key.get(r["key"], (None, None))
            row |= {f"caption_{name}": caption, f"caption_{name}_provenance": provenance}
        rows.append(row)
    return rows, meta


def _schema(captioners: list[str], with_images: bool) -> pa.Schema:
    fields = [pa.field(n, pa.string()) for n in ("key", "url", "download_url")]
    fields += [pa.field("width", pa.int32()), pa.field("height", pa.int32())]
    fields += [pa.field(n, pa.string()) for n in ("license_id", "license_version", "license_url", "creator",
                                                  "attribution")]
    for name in captioners:
        fields += [pa.field(f"caption_{name}", pa.string()), pa.field(f"caption_{name}_provenance", pa.string())]
    if with_images:
        fields.append(pa.field("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
    schema = pa.schema(fields)
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": _features(schema)}})})


def _image_groups(ws: Workspace, subset: str, rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows with their fetched image bytes, one group per image shard (images not fetched ok are left out)."""
    from opencanvas.shards import finished_shards, iter_shard

    by_key = {r["key"]: r for r in rows}
    groups = []
    for index in finished_shards(ws.images_dir(subset)):
        group = [by_key[img.key] | {"image": {"bytes": img.data, "path": f"{img.key.replace(':', '_')}.{img.ext}"}}
                 for img in iter_shard(index.with_suffix(".tar")) if img.key in by_key]
        if group:
            groups.append(group)
    if not groups:
        raise ValueError(f"subset {subset!r} has no fetched images: run `opencanvas fetch` or leave out --with-images")
    return groups


def publish_dataset(ws: Workspace, subset: str, captioners: list[str], out: Path, with_images: bool = False,
                    rows_per_shard: int = 10_000) -> Path:
    """Write the Hub dataset folder for `subset` at `out` (which must be new or empty); returns `out`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty: pass a new --out directory")
    rows, meta = dataset_rows(ws, subset, captioners)
    groups = _image_groups(ws, subset, rows) if with_images else \
        [rows[i:i + rows_per_shard] for i in range(0, len(rows), rows_per_shard)]
    schema = _schema(captioners, with_images)
    tmp = out.with_name(f".{out.name}.partial")  # the folder appears whole or not at all
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "data").mkdir(parents=True)
    for i, group in enumerate(groups):
        table = pa.Table.from_pylist(group, schema=schema)
        pq.write_table(table, tmp / "data" / f"train-{i:05d}-of-{len(groups):05d}.parquet", compression="zstd")
    published = [r for g in groups for r in g]
    atomic_write_text(tmp / "README.md", dataset_readme(subset, meta, published, captioners, with_images))
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return out


def dataset_readme(subset: str, meta: dict[str, str], rows: list[dict[str, Any]], captioners: list[str],
                   with_images: bool) -> str:
    from huggingface_hub import DatasetCardData

    mix = Counter((r["license_id"], r["license_version"] or "") for r in rows)
    license_id, explanation = hub_license(mix)
    card = DatasetCardData(**header_fields(license_id, explanation), task_categories=["text-to-image"],
                           size_categories=[size_category(len(rows))], pretty_name=f"OpenCanvas subset {subset}",
                           tags=["creative-commons", "opencanvas", "openly-licensed-data"],
                           configs=[{"config_name": "default",
                                     "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}])
    by_license = "\n".join(f"| {lid} | {v or '-'} | {n:,} |" for (lid, v), n in sorted(mix.items()))
    caption_cols = "\n".join(f"- `caption_{c}` (provenance in `caption_{c}_provenance`: model id, revision, prompt, "
                             "generation settings, preprocessing)" for c in captioners)
    return f"""---
{card.to_yaml()}
---

# OpenCanvas subset `{subset}`

{len(rows):,} openly licensed images chosen by the license policy **{meta.get('policy', 'unknown')}**:
{meta.get('policy_text', '')}

Catalog snapshot `{meta.get('catalog_hash', 'unknown')}`. {'Image bytes are included (`image`).' if with_images else
'Images are not included: `url` is the page to credit and `download_url` where the pixels are.'}

## Licenses

Every row keeps its own license (`license_id`, `license_version`, `license_url`) and the attribution it
requires (`attribution`: title, author, license and source, as CC BY 4.0 §3(a)(1) asks). The header's
license is the most restrictive license in the set, or `other` when the set mixes licenses that no single
license covers.

| license | version | images |
|---|---|---|
{by_license}

No-derivatives (ND) images are never published here: they may not be redistributed as training data.

## Columns

- `key` (`<source>:<source_id>`), `url`, `download_url`, `width`, `height`
- `license_id`, `license_version`, `license_url`, `creator`, `attribution`
{caption_cols}

## Takedowns

Authors can ask for removal; removed keys are tombstoned and never re-ingested (`opencanvas takedown`).

Made with OpenCanvas (`opencanvas publish dataset`).
"""
