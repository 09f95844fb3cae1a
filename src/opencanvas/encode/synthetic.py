"""Random latent sets in the real store format, for tests and benchmarks of training and loading.

They skip the models (no autoencoder or text encoder runs), so a training test
or the loader benchmark can have thousands of records in seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from opencanvas.encode.store import (
    FORMAT_VERSION,
    IMAGE_DIR,
    META_FILE,
    Bucket,
    BucketLatents,
    resolution_dirname,
    write_image_part,
    write_latent_part,
    write_null_text,
    write_text_part,
)
from opencanvas.storage import atomic_write_json
from opencanvas.workspace import Workspace


def write_random_latents(ws: Workspace, name: str, n: int, *, resolution: int = 256, channels: int = 4,
                         downscale: int = 8, text_len: int = 77, text_dim: int = 1024,
                         captioners: tuple[str, ...] = ("metadata",), shard_size: int = 1000,
                         buckets: tuple[Bucket, ...] | None = None, missing_every: int = 0,
                         seed: int = 0, text2_len: int = 0, text2_dim: int = 0, image_dim: int = 0) -> Path:
    """Write `n` random records as latents/<name>/ (one resolution); returns the directory.

    buckets: pixel sizes to spread records over round-robin (default: one RxR bucket).
    missing_every: every that-many-th record lacks its last captioner's caption (0: none missing).
    text2_len, text2_dim > 0: a second text encoder's arrays (and both pooled embeddings) as
    `encode --text-encoder A --text-encoder B` stores them; image_dim > 0: image embeddings.
    """
    root = ws.latents_dir(name)
    rng = np.random.default_rng(seed)
    buckets = buckets or ((resolution, resolution),)
    k = len(captioners)
    atomic_write_json(root / META_FILE, {
        "format_version": FORMAT_VERSION, "autoencoder": "synthetic", "text_encoder": "synthetic",
        "shift": [0.0] * channels, "scale": [1.0] * channels, "latent_channels": channels,
        "downscale": downscale, "text_len": text_len, "text_dim": text_dim, "text_layer": "penultimate",
        "captioners": list(captioners), "subset": "synthetic", "policy": "commercial",
        "catalog_hash": "synthetic", "resolutions": [resolution], "buckets": len(buckets) > 1,
        "autoencoder_provenance": {}, "text_encoder_provenance": {},
        "created_at": datetime.now(UTC).isoformat(),
        **({"text_encoders": ["synthetic", "synthetic-2"], "text2_len": text2_len, "text2_dim": text2_dim,
            "pooled_dims": [text_dim, text2_dim]} if text2_dim else {}),
        **({"image_embeddings": "synthetic-clip", "image_dim": image_dim} if image_dim else {}),
    })
    null = rng.standard_normal((text_len, text_dim)).astype(np.float16)
    second = {"text2": (text2_len, text2_dim), "mask2": (text2_len,), "pooled": (text_dim,), "pooled2": (text2_dim,)}
    null_extra = {name: (np.ones(shape, bool) if name == "mask2" else rng.standard_normal(shape).astype(np.float16))
                  for name, shape in second.items()} if text2_dim else {}
    write_null_text(root, null, np.ones(text_len, bool), null_extra)
    for shard, lo in enumerate(range(0, n, shard_size)):
        count = min(shard_size, n - lo)
        keys = [f"synthetic:{i:08d}" for i in range(lo, lo + count)]
        captions = [[f"caption {c} of {key}" for c in captioners] for key in keys]
        mask = np.zeros((count, k, text_len), bool)
        mask[:, :, : text_len // 2] = True  # half the tokens attended, as a padded prompt
        if missing_every:
            for row in range(count):
                if (lo + row) % missing_every == 0:
                    mask[row, -1] = False
                    captions[row][-1] = ""
        text = rng.standard_normal((count, k, text_len, text_dim), dtype=np.float32).astype(np.float16)
        part = f"shard-{shard:05d}"
        extra = {name: (np.broadcast_to(mask[:, :, :1], (count, k, *shape)).copy() if name == "mask2" else
                        rng.standard_normal((count, k, *shape), dtype=np.float32).astype(np.float16))
                 for name, shape in second.items()} if text2_dim else {}
        write_text_part(root / "text" / part, keys, captions, text, mask, {}, extra)
        if image_dim:
            image = rng.standard_normal((count, image_dim), dtype=np.float32)
            write_image_part(root / IMAGE_DIR / part, keys, image / np.linalg.norm(image, axis=1, keepdims=True), {})
        rows_of: dict[Bucket, list[int]] = {}
        for row in range(count):
            rows_of.setdefault(buckets[(lo + row) % len(buckets)], []).append(row)
        groups = {}
        for (bh, bw), rows in rows_of.items():
            shape = (len(rows), channels, bh // downscale, bw // downscale)
            groups[(bh, bw)] = BucketLatents([keys[r] for r in rows], rows,
                                             rng.standard_normal(shape, dtype=np.float32),
                                             rng.uniform(0.01, 0.1, shape))
        write_latent_part(root / resolution_dirname(resolution) / part, groups, {})
    return root
