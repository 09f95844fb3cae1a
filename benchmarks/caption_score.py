"""`caption score` throughput: captions/s end to end (shards -> decode -> tiny CLIP -> Parquet) on CPU.

Goal (issue 14): >= 500 captions/s on 2 cores with the tiny CLIP (32 px ViT, 16-d projection).
Images are the test factory's shape PNGs at --size px; one caption per image.

    OMP_NUM_THREADS=2 python benchmarks/caption_score.py --images 4000 --size 64 --batch-sizes 64 256
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--size", type=int, default=64, help="Side of the stored shape images, px.")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--json", type=Path, help="Also write the rows here.")
    args = parser.parse_args()

    import torch

    from opencanvas.caption_quality.score import score_captions
    from opencanvas.components.loading import load_clip_evaluator
    from opencanvas.sample.tiny import write_tiny_clip
    from opencanvas.workspace import Workspace

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.factories import make_captions, make_image_subset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        make_image_subset(ws, n=args.images, size=args.size, shard_size=max(1, args.images // 4))
        make_captions(ws, "shapes", "metadata")
        clip = load_clip_evaluator(None, str(write_tiny_clip(Path(tmp) / "clip")))
        score_captions(ws, "shapes", "metadata", clip, batch_size=64)  # warm-up (page cache, first calls)
        for b in args.batch_sizes:
            stats = score_captions(ws, "shapes", "metadata", clip, batch_size=b)
            rows.append({"batch_size": b, "captions": stats.captions, "seconds": round(stats.seconds, 2),
                         "captions_per_s": round(stats.captions_per_s, 1), "threads": torch.get_num_threads()})
    print("| batch | captions | seconds | captions/s | torch threads |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['captions']} | {r['seconds']} | {r['captions_per_s']} | {r['threads']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
