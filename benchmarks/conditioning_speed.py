"""Training step time by conditioning mode: one caption vs multi-caption vs class, same UNet, side by side.

Each step is what `UNetTask.gradients` does per micro-batch plus the optimizer step: a latent
batch from the store (`LatentStream`, which gathers one caption slot, or all K for multi-caption),
`training_inputs` (posterior sample, dropout, timesteps, noise), the loss forward and backward
through `DiffusionLoss`, and AdamW. The modes take turns step by step (ABCABC...), so load on a
shared machine hits them alike; the median step time of each is reported with its ratio to text.

    python benchmarks/conditioning_speed.py --preset tiny --resolution 128 --batch 8 --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.encode.synthetic import write_random_latents
from opencanvas.train.config import conditioned_unet
from opencanvas.train.data import LatentStream, step_generator, training_inputs
from opencanvas.train.loop import DiffusionLoss
from opencanvas.train.presets import build_unet, get_preset
from opencanvas.workspace import Workspace

MODES = ("text", "multi-caption", "class")


class ModeStep:
    """One mode's UNet, optimizer and latent stream."""

    def __init__(self, ws: Workspace, mode: str, args: argparse.Namespace, meta: dict[str, Any]) -> None:
        unet_config = get_preset(args.preset).unet.unet_config(4, args.text_dim, args.resolution // 8)
        classes = tuple(f"class{i}" for i in range(args.classes)) if mode == "class" else None
        unet_config = conditioned_unet(unet_config, "multi-caption" if mode == "multi-caption" else "text", None,
                                       classes, meta)
        self.loss = DiffusionLoss(Denoiser(build_unet(unet_config, 0), NoiseSchedule()), 5.0)
        self.optimizer = torch.optim.AdamW(self.loss.parameters(), lr=1e-4)
        slots = len(meta["captioners"]) if mode == "multi-caption" else 0
        keys = [f"synthetic:{i:08d}" for i in range(args.records)]
        class_of = {k: i % args.classes for i, k in enumerate(keys)} if classes else None
        self.stream = LatentStream.open(ws, "lat", args.resolution, args.batch, 0, 0, 1, torch.device("cpu"),
                                        slots=slots, class_of=class_of,
                                        null_class=args.classes if classes else None)
        self.images = 0

    def step(self) -> float:
        start = time.perf_counter()
        gen = step_generator(torch.device("cpu"), 0, 0, self.images)
        inputs = training_inputs(self.stream.next_batch(), self.stream, gen, torch.device("cpu"),
                                 num_timesteps=1000, caption_dropout=0.1, offset_noise=0.0, use_text_mask=False,
                                 slot_dropout=0.1)
        loss = self.loss(inputs["x0"], inputs["noise"], inputs["timesteps"], inputs["cond"]).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.images += int(inputs["x0"].shape[0])
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per mode (after 3 warm-up steps)")
    parser.add_argument("--captioners", type=int, default=2, help="caption slots of the multi-caption mode")
    parser.add_argument("--text-len", type=int, default=77)
    parser.add_argument("--text-dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--records", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        captioners = tuple(f"captioner{i}" for i in range(args.captioners))
        write_random_latents(ws, "lat", args.records, resolution=args.resolution, text_len=args.text_len,
                             text_dim=args.text_dim, captioners=captioners, shard_size=128)
        meta = {"captioners": list(captioners), "text_dim": args.text_dim}
        steps = {mode: ModeStep(ws, mode, args, meta) for mode in MODES}
        times: dict[str, list[float]] = {mode: [] for mode in MODES}
        for i in range(args.steps + 3):
            for mode in MODES:
                seconds = steps[mode].step()
                if i >= 3:
                    times[mode].append(seconds)
    median = {mode: statistics.median(t) for mode, t in times.items()}
    result = {"settings": vars(args), "threads": torch.get_num_threads(),
              "median_step_s": {m: round(v, 4) for m, v in median.items()},
              "ratio_to_text": {m: round(v / median["text"], 3) for m, v in median.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
