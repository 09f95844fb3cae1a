"""Training step time with two text encoders and with text+image vs one caption of one encoder, side by side.

The same step as benchmarks/conditioning_speed.py (what `UNetTask.gradients` does per micro-batch plus
AdamW): a latent batch from the store, `training_inputs` (posterior sample, each encoder's and the
image's own dropout, timesteps, noise), the loss forward and backward, and the optimizer step. The
baseline reads a latent set with one encoder; the others read a set that also has a second encoder
(its hidden states, both pooled embeddings) and CLIP image embeddings, as `encode --text-encoder A
--text-encoder B --image-embeddings CLIP` writes it. The modes take turns step by step (ABCABC...),
so load on a shared machine hits them alike; the median step time is reported with its ratio to text.

    python benchmarks/encoders_speed.py --preset tiny --resolution 128 --batch 8 --steps 30
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
from opencanvas.train.data import LatentStream, step_generator, training_inputs
from opencanvas.train.encoders import encoder_unet
from opencanvas.train.loop import DiffusionLoss
from opencanvas.train.presets import build_unet, get_preset
from opencanvas.workspace import Workspace

MODES = {"text": ("one", "text"), "two-encoders": ("both", "text"), "two-encoders+image": ("both", "text+image")}


class ModeStep:
    """One mode's UNet, optimizer and latent stream."""

    def __init__(self, ws: Workspace, latents: str, conditioning: str, args: argparse.Namespace) -> None:
        data = open_latents(ws, latents).meta
        unet_config = get_preset(args.preset).unet.unet_config(4, args.text_dim, args.resolution // 8)
        unet_config = encoder_unet(unet_config, data, conditioning, args.image_tokens)
        self.loss = DiffusionLoss(Denoiser(build_unet(unet_config, 0), NoiseSchedule()), 5.0)
        self.optimizer = torch.optim.AdamW(self.loss.parameters(), lr=1e-4)
        self.stream = LatentStream.open(ws, latents, args.resolution, args.batch, 0, 0, 1, torch.device("cpu"),
                                        image=conditioning == "text+image")
        self.images = 0

    def step(self) -> float:
        start = time.perf_counter()
        gen = step_generator(torch.device("cpu"), 0, 0, self.images)
        inputs = training_inputs(self.stream.next_batch(), self.stream, gen, torch.device("cpu"),
                                 num_timesteps=1000, caption_dropout=0.1, offset_noise=0.0, use_text_mask=False,
                                 encoder_dropout=0.1, image_dropout=0.1)
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
    parser.add_argument("--text-len", type=int, default=77)
    parser.add_argument("--text-dim", type=int, default=64, help="the first encoder's width")
    parser.add_argument("--text2-dim", type=int, default=96, help="the second encoder's width (SDXL: 768 + 1280)")
    parser.add_argument("--image-dim", type=int, default=64)
    parser.add_argument("--image-tokens", type=int, default=4)
    parser.add_argument("--records", type=int, default=256)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace.open(Path(tmp) / "ws")
        common = dict(resolution=args.resolution, text_len=args.text_len, text_dim=args.text_dim, shard_size=128)
        write_random_latents(ws, "one", args.records, **common)
        write_random_latents(ws, "both", args.records, **common, text2_len=args.text_len, text2_dim=args.text2_dim,
                             image_dim=args.image_dim)
        steps = {mode: ModeStep(ws, latents, conditioning, args) for mode, (latents, conditioning) in MODES.items()}
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
