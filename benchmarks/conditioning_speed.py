"""Training step time by conditioning mode (issue 14), same UNet preset, side by side.

Modes: one caption of one encoder (the baseline), multi-caption, class labels, two text encoders, and
two encoders plus the CLIP image embedding. Each step is what `UNetTask.gradients` does per
micro-batch plus the optimizer step: a latent batch from the store (`LatentStream`, which gathers
one caption slot or all K, the second encoder's arrays, the image embedding), `training_inputs`
(posterior sample, every dropout, timesteps, noise), the loss forward and backward through
`DiffusionLoss`, and AdamW. The UNet config of each mode is built by `conditioned_unet`, as
`resolve_config` builds it. The modes take turns step by step (ABCDE ABCDE ...), so load on a shared
machine hits them alike; the median step time of each is reported with its ratio to one caption.

    python benchmarks/conditioning_speed.py --preset tiny --resolution 128 --batch 8 --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from opencanvas.diffusion.denoiser import Denoiser, NoiseSchedule
from opencanvas.encode import open_latents
from opencanvas.encode.synthetic import write_random_latents
from opencanvas.train.config import conditioned_unet
from opencanvas.train.data import LatentStream, step_generator, training_inputs
from opencanvas.train.loop import DiffusionLoss
from opencanvas.train.presets import build_unet, get_preset
from opencanvas.workspace import Workspace

# mode -> (latent set, conditioning, class labels?): "one" has one encoder and K captioners, "both" two
# encoders and image embeddings (as `encode --text-encoder A --text-encoder B --image-embeddings CLIP`).
MODES = {
    "text": ("one", "text", False),
    "multi-caption": ("one", "multi-caption", False),
    "class": ("one", "text", True),
    "two-encoders": ("both", "text", False),
    "two-encoders+image": ("both", "text+image", False),
}


class ModeStep:
    """One mode's UNet, optimizer and latent stream."""

    def __init__(self, ws: Workspace, mode: str, args: argparse.Namespace) -> None:
        latents, conditioning, with_classes = MODES[mode]
        meta = open_latents(ws, latents).meta
        unet_config = get_preset(args.preset).unet.unet_config(4, args.text_dim, args.resolution // 8)
        classes = tuple(f"class{i}" for i in range(args.classes)) if with_classes else None
        unet_config = conditioned_unet(unet_config, conditioning, None, classes, meta, args.image_tokens)
        self.loss = DiffusionLoss(Denoiser(build_unet(unet_config, 0), NoiseSchedule()), 5.0)
        self.optimizer = torch.optim.AdamW(self.loss.parameters(), lr=1e-4)
        keys = [f"synthetic:{i:08d}" for i in range(args.records)]
        class_of = {k: i % args.classes for i, k in enumerate(keys)} if classes else None
        self.stream = LatentStream.open(ws, latents, args.resolution, args.batch, 0, 0, 1, torch.device("cpu"),
                                        slots=len(meta["captioners"]) if conditioning == "multi-caption" else 0,
                                        class_of=class_of, null_class=args.classes if classes else None,
                                        image=conditioning == "text+image")
        self.images = 0

    def step(self) -> float:
        start = time.perf_counter()
        gen = step_generator(torch.device("cpu"), 0, 0, self.images)
        inputs = training_inputs(self.stream.next_batch(), self.stream, gen, torch.device("cpu"),
                                 num_timesteps=1000, caption_dropout=0.1, offset_noise=0.0, use_text_mask=False,
                                 slot_dropout=0.1, encoder_dropout=0.1, image_dropout=0.1)
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
    parser.add_argument("--text-dim", type=int, default=64, help="the first encoder's width")
    parser.add_argument("--text2-dim", type=int, default=96, help="the second encoder's width (SDXL: 768 + 1280)")
    parser.add_argument("--image-dim", type=int, default=64)
    parser.add_argument("--image-tokens", type=int, default=4)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or "text" not in modes:
        parser.error(f"--modes must include text and name only {', '.join(MODES)} (got {args.modes!r})")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        common = dict(resolution=args.resolution, text_len=args.text_len, text_dim=args.text_dim, shard_size=128)
        write_random_latents(ws, "one", args.records, **common,
                             captioners=tuple(f"captioner{i}" for i in range(args.captioners)))
        write_random_latents(ws, "both", args.records, **common, text2_len=args.text_len, text2_dim=args.text2_dim,
                             image_dim=args.image_dim)
        steps = {mode: ModeStep(ws, mode, args) for mode in modes}
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        for i in range(args.steps + 3):
            for mode in modes:
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
