"""Components on the Open Clip Art Library: autoencoder PSNR and CLIP recall@5 after N minutes.

    .venv/bin/python benchmarks/components.py --images 400 --minutes 2 --out /tmp/oc-bench

Builds a workspace from a deterministic sample of /usr/share/openclipart/png
(Debian openclipart-png; titles and keywords from the matching SVG's RDF,
the `metadata` caption baseline), trains the tiny autoencoder and the tiny CLIP
for the given minutes each, and prints a Markdown summary (held-out PSNR/SSIM
against a bicubic baseline, recall@5 against chance, images/s).
"""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
from PIL import Image

from opencanvas.captions import CAPTION_SCHEMA
from opencanvas.catalog.schema import CATALOG_SCHEMA, SUBSET_SCHEMA
from opencanvas.shards import INDEX_SCHEMA, ShardWriter, shard_name
from opencanvas.storage import atomic_write_parquet, sha256_bytes
from opencanvas.workspace import Workspace

ROOT = Path("/usr/share/openclipart")
MAX_PIXELS = 40_000_000
STORED_SIDE = 256          # what a fetch with --max-side 256 would keep
TITLE = re.compile(r"<dc:title>([^<]*)</dc:title>")
KEYWORD = re.compile(r"<rdf:li>([^<]*)</rdf:li>")
GENERIC = {"symbols", "clip art", "clipart", "media", "image", "png", "svg", "public domain"}


def svg_caption(png: Path) -> str:
    """'<title>, <up to 4 keywords>' from the SVG beside the PNG (file name words as a fallback)."""
    svg = ROOT / "svg" / png.relative_to(ROOT / "png").with_suffix(".svg")
    text = svg.read_text(errors="ignore") if svg.exists() else ""
    titles = TITLE.findall(text)
    title = titles[0].strip() if titles and titles[0].strip() else re.sub(r"[_\d]+", " ", png.stem).strip()
    keywords = [k.strip().lower() for k in KEYWORD.findall(text)
                if k.strip() and k.strip().lower() not in GENERIC and k.strip().lower() not in title.lower()]
    return ", ".join([title] + keywords[:4])


def build_workspace(ws: Workspace, n: int, seed: int, subset: str = "clipart", shard_size: int = 100) -> int:
    """Catalog rows, subset, image shards and metadata captions for a sample of `n` PNGs."""
    pngs = sorted((ROOT / "png").rglob("*.png"))
    random.Random(seed).shuffle(pngs)
    rows, images, captions = [], [], []
    for png in pngs:
        if len(rows) == n:
            break
        with Image.open(png) as img:
            if img.width * img.height > MAX_PIXELS or min(img.size) < 64:
                continue
            img.thumbnail((STORED_SIDE, STORED_SIDE))
            buf = io.BytesIO()
            img.save(buf, format="PNG")
        key_id = png.relative_to(ROOT / "png").with_suffix("").as_posix()
        rows.append({"key": f"openclipart:{key_id}", "source": "openclipart", "source_id": key_id,
                     "title": png.stem, "description": "", "tags": [], "category": key_id.split("/")[0],
                     "creator": "", "creator_url": "", "landing_url": "", "download_url": None,
                     "local_path": str(png), "license_id": "pdm", "license_version": "",
                     "license_url": "https://creativecommons.org/publicdomain/mark/1.0/",
                     "license_origin": "collection", "commercial_ok": True, "derivatives_ok": True,
                     "share_alike": False, "attribution_required": False, "width": None, "height": None,
                     "extra": "{}"})
        images.append(buf.getvalue())
        captions.append(svg_caption(png))
    atomic_write_parquet(ws.source_dir("openclipart") / "part-00000.parquet",
                         pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))
    atomic_write_parquet(ws.subset_path(subset), pa.Table.from_pylist(
        [{"key": r["key"], "source": "openclipart", "license_id": "pdm"} for r in rows], schema=SUBSET_SCHEMA),
        metadata={"policy": "commercial", "catalog_hash": "benchmark", "policy_text": "benchmark sample"})
    now = datetime.now(UTC)
    for s in range(0, len(rows), shard_size):
        tar = ws.images_dir(subset) / f"{shard_name(s // shard_size)}.tar"
        writer, index, caps = ShardWriter(tar), [], []
        for row, data, caption in zip(rows[s:s + shard_size], images[s:s + shard_size], captions[s:s + shard_size]):
            writer.add(row["key"], data, "png", row)
            w, h = Image.open(io.BytesIO(data)).size
            index.append({"key": row["key"], "status": "ok", "reason": "", "sha256": sha256_bytes(data),
                          "phash": "", "width": w, "height": h, "original_width": w, "original_height": h,
                          "bytes": len(data), "fetched_at": now})
            caps.append({"key": row["key"], "caption": caption, "captioner": "metadata", "model_id": "",
                         "model_revision": "", "prompt": "", "generation": "{}", "preprocessing": "",
                         "flagged": "", "created_at": now})
        writer.close()
        atomic_write_parquet(tar.with_suffix(".parquet"), pa.Table.from_pylist(index, schema=INDEX_SCHEMA))
        atomic_write_parquet(ws.captions_dir("metadata") / f"part-{s // shard_size:05d}.parquet",
                             pa.Table.from_pylist(caps, schema=CAPTION_SCHEMA))
    return len(rows)


def main() -> None:
    from opencanvas.components.autoencoder import train_autoencoder
    from opencanvas.components.clip import train_clip

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="PNGs sampled from the library")
    parser.add_argument("--minutes", type=float, default=2.0, help="training minutes per component")
    parser.add_argument("--resolution", type=int, default=64, help="autoencoder resolution (px)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/opencanvas-bench-components"), help="workspace")
    parser.add_argument("--seed", type=int, default=0, help="sample seed")
    args = parser.parse_args()
    if not (ROOT / "png").is_dir():
        raise SystemExit("needs the Debian packages openclipart-png and openclipart-svg")
    ws = Workspace.open(args.out)
    t0 = time.monotonic()
    if ws.subset_path("clipart").exists():  # reuse a workspace built by an earlier run
        import pyarrow.parquet as pq

        n = pq.read_metadata(ws.subset_path("clipart")).num_rows
    else:
        n = build_workspace(ws, args.images, args.seed)
    build_s = time.monotonic() - t0
    ae = train_autoencoder(ws, "clipart", f"ae-{args.minutes:g}m", "tiny", args.resolution, minutes=args.minutes)
    clip = train_clip(ws, "clipart", "metadata", f"clip-{args.minutes:g}m", "tiny", minutes=args.minutes)
    result = {"images": n, "build_seconds": round(build_s, 1), "autoencoder": ae, "clip": clip,
              "ae_images_per_s": ae["images_seen"] / max(ae["train_seconds"], 1e-9),
              "clip_images_per_s": clip["images_seen"] / max(clip["train_seconds"], 1e-9)}
    print(json.dumps(result, indent=1, default=str))
    print(f"\n| component | minutes | steps | images seen | images/s | held-out result |\n|---|---|---|---|---|---|\n"
          f"| autoencoder tiny {args.resolution} px | {args.minutes:g} | {ae['steps']} | {ae['images_seen']} | "
          f"{result['ae_images_per_s']:.1f} | PSNR {ae['heldout_psnr']:.2f} dB (bicubic x{ae['downscale']} "
          f"{ae['heldout_bicubic_psnr']:.2f}), SSIM {ae['heldout_ssim']:.3f} |\n"
          f"| CLIP tiny 64 px | {args.minutes:g} | {clip['steps']} | {clip['images_seen']} | "
          f"{result['clip_images_per_s']:.1f} | recall@5 i→t {clip['image_to_text_recall@5']:.3f}, t→i "
          f"{clip['text_to_image_recall@5']:.3f} (chance {clip['chance_recall@5']:.3f}); CLIP score "
          f"{clip['clip_score_matching']:.1f} matching vs {clip['clip_score_non_matching']:.1f} non-matching |")


if __name__ == "__main__":
    main()
